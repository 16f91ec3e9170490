"""From labels to the next served version and back (training/retrain.py, scripts/versions.sh, the
Review and Model card pages), against the session TorchServe: 40 synthetic galaxies queued, labelled
with clicks on the Review page and by a colleague on the same store, fine-tuned for one epoch,
registered as 1.1 beside 1.0, compared on the held-out labels, promoted on the Model card page,
rolled back; a second run skips every stage."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image
from streamlit.testing.v1 import AppTest

from labelling.queue import main as queue_main
from labelling.store import LabelStore
from simulation.synthetic import render_galaxy
from tests.conftest import REPO
from tests.test_dashboard import point_at
from tests.test_review import review_page
from torchserve_ops.versions import Management, VersionError, version_key
from training import retrain

APP = str(REPO / "dashboard" / "app.py")


def test_versions_split_and_label_filters(tmp_path, capsys):
    assert [retrain.next_version(v) for v in ("1.0", "1.9", "2", "1.0-rc")] == ["1.1", "1.10", "2.1", "1.0-rc.1"]
    parts = [retrain.part_of("survey", f"J{i:04d}", 0) for i in range(2000)]
    assert parts == [retrain.part_of("survey", f"J{i:04d}", 0) for i in range(2000)]  # stable
    assert abs(parts.count("test") / 2000 - retrain.HELD_OUT) < 0.04
    assert abs(parts.count("val") / 2000 - retrain.VAL) < 0.04
    store = LabelStore(tmp_path / "labels.db")
    ids = [store.add_candidate("s", f"k{i}", image=b"x") for i in range(4)]
    store.add_label(ids[0], "a", 3)
    store.add_label(ids[0], "b", 4)  # the newest label wins
    store.add_label(ids[1], "a", 2, unsure=True)
    store.add_label(ids[2], "a", not_a_galaxy=True)
    assert [(lab["candidate_id"], lab["class_index"]) for lab in retrain.usable_labels(store, False)] == [(ids[0], 4)]
    assert len(retrain.usable_labels(store, True)) == 2
    assert sorted(["1.10", "1.0-rc", "1.9", "1.0"], key=version_key) == ["1.0", "1.0-rc", "1.9", "1.10"]
    # too few labels, bad options, a version another run archived: a message and exit 2, nothing written
    out = tmp_path / "out"
    assert retrain.main(["--labels", str(tmp_path / "labels.db"), "--from", str(REPO / "checkpoints" / "demo"),
                         "--out", str(out), "--no-register"]) == 2
    demo = ["--labels", str(tmp_path / "labels.db"), "--from", str(REPO / "checkpoints" / "demo"), "--out", str(out)]
    assert retrain.main([*demo, "--epochs", "0"]) == 2
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "galaxy-b0-v1.1.mar").write_bytes(b"another run's")
    assert retrain.main([*demo, "--store", str(tmp_path / "store")]) == 2
    assert "built by another run" in capsys.readouterr().err
    assert not out.exists()


def galaxies(folder, n=40, seed=2024):
    """n synthetic galaxies, n/10 of each class, named by their class."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(render_galaxy(i % 10, rng)).save(buf, "JPEG", quality=92)
        (folder / f"g{i:02d}_c{i % 10}.jpg").write_bytes(buf.getvalue())


