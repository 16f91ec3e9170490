"""The forward on ONNX Runtime answers as torch does: the checked export, its refusals and the
handler's runtime setting. (Served through TorchServe: tests/test_one_answer_path.py, whose session
archives run onnx and whose three-member archives run torch.)

    .venv/bin/python -m pytest -q tests/test_runtimes.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from galaxy_morph import Predictor
from galaxy_morph import runtimes
from galaxy_morph.run_files import ONNX_FILE, ONNX_RECORD, onnx_is_current
from tests.conftest import REPO, SAMPLES


@pytest.fixture(scope="module")
def run(served_archives, tmp_path_factory):
    """A copy of the session's run (its exports, made by the archive build, included)."""
    out = tmp_path_factory.mktemp("runtimes") / "run"
    shutil.copytree(served_archives[0], out)
    return out


def test_onnx_answers_equal_torch_answers_on_the_real_samples(run):
    images = [p.read_bytes() for p in sorted(SAMPLES.glob("class_*.jpg"))]
    for model, tta, picked in (("ensemble", False, images), ("b2", True, images[::10])):
        want = Predictor.from_run(run, model, tta=tta, device="cpu").answer_batch(picked, embeddings=True)
        got = Predictor.from_run(run, model, tta=tta, device="cpu", runtime="onnx").answer_batch(picked, embeddings=True)
        assert len({a["label"] for a in want}) >= 3 or tta
        for g, w in zip(got, want):
            assert g["label"] == w["label"] and g["in_distribution"] == w["in_distribution"]
            assert np.allclose(list(g["probabilities"].values()), list(w["probabilities"].values()), atol=1e-4)
            for gm, wm in ((g[m], w[m]) for m in ("b0", "b2")) if model == "ensemble" else [(g, w)]:
                assert np.allclose(gm["embedding"], wm["embedding"], atol=1e-3)
                assert gm["ood_score"] == pytest.approx(wm["ood_score"], abs=1e-3)
    # MC dropout: B0's head on ONNX Runtime's features
    onnx = Predictor.from_run(run, "b0", device="cpu", runtime="onnx")
    assert onnx.answer(images[0], mc_passes=5)["mc_dropout"]["passes"] == 5
    # Grad-CAM keeps the torch model, predicting from the same probabilities
    assert onnx.explain(images[0], model="b0")["predicted"] == onnx.answer(images[0])["label"]


def test_the_export_is_made_once_and_again_for_new_weights(run, tmp_path):
    ckpt = tmp_path / "b0"
    shutil.copytree(run / "b0", ckpt)
    (ckpt / ONNX_FILE).unlink(missing_ok=True)
    (ckpt / ONNX_RECORD).unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "training.export_onnx", str(ckpt), "--samples", str(SAMPLES)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    record = json.loads((ckpt / ONNX_RECORD).read_text())
    assert record["n"] == len(list(SAMPLES.glob("class_*.jpg"))) and record["labels_differ"] == 0
    assert record["max_prob_diff"] <= runtimes.MAX_PROB_DIFF and onnx_is_current(ckpt)
    state = torch.load(ckpt / "model.pt", weights_only=True)
    state["classifier.1.bias"] += 1.0
    torch.save(state, ckpt / "model.pt")
    assert not onnx_is_current(ckpt)  # other weights: the next answer exports again
    Predictor.from_run(ckpt, runtime="onnx", device="cpu")
    assert onnx_is_current(ckpt) and json.loads((ckpt / ONNX_RECORD).read_text())["checked_on"] == "random pixels"


def test_an_export_that_answers_otherwise_is_refused(run, tmp_path, monkeypatch):
    ckpt = tmp_path / "b2"
    shutil.copytree(run / "b2", ckpt)
    (ckpt / ONNX_FILE).unlink(missing_ok=True)
    (ckpt / ONNX_RECORD).unlink(missing_ok=True)
    real_export = runtimes.export_onnx

    def drifted(model, crop):  # an exporter that loses precision somewhere
        with torch.no_grad():
            model.get_classifier().bias.add_(1e-2 * torch.arange(10.0))
        return real_export(model, crop)

    monkeypatch.setattr(runtimes, "export_onnx", drifted)
    with pytest.raises(ValueError, match="does not answer as torch does"):
        runtimes.ensure_onnx(ckpt, SAMPLES)
    assert not (ckpt / ONNX_FILE).exists() and not onnx_is_current(ckpt)


def test_runtime_choices_are_checked(run, tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        Predictor.from_run(run, runtime="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="on the CPU in fp32"):
        from galaxy_morph.predictor import Member
        Member(run / "b0", "cpu", precision="bf16", runtime="onnx")
    from torchserve_ops.archive import model_config_for
    assert model_config_for("b0", "b0")["handler"]["runtime"] == "onnx"
    assert model_config_for("b0", "b0", "cuda")["handler"]["runtime"] == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        model_config_for("b0", "b0", "cuda", runtime="onnx")
