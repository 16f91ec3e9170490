"""galaxy_morph.Predictor, the one answer path: a table from Python, bad inputs, and a three-member
run (B0, B2, ConvNeXt) with TTA on against the real TorchServe answering the same archives, with
the rules a three-model workflow offers and refuses.

    .venv/bin/python -m pytest -q tests/test_predictor.py

(The two-member run with TTA off against /predictions, /wfpredict, Ray and the queue:
tests/test_predict_ray.py::test_one_answer_path_everywhere.)
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
from PIL import Image

from galaxy_morph import GALAXY10_CLASSES, Predictor
from galaxy_morph.imaging import ImageError
from galaxy_morph.models import build_model, save_checkpoint
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


# --- three members, TTA on, against the real server ------------------------------------------------

TRIO, MEMBERS = "galaxy-tta-trio", ("b0", "b2", "convnext")


@pytest.fixture(scope="module")
def tta_trio(torchserve, served_archives, tmp_path_factory):
    """The session run's B0 and B2 plus a random-init ConvNeXt, archived with --tta under version 7.0
    and served as the workflow galaxy-tta-trio on the session server (its own node workers;
    unregistered afterwards), as `make models MODELS=b0,b2,convnext` builds them. B0 and B2 carry
    TTA temperatures fitted on "real" galaxies, and the mean rule one of its own."""
    import torch

    from torchserve_ops.archive import build_model_archive, build_workflow_archive
    from torchserve_ops.server import workflow_members, workflow_model_names

    run = tmp_path_factory.mktemp("tta_trio")
    from galaxy_morph.calibration import write_calibration
    from galaxy_morph.files import atomic_write_json
    from tests.conftest import small_spec

    for m, t in (("b0", 1.7), ("b2", 0.6)):
        shutil.copytree(served_archives[0] / m, run / m)
        write_calibration(run / m, True, {"temperature": t, "on": "real", "n": 50}, served=True)
    atomic_write_json(run / "ensemble.json", {"calibration": {"mean": {"tta": {"temperature": 1.4, "on": "real", "n": 50}}}})
    torch.manual_seed(3)
    model = build_model("convnext")
    with torch.no_grad():
        model.get_classifier().bias.normal_(0, 0.5)
    # fp16 on disk, as the shipped demo checkpoints (fp32 once loaded): half the archive to pack and unpack
    save_checkpoint(run / "convnext", model.half(), small_spec("convnext"), GALAXY10_CLASSES, version="1.0",
                    data={"path": "random-init", "sha256": None, "n": 0})
    store = torchserve.model_store
    urls = {m: build_model_archive(run, m, store, "7.0", versioned_name=True, tta=True).name for m in MEMBERS}
    # Only B0 and B2 have per-class F1, so `weighted` must refuse for want of ConvNeXt's.
    war = build_workflow_archive(store, urls, f1={"b0": [0.5] * 10, "b2": [0.5] * 10},
                                 versions=dict.fromkeys(urls, "7.0"), name=TRIO,
                                 rule={**json.loads((run / "ensemble.json").read_text()), "tta": True})
    assert workflow_members(war) == list(MEMBERS)
    assert workflow_model_names(war.name, MEMBERS) == [f"{TRIO}__{n}" for n in ("pre", *MEMBERS, "ensemble")]
    client = torchserve.client()
    client.register_workflow(war.name, timeout=(3.0, 300.0))
    try:
        client.wait_until_ready(workflow_model_names(war.name, workflow_members(war)), 300.0)
        yield run
    finally:
        client.unregister_workflow(TRIO)
        client.close()


@pytest.mark.server
def test_three_members_with_tta_answer_as_served(torchserve, tta_trio):
    from tests.test_predict_ray import assert_same_answers

    images = [p.read_bytes() for p in SAMPLES[::25]]
    served = []
    for b in images:
        r = post_trio(torchserve, b)
        assert r.status_code == 200 and "error" not in r.json(), r.text
        served.append(r.json())
    predictor = Predictor.from_run(tta_trio, tta=True, device="cpu")
    assert list(predictor.members) == ["b0", "b2", "convnext"] and predictor.rule == "mean"
    got = predictor.answer_batch(images)
    for g in got:  # the archives say 7.0 and the workflow has its own name; the rest must be equal
        g["version"], g["model"] = " + ".join(f"{m} 7.0" for m in predictor.members), "galaxy-tta-trio"
        for m in predictor.members:
            g[m]["version"], g[m]["model"] = "7.0", f"galaxy-tta-trio__{m}"
    assert_same_answers(got, served, "/wfpredict galaxy-tta-trio")
    for g, s in zip(got, served):
        assert np.allclose(list(g["convnext"]["probabilities"].values()),
                           list(s["convnext"]["probabilities"].values()), atol=1e-4)
    for g, s in zip(got, served):  # the same temperatures: the members', and the mean rule's own
        assert g["calibration"] == s["calibration"] == {"on": "real", "n": 50, "temperature": 1.4, "rule": "mean"}
        assert s["b0"]["calibration"] == {"on": "real", "n": 50, "temperature": 1.7} and s["b0"]["calibrated"]
        assert s["convnext"]["calibration"] is None and s["convnext"]["calibrated"] is False
    plain = Predictor.from_run(tta_trio, device="cpu").answer_batch(images)
    assert max(abs(p["b2"]["confidence"] - g["b2"]["confidence"]) for p, g in zip(plain, got)) > 1e-4  # TTA on


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


def post_trio(ts, image: bytes, rule: str | None = None) -> requests.Response:
    headers = {**ts.auth("inference"), "Content-Type": "image/jpeg"}
    if rule:
        headers["X-Ensemble-Rule"] = rule
    return requests.post(f"{ts.inference_url}/wfpredict/{TRIO}", data=image, headers=headers, timeout=120)


@pytest.mark.server
def test_mean_over_three_models_is_the_default(torchserve, tta_trio):
    from galaxy_morph.calibration import softmax

    image = SAMPLES[2].read_bytes()
    for rule in (None, "mean"):
        r = post_trio(torchserve, image, rule)
        assert r.status_code == 200
        got = r.json()
        assert "error" not in got, got
        assert got["rule"] == "mean" and got["model"] == TRIO
        assert list(got["probabilities"]) == list(GALAXY10_CLASSES)
        assert [got[m]["model"] for m in MEMBERS] == [f"{TRIO}__{m}" for m in MEMBERS]
        mean = np.mean([list(got[m]["probabilities"].values()) for m in MEMBERS], axis=0)
        want = softmax(np.log(mean)[None], 1.4)[0]  # the mean rule's own temperature
        assert list(got["probabilities"].values()) == pytest.approx(want, abs=1e-6)
        assert got["label"] == int(np.argmax(want)) and got["confidence"] == pytest.approx(want.max(), abs=1e-6)


@pytest.mark.server
def test_seed_and_weighted_over_three_are_refused_with_a_message(torchserve, tta_trio):
    from torchserve_ops.client import ServerError

    image = SAMPLES[2].read_bytes()
    seed = post_trio(torchserve, image, "seed")
    # TorchServe 0.12 answers every finished workflow with HTTP 200 (docs/api.md): the refusal is the body.
    assert seed.status_code == 200 and seed.headers["Content-Type"].startswith("application/json")
    body = seed.json()
    assert body["code"] == 400 and "label" not in body
    assert "seed rule is defined for exactly two models" in body["error"]
    assert "got 3: b0, b2, convnext" in body["error"] and "mean or weighted" in body["error"]
    weighted = post_trio(torchserve, image, "weighted").json()
    assert weighted["code"] == 400 and "(missing: convnext)" in weighted["error"]
    client = torchserve.client()
    try:
        with pytest.raises(ServerError, match="exactly two models") as raised:
            client.predict_workflow(TRIO, image, "seed")
        assert raised.value.status == 400
    finally:
        client.close()