def served_version_and_class(ts, model, data):
    r = requests.post(f"{ts.inference_url}/predictions/{model}", data=data, timeout=120,
                      headers={**ts.auth("inference"), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r.json()["version"], r.json()["label"]


def workflow_b0_version(ts, data):
    r = requests.post(f"{ts.inference_url}/wfpredict/galaxy-ensemble", data=data, timeout=120,
                      headers={**ts.auth("inference"), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r.json()["b0"]["version"]


@pytest.mark.server
def test_labels_become_version_1_1_promoted_on_the_page_and_rolled_back(torchserve, monkeypatch, tmp_path, capsys):
    ts = torchserve
    point_at(monkeypatch, ts)
    galaxies(tmp_path / "in")
    db = tmp_path / "labels.db"
    assert queue_main(["add", "--store", str(db), "--input", str(tmp_path / "in"), "--run", str(ts.run_dir),
                       "--source", "e2e"]) == 0

    # Carol labels 17 with the Review page's buttons, the class read from the image's caption; Dave,
    # a colleague on the same store, labels the other 23 meanwhile (through the store, as his page would).
    at = review_page(monkeypatch, db)
    at.toggle(key="review_cam").set_value(False)
    at.text_input(key="labeller").set_value("carol").run()
    store = LabelStore(db)
    for i in range(17):
        caption = at.image[0].captions[0]  # "g07_c7.jpg (e2e)"
        if i == 16:  # Dave has labelled all but the galaxy Carol is looking at
            for cid in store.unlabelled("e2e"):
                key = store.candidate(cid)["item_key"]
                if key != caption.rsplit(" (", 1)[0]:
                    store.add_label(cid, "dave", int(key.split("_c")[1][0]))
        at.button(key=f"label_{caption.split('_c')[1][0]}").click().run()
    assert not at.exception and any("Nothing left to label" in s.value for s in at.success)
    labels = store.latest_labels()
    assert len(labels) == 40 and {lab["labeller"] for lab in labels.values()} == {"carol", "dave"}
    assert all(lab["class_index"] == int(store.candidate(cid)["item_key"].split("_c")[1][0])
               for cid, lab in labels.items())

    mgmt = Management(ts.management_url, ts.key_file)
    out = tmp_path / "retrain"
    argv = ["--labels", str(db), "--from", str(ts.run_dir), "--models", "b0", "--epochs", "1", "--out", str(out),
            "--store", str(ts.model_store), "--key-file", str(ts.key_file), "--management-url", ts.management_url]
    probe = (tmp_path / "in" / "g00_c0.jpg").read_bytes()
    try:
        r = subprocess.run([sys.executable, "-m", "training.retrain", *argv], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "[5/5] register: galaxy-b0 1.1 registered (default stays 1.0)" in r.stdout, r.stdout
        assert {v["version"]: v["default"] for v in mgmt.versions("galaxy-b0")} == {"1.0": True, "1.1": False}
        assert served_version_and_class(ts, "galaxy-b0", probe)[0] == "1.0"

        # The comparison is what the served versions answer on the held-out galaxies.
        report = json.loads((out / "retrain.json").read_text())["models"]["b0"]
        held = [c for c in (store.candidate(i) for i in sorted(labels))
                if retrain.part_of(c["source"], c["item_key"], 0) == "test"]
        assert report["this"]["n"] == report["previous"]["n"] == len(held) > 0
        for version, row in (("1.0", report["previous"]), ("1.1", report["this"])):
            answers = [served_version_and_class(ts, f"galaxy-b0/{version}", c["image"]) for c in held]
            assert {v for v, _ in answers} == {version}
            right = [k == labels[c["id"]]["class_index"] for (_, k), c in zip(answers, held)]
            assert row["accuracy"] == pytest.approx(np.mean(right))
        assert (out / "b0" / "ood.npz").is_file() == (ts.run_dir / "b0" / "ood.npz").is_file()

        # Every model is checked before any default changes.
        with pytest.raises(VersionError, match="galaxy-b2"):
            mgmt.promote("1.1", ts.model_store, names=["galaxy-b0", "galaxy-b2"])
        with pytest.raises(VersionError, match="version 9.9"):
            mgmt.rollback_all(ts.model_store, to="9.9")
        assert mgmt.client.default_version("galaxy-b0") == "1.0"

        # The Model card page shows both versions and promotes 1.1 when asked twice.
        at = AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/model_card.py").run()
        at.selectbox(key="card_model").set_value("galaxy-b0").run()
        at.selectbox(key="card_version").set_value("1.1").run()
        assert not at.exception
        subheaders = [s.value for s in at.subheader]
        assert "Before and after retraining, on the same held-out labels" in subheaders
        assert "Versions side by side" in subheaders
        table = next(d.value for d in at.dataframe if "metric" in d.value.columns).set_index("metric")
        assert table.loc["accuracy"].tolist() == pytest.approx([report["previous"]["accuracy"],
                                                                 report["this"]["accuracy"]])
        at.button(key="promote_ask").click().run()
        assert mgmt.client.default_version("galaxy-b0") == "1.0"  # not before the confirmation
        at.button(key="promote_yes").click().run()
        assert not at.exception and any("default is now 1.1" in s.value for s in at.success)
        assert mgmt.client.default_version("galaxy-b0") == "1.1"
        assert served_version_and_class(ts, "galaxy-b0", probe)[0] == "1.1"
        assert workflow_b0_version(ts, probe) == "1.1"  # the ensemble rebuilt over the new default

        r = subprocess.run(["scripts/versions.sh", "--key-file", str(ts.key_file), "--management-url",
                            ts.management_url, "rollback", "--all", "--store", str(ts.model_store)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "galaxy-b0: default is now 1.0" in r.stdout, r.stderr
        assert served_version_and_class(ts, "galaxy-b0", probe)[0] == "1.0"
        assert workflow_b0_version(ts, probe) == "1.0"

        # The same labels again: every stage skipped, nothing registered twice.
        capsys.readouterr()
        assert retrain.main(argv) == 0
        stages = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
        assert len(stages) == 5 and all("skipped" in s or "registered already" in s for s in stages), stages
        other = tmp_path / "other"  # the same labels from other checkpoints: refused, not skipped
        shutil.copytree(ts.run_dir / "b0", other / "b0")
        assert retrain.main([*argv[:2], "--from", str(other), *argv[4:]]) == 2
        assert "was fine-tuned with" in capsys.readouterr().err
    finally:
        if mgmt.client.default_version("galaxy-b0") != "1.0":
            mgmt.set_default("galaxy-b0", "1.0")
            mgmt.refresh_workflow(ts.model_store)
        if "1.1" in {v["version"] for v in mgmt.versions("galaxy-b0")}:
            mgmt.unregister("galaxy-b0", "1.1")
    assert [v["version"] for v in mgmt.versions("galaxy-b0")] == ["1.0"]


def test_export_mixes_original_rows_into_train_only(tmp_path):
    from galaxy_morph.data import create_h5, load_split

    rng = np.random.default_rng(1)
    original = tmp_path / "original.h5"
    with create_h5(original, np.arange(12) % 10, 64, images=rng.integers(0, 255, (12, 64, 64, 3), np.uint8)):
        pass
    store = LabelStore(tmp_path / "labels.db")
    for i in range(30):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (100, 100, 3), np.uint8)).save(buf, "PNG")
        store.add_label(store.add_candidate("s", f"k{i}", image=buf.getvalue()), "a", i % 10)
    labels = retrain.usable_labels(store, False)
    args = retrain.parse_args(["--labels", "x", "--from", "x", "--mix", str(original), "--mix-rows", "5"])
    stamp = retrain.export(store, labels, tmp_path / "out", args, "digest")
    split, _ = load_split(tmp_path / "out" / "split.json")
    assert stamp["n_labels"] == 30 and stamp["mix_rows"] == 5 and stamp["size"] == 64
    assert sorted(np.concatenate(list(split.values()))) == list(range(35))
    assert set(range(30, 35)) <= set(split["train"].tolist())  # the mixed rows train, never judge
    assert max(split["test"]) < 30 and max(split["val"]) < 30
    held = sorted(i for i in range(30) if retrain.part_of("s", f"k{i}", 0) == "test")
    assert split["test"].tolist() == held
    import h5py

    with h5py.File(tmp_path / "out" / "labels.h5", "r") as f, h5py.File(original, "r") as o:
        assert f["images"].shape == (35, 64, 64, 3) and f["ans"][:30].tolist() == [i % 10 for i in range(30)]
        mixed = {bytes(f["images"][i]) for i in range(30, 35)}
        assert mixed <= {bytes(o["images"][i]) for i in range(12)}


def test_export_reads_a_team_store_on_postgresql(postgres_db, tmp_path):
    store = LabelStore(postgres_db)
    rng = np.random.default_rng(2)
    for i in range(20):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)).save(buf, "JPEG")
        cid = store.add_candidate("team", f"J{i:03d}", image=buf.getvalue())
        store.add_label(cid, "alice" if i % 2 else "bob", i % 10)
    args = retrain.parse_args(["--labels", postgres_db, "--from", "x"])
    stamp = retrain.export(store, retrain.usable_labels(store, False), tmp_path / "out", args, "d")
    assert stamp["labels"] == store.where and stamp["n_labels"] == 20 and sum(stamp["n"].values()) >= 20
    assert stamp["n"]["test"] == sum(retrain.part_of("team", f"J{i:03d}", 0) == "test" for i in range(20))
