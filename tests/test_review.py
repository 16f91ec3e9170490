"""The review queue (labelling/queue.py) over real sample images classified with the demo models, and
the Review page through AppTest: a click per class, skip, undo and "not a galaxy" land in the store,
and both served models' Grad-CAM beside the galaxy (a caption when the server does not answer)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard import review_views as rv
from labelling import acquisition
from labelling.queue import MC_MODEL, answers_by_candidate, main, ranked
from labelling.store import LabelStore
from tests.conftest import REPO, SAMPLES
from tests.test_dashboard import point_at, point_at_closed
from torchserve_ops.client import ServerError, ServerUnavailable

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


def copy_store(queued, tmp_path):
    for f in queued.parent.glob(queued.name + "*"):  # with its write-ahead log
        shutil.copy2(f, tmp_path / f.name)
    return tmp_path / queued.name


def test_review_page_labels_skips_undoes_and_flags(queued, monkeypatch, tmp_path, unused_port):
    point_at_closed(monkeypatch, unused_port)  # labelling works without the server
    store_file = copy_store(queued, tmp_path)
    store = LabelStore(store_file)
    at = review_page(monkeypatch, store_file)
    assert not at.exception
    assert [m.value for m in at.metric] == ["0", "8"]
    at.text_input(key="labeller").set_value("alice").run()
    first = ranked(store, "entropy")[0][0]
    assert any(f"galaxy {first} ·" in c.value for c in at.caption)
    assert [c.value for c in at.caption if "Grad-CAM" in c.value] == [
        f"No Grad-CAM from {m}: TorchServe is not reachable" for m in ("galaxy-b0", "galaxy-b2")]
    assert not at.error and len(at.image) == 1  # the galaxy, no heatmap
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


def test_gradcam_panels_explain_the_stored_answers_or_say_why_not():
    image = Image.new("RGB", (256, 256), "gray")
    answers = [{"model": "galaxy-b0", "class": "Disturbed"}, {"model": "galaxy-b2", "class": "Merging"}]
    calls = []

    def explain(model, data, target):
        calls.append((model, target))
        if model == "galaxy-b0":
            raise ServerError(404, "Model not found", "ModelNotFoundException")
        return {"heatmap": [[0.0, 1.0], [0.5, 0.2]], "target_name": "Merging"}

    b0, b2 = rv.gradcam_panels(explain, image, b"jpeg", answers)
    assert calls == [("galaxy-b0", 0), ("galaxy-b2", 1)]
    assert b0 == {"model": "galaxy-b0", "image": None, "caption": "No Grad-CAM from galaxy-b0: not served"}
    assert b2["caption"] == "Grad-CAM galaxy-b2 for Merging" and b2["image"].size == image.size
    assert b2["image"].getpixel((5, 5)) == image.getpixel((5, 5))  # outside B2's centre crop
    assert b2["image"].getpixel((128, 128)) != image.getpixel((128, 128))

    def down(model, data, target):
        calls.append((model, target))
        raise ServerUnavailable("connection refused")

    calls.clear()
    panels = rv.gradcam_panels(down, image, b"jpeg", [])
    assert calls == [("galaxy-b0", None)]  # no answer stored: the model's own class; asked once
    assert [p["caption"] for p in panels] == [f"No Grad-CAM from {m}: TorchServe is not reachable"
                                              for m in ("galaxy-b0", "galaxy-b2")]
    bad = rv.gradcam_panels(lambda m, d, t: {"shape": [7, 7]}, image, b"jpeg", [])
    assert all(p["image"] is None and "unexpected answer" in p["caption"] for p in bad)


@pytest.mark.server
def test_review_page_shows_both_models_gradcam(queued, monkeypatch, tmp_path, torchserve):
    point_at(monkeypatch, torchserve)
    store_file = copy_store(queued, tmp_path)
    at = review_page(monkeypatch, store_file)
    at.text_input(key="labeller").set_value("bob").run()
    assert not at.exception and not at.error
    store = LabelStore(store_file)
    answers = rv.model_answers(store, ranked(store, "entropy")[0][0])
    captions = [c for img in at.image for c in img.captions]  # the galaxy, then B0's and B2's
    assert captions[1:] == [f"Grad-CAM {a['model']} for {a['class']}" for a in answers], captions
    at.toggle(key="review_cam").set_value(False).run()
    assert not at.exception and len(at.image) == 1
