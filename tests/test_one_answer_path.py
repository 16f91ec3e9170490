"""The one answer path, against the real TorchServe: the same images through /predictions,
/wfpredict, galaxy_morph.Predictor, make predict (Ray) and the answers make queue stores, for the
session's two-member run with TTA off and a three-member run (B0, B2, ConvNeXt) with TTA on, with
the rules a three-model workflow offers and refuses.

    .venv/bin/python -m pytest -q tests/test_one_answer_path.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from galaxy_morph import GALAXY10_CLASSES, Predictor
from galaxy_morph.models import build_model, save_checkpoint
from tests.test_predict_ray import SAMPLES, read_csv, run_cli

pytestmark = pytest.mark.server


def assert_same_answers(got: list[dict], want: list[dict], what: str) -> None:
    """Labels identical, probabilities within 1e-4, the same in_distribution (and members, for the workflow)."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["label"] == w["label"], f"{what}: image {i}"
        assert list(g["probabilities"]) == list(w["probabilities"]), what
        assert np.allclose(list(g["probabilities"].values()), list(w["probabilities"].values()), atol=1e-4), \
            f"{what}: image {i}"
        assert g["in_distribution"] == w["in_distribution"], f"{what}: image {i}"
        for k in ("model", "version", "calibrated", "source", "rule"):
            assert g.get(k) == w.get(k), f"{what}: image {i} {k}: {g.get(k)} != {w.get(k)}"
        for m in ("b0", "b2"):
            if m in w:
                assert_same_answers([g[m]], [w[m]], f"{what} member {m}")


def test_one_answer_path_everywhere(torchserve, served_archives, local_ray, tmp_path):
    """The 100 real samples through /predictions, /wfpredict, Predictor.answer, make predict (Ray) and
    the answers make queue stores: the same labels, probabilities within 1e-4, the same
    in_distribution; /explanations' "predicted" is /predictions' label for the same image."""
    from concurrent.futures import ThreadPoolExecutor

    from galaxy_morph import Predictor
    from labelling import queue
    from labelling.store import LabelStore

    run, _ = served_archives
    images = [p.read_bytes() for p in SAMPLES]
    client = torchserve.client()
    with ThreadPoolExecutor(8) as pool:
        served = {m: list(pool.map(lambda b, m=m: client.predict(f"galaxy-{m}", b), images)) for m in ("b0", "b2")}
        served["ensemble"] = list(pool.map(lambda b: client.predict_workflow("galaxy-ensemble", b), images))
        seed = list(pool.map(lambda b: client.predict_workflow("galaxy-ensemble", b, rule="seed"), images[::5]))
        explained = list(pool.map(lambda b: client.explain("galaxy-b0", b), images[::25]))
    assert len({a["label"] for a in served["ensemble"]}) >= 3, "the test checkpoints should tell galaxies apart"

    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.rule == served["ensemble"][0]["rule"] == "mean"
    assert_same_answers([predictor.answer(b) for b in images[:3]], served["ensemble"][:3], "Predictor.answer")
    ours = predictor.answer_batch(images)
    assert_same_answers(ours, served["ensemble"], "/wfpredict")
    for m in ("b0", "b2"):  # the members answer as the standalone models do (under the workflow's node names)
        assert_same_answers([{**a[m], "model": f"galaxy-{m}"} for a in ours], served[m], f"/predictions {m}")
        assert Predictor.from_run(run, m, device="cpu").answer(images[0])["probabilities"] == \
            pytest.approx(served[m][0]["probabilities"], abs=1e-4)
    seed_predictor = Predictor.from_run(run, rule="seed", device="cpu")
    assert_same_answers([seed_predictor.combine({m: a[m] for m in ("b0", "b2")}) for a in ours[::5]], seed,
                        "/wfpredict seed")
    assert all(a["label"] == a["b0"]["label"] for a in seed)  # the seed system: B0 answers
    for e, a in zip(explained, served["b0"][::25]):
        assert e["predicted"] == a["label"]

    # make predict: Ray's model actors over a folder with a subfolder and a broken file, written to a
    # catalogue (6 significant digits)
    folder = tmp_path / "cutouts"
    (folder / "deep").mkdir(parents=True)
    for i, p in enumerate(SAMPLES):
        shutil.copy(p, (folder / "deep" if i % 4 == 0 else folder) / p.name)
    (folder / "broken.jpg").write_bytes(images[0][:300])  # truncated JPEG
    out = tmp_path / "catalog.csv"
    assert run_cli("--input", folder, "--out", out, "--run", run, "--shard-size", 32) == 0
    rows = {Path(r["id"]).name: r for r in read_csv(out)}
    assert len(rows) == len(SAMPLES) + 1 and "deep/" + SAMPLES[0].name in {r["id"] for r in rows.values()}
    assert "image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["label"] == ""
    for p, a in zip(SAMPLES, served["ensemble"]):
        r = rows[p.name]
        assert int(r["label"]) == a["label"] and r["rule"] == a["rule"] and r["source"] == a["source"]
        assert np.allclose([float(r[c]) for c in GALAXY10_CLASSES], list(a["probabilities"].values()), atol=1e-4)
        assert r["in_distribution"] == str(a["in_distribution"]).lower()
        assert r["model"] == "galaxy-ensemble" and r["version"] == "b0 1.0 + b2 1.0"

    # make queue: the answers it stores for B0 and B2
    store_file = tmp_path / "labels.db"
    assert queue.main(["add", "--store", str(store_file), "--input", str(SAMPLES[0].parent), "--run", str(run),
                       "--source", "samples"]) == 0
    with LabelStore(store_file) as store:
        keys = {c["id"]: c["item_key"] for c in map(store.candidate, store.unlabelled("samples"))}
        stored = {(keys[a["candidate_id"]], a["model"]): a for a in store.answers()}
    assert len(keys) == len(SAMPLES)
    for m in ("b0", "b2"):
        for p, a in zip(SAMPLES, served[m]):
            s = stored[(p.name, f"galaxy-{m}")]
            assert np.allclose(s["probabilities"], list(a["probabilities"].values()), atol=1e-4)
            assert int(np.argmax(s["probabilities"])) == a["label"]


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
    # runtime torch: the session's own archives answer on onnx, so both runtimes are served here
    urls = {m: build_model_archive(run, m, store, "7.0", versioned_name=True, tta=True, runtime="torch").name
            for m in MEMBERS}
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


def test_three_members_with_tta_answer_as_served(torchserve, tta_trio):

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


def post_trio(ts, image: bytes, rule: str | None = None) -> requests.Response:
    headers = {**ts.auth("inference"), "Content-Type": "image/jpeg"}
    if rule:
        headers["X-Ensemble-Rule"] = rule
    return requests.post(f"{ts.inference_url}/wfpredict/{TRIO}", data=image, headers=headers, timeout=120)


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
