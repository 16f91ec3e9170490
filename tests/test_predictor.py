"""galaxy_morph.Predictor, the one answer path, from Python: a table from folders, HDF5 files and
arrays, bad inputs, and the shipped demo run's measured rule and real-galaxy calibration.

    .venv/bin/python -m pytest -q tests/test_predictor.py

(The same answers through the server, Ray and the queue: tests/test_one_answer_path.py.)
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from galaxy_morph import GALAXY10_CLASSES, Predictor
from galaxy_morph.imaging import ImageError
from galaxy_morph.predictor import CheckpointError

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "samples" / "galaxy10_decals").glob("class_*.jpg"))
DEMO = REPO / "checkpoints" / "demo"
COLUMNS = ["id", "label", "class_name", "confidence", "error", *GALAXY10_CLASSES, "model", "version",
           "in_distribution", "ood_score"]


@pytest.fixture(scope="module")
def demo() -> Predictor:
    return Predictor.from_run(DEMO, device="cpu")


def test_predict_a_folder_an_hdf5_file_and_arrays_alike(demo, tmp_path):
    """The same images as files, as HDF5 rows and as an array give the same rows (a JPEG's pixels
    written as rows: what the server does with a PNG of them); an unreadable file keeps its row."""
    folder = tmp_path / "cutouts"
    (folder / "deep").mkdir(parents=True)
    picked = SAMPLES[::20]
    for i, p in enumerate(picked):
        shutil.copy(p, (folder / "deep" if i % 2 else folder) / p.name)
    (folder / "broken.jpg").write_bytes(picked[0].read_bytes()[:200])
    table = demo.predict(folder, progress=False)
    assert list(table.columns) == COLUMNS + ["source", "rule"] and len(table) == len(picked) + 1
    assert table.loc[table.id == "broken.jpg", "error"].str.contains("image").all()
    good = table[table.error == ""].set_index("id")
    assert {p.name if i % 2 == 0 else f"deep/{p.name}" for i, p in enumerate(picked)} == set(good.index)
    want = {p.name: demo.answer(p.read_bytes()) for p in picked}
    for key, row in good.iterrows():
        a = want[Path(key).name]
        assert row["label"] == a["label"] and row["rule"] == demo.rule == a["rule"]
        assert np.allclose(row[list(GALAXY10_CLASSES)].astype(float), list(a["probabilities"].values()), atol=1e-6)

    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in picked])
    with h5py.File(tmp_path / "cutouts.h5", "w") as f:
        f["images"], f["ans"] = pixels, np.zeros(len(pixels), np.uint8)
    from_h5 = demo.predict(tmp_path / "cutouts.h5", batch_size=2, progress=False)
    from_array = demo.predict(pixels, progress=False)
    assert list(from_h5.id) == [str(i) for i in range(len(picked))]
    for t in (from_h5, from_array):
        assert np.allclose(t[list(GALAXY10_CLASSES)].astype(float),
                           [list(want[p.name]["probabilities"].values()) for p in picked], atol=1e-5)
    assert list(from_h5.label) == list(from_array.label)


def test_embeddings_and_single_models(demo, tmp_path):
    table = demo.predict(SAMPLES[:3], embeddings=True, progress=False)
    assert [len(e) for e in table.embedding_b0] == [1280] * 3 and [len(e) for e in table.embedding_b2] == [1408] * 3
    b2 = Predictor.from_run(DEMO, "galaxy-b2", device="cpu")
    t2 = b2.predict(SAMPLES[:3], progress=False)
    assert list(t2.columns) == COLUMNS and set(t2.model) == {"galaxy-b2"}
    assert list(t2.Disturbed) == pytest.approx([demo.answer(p)["b2"]["probabilities"]["Disturbed"] for p in SAMPLES[:3]],
                                               abs=1e-6)
    e = demo.explain(SAMPLES[0], target="Merging")
    assert set(e) == {"b0", "b2"} and e["b0"]["target"] == 1 and e["b2"]["target_name"] == "Merging"
    assert e["b0"]["predicted"] == demo.answer(SAMPLES[0])["b0"]["label"]


def test_bad_inputs_are_clear_errors(demo, tmp_path):
    answers = demo.answer_batch([b"not an image", SAMPLES[0].read_bytes(), np.zeros((4, 4, 7), np.uint8)])
    assert isinstance(answers[0], ImageError) and isinstance(answers[2], ImageError)
    assert answers[1]["class_name"] in GALAXY10_CLASSES
    with pytest.raises(ImageError):
        demo.answer(b"")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        demo.predict(tmp_path / "nothing-here", progress=False)
    with pytest.raises(FileNotFoundError, match="no JPEG, PNG or FITS images"):
        demo.predict(tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="unknown model 'b7'"):
        Predictor.from_run(DEMO, "b7")
    with pytest.raises(ValueError, match="unknown ensemble rule 'median'"):
        Predictor.from_run(DEMO, rule="median")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Predictor.from_run(tmp_path)


def test_the_demo_ensembles_default_rule_is_measured_not_seed(tmp_path):
    """checkpoints/demo/ensemble.json: the lowest-NLL rule, not seed; at least as accurate as the best
    member on the synthetic test split; the workflow archive carries it and the Predictor uses it."""
    import zipfile

    from galaxy_morph.ensemble import choose_rule
    from galaxy_morph.predictor import read_settings
    from torchserve_ops.archive import build_workflow_archive

    settings = read_settings(DEMO)
    rule = settings["default_rule"]
    assert rule != "seed" and rule == choose_rule(settings["chosen_by"]) and settings["rule_models"] == ["b0", "b2"]
    acc = json.loads((DEMO / "report.json").read_text())["accuracy"]
    assert acc[f"ensemble_{rule}"] >= max(acc["b0"], acc["b2"]) > acc["ensemble_seed"] - 1e-9
    assert Predictor.from_run(DEMO, device="cpu").rule == rule
    war = build_workflow_archive(tmp_path, {"b0": "galaxy-b0.mar", "b2": "galaxy-b2.mar"}, rule=settings)
    with zipfile.ZipFile(war) as z:
        packed = json.loads(z.read("ensemble.json"))
    assert packed["default_rule"] == rule and packed["rule_models"] == ["b0", "b2"]


def test_the_demo_answers_real_galaxies_with_real_calibration(demo):
    """The shipped temperatures were fitted on the 100 real samples (training.calibrate_real): served
    that way, the mean confidence is within 0.05 of the accuracy for B0, B2 and the ensemble, and the
    ECE and NLL are below what the synthetic-fitted temperatures gave."""
    from galaxy_morph.calibration import nll, reliability
    from galaxy_morph.ensemble import ensemble_calibration

    answers = demo.answer_batch([p.read_bytes() for p in SAMPLES])
    y = np.array([int(p.name.split("_")[1]) for p in SAMPLES])
    assert answers[0]["calibration"]["on"] == "real" and answers[0]["b0"]["calibration"]["on"] == "real"
    before = {m: demo.members[m].ckpt_dir for m in demo.members}
    for name, rows in (("ensemble", answers), ("b0", [a["b0"] for a in answers]), ("b2", [a["b2"] for a in answers])):
        p = np.array([list(a["probabilities"].values()) for a in rows])
        accuracy, confidence = float(np.mean(p.argmax(1) == y)), float(p.max(1).mean())
        assert abs(confidence - accuracy) <= 0.05, (name, confidence, accuracy)
        was = (ensemble_calibration(demo.settings, demo.rule, False)["before"] if name == "ensemble" else
               json.loads((before[name] / "calibration.json").read_text())["served"]["plain"]["before"])
        assert reliability(p, y, 10)["ece"] < was["ece"] and nll(p, y) < was["nll"], name
