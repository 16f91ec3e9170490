"""The review queue (labelling/queue.py) over real sample images classified with the demo models, and
the Review page through AppTest: a click per class, skip, undo and "not a galaxy" land in the store."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from labelling import acquisition
from labelling.queue import MC_MODEL, answers_by_candidate, main, ranked
from labelling.store import LabelStore
from tests.conftest import REPO, SAMPLES

DEMO = REPO / "checkpoints" / "demo"
APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """A store with 8 real samples queued by the CLI, with 6 MC-dropout passes each."""
    root = tmp_path_factory.mktemp("review")
    (root / "in").mkdir()
    for p in sorted(SAMPLES.glob("class_[0-7]_2.jpg")):
        shutil.copy2(p, root / "in" / p.name)
    (root / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    store = root / "labels.db"
    assert main(["add", "--store", str(store), "--input", str(root / "in"), "--run", str(DEMO),
                 "--source", "samples", "--mc-passes", "6"]) == 0
    return store


def test_queue_orders_by_scores_computed_from_the_stored_answers(queued, capsys):
    store = LabelStore(queued)
    assert store.counts()["candidates"] == 8  # broken.jpg refused with a message
    found = answers_by_candidate(store)
    ids = sorted(found)
    assert all(len(found[i][MC_MODEL]) == 6 for i in ids)
    mean = np.array([(np.array(found[i]["galaxy-b0"][-1]) + found[i]["galaxy-b2"][-1]) / 2 for i in ids])
    by_hand = [ids[k] for k in np.argsort(-acquisition.entropy(mean), kind="stable")]
    assert [cid for cid, _ in ranked(store, "entropy")] == by_hand
    bald = ranked(store, "bald")
    assert len(bald) == 8 and all(s >= 0 for _, s in bald) and any(s > 0 for _, s in bald)
    assert ranked(store, "random", seed=1) == ranked(store, "random", seed=1)
    capsys.readouterr()
    assert main(["list", "--store", str(queued), "--score", "disagreement", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.split("\t")[1].endswith(".jpg") for line in lines)
    with pytest.raises(SystemExit) as exit_:  # argparse: a usage message and status 2
        main(["list", "--store", str(queued), "--score", "nope"])
    assert exit_.value.code == 2


def test_bald_needs_passes_and_bad_inputs_are_refused(tmp_path, capsys):
    assert main(["add", "--store", str(tmp_path / "s.db"), "--input", str(tmp_path)]) == 1
    assert "no JPEG, PNG or FITS" in capsys.readouterr().err
    (tmp_path / "foreign.db").write_bytes(b"definitely not sqlite" * 10)
    assert main(["list", "--store", str(tmp_path / "foreign.db")]) == 1
    assert "not a galaxy-morph label store" in capsys.readouterr().err


def review_page(monkeypatch, store) -> AppTest:
    monkeypatch.setenv("GALAXY_LABELS", str(store))
    at = AppTest.from_file(APP, default_timeout=60).run()
    return at.switch_page("pages/review.py").run()


def test_review_page_labels_skips_undoes_and_flags(queued, monkeypatch, tmp_path):
    store_file = tmp_path / "labels.db"
    for f in queued.parent.glob(queued.name + "*"):  # with its write-ahead log
        shutil.copy2(f, tmp_path / f.name)
    store = LabelStore(store_file)
    at = review_page(monkeypatch, store_file)
    assert not at.exception
    assert [m.value for m in at.metric] == ["0", "8"]
    at.text_input(key="labeller").set_value("alice").run()
    first = ranked(store, "entropy")[0][0]
    assert any(f"galaxy {first} ·" in c.value for c in at.caption)
    at.button(key="label_5").click().run()
    assert [(l["candidate_id"], l["class_index"], l["labeller"]) for l in store.labels()] == [(first, 5, "alice")]
    second = ranked(store, "entropy")[0][0]
    at.button(key="skip").click().run()  # skipped: the one after it is shown, nothing stored
    assert len(store.labels()) == 1 and not any(f"galaxy {second} ·" in c.value for c in at.caption)
    at.button(key="not_galaxy").click().run()
    assert store.labels()[-1]["not_a_galaxy"] and len(store.labels()) == 2
    at.button(key="undo").click().run()
    assert len(store.labels()) == 1
    assert not at.exception and [m.value for m in at.metric] == ["1", "7"]
    assert at.get("line_chart") or any("Models against your labels" in s.value for s in at.subheader)
