"""Calibrated probabilities: temperature scaling as the handler, Ray and training.evaluate apply it,
reliability bins computed by hand, and the shipped demo checkpoints' calibration."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from galaxy_morph.calibration import (calibrate, ece, fit_temperature, read_calibration, reliability, softmax,
                                      write_calibration)
from galaxy_morph.imaging import decode_image
from galaxy_morph.models import load_checkpoint
from tests.test_handler import b0_dir, image_bytes, make_context  # noqa: F401 (b0_dir: a fixture)
from training import evaluate as ev

REPO = Path(__file__).resolve().parent.parent


def test_calibrate_keeps_the_argmax_and_softens_or_sharpens():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]])
    assert torch.equal(calibrate(p, 1.0), p)
    for t in (0.5, 2.0):
        q = calibrate(p, t)
        assert torch.equal(q.argmax(1), p.argmax(1)) and torch.allclose(q.sum(1), torch.ones(2))
    assert calibrate(p, 2.0)[0, 0] < 0.7 < calibrate(p, 0.5)[0, 0]
    # softmax(log p / T) by hand for T = 2: sqrt(p) normalised
    want = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum()
    assert calibrate(p, 2.0)[0].numpy() == pytest.approx(want, abs=1e-6)


def test_reliability_bins_by_hand():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.35, 0.65], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    r = reliability(probs, y, bins=4)  # edges 0, .25, .5, .75, 1
    assert r["count"] == [0, 0, 2, 2]
    assert r["confidence"][2] == pytest.approx(0.625) and r["accuracy"][2] == 1.0
    assert r["confidence"][3] == pytest.approx(0.925) and r["accuracy"][3] == 0.5
    assert r["ece"] == pytest.approx(0.5 * 0.375 + 0.5 * 0.425) == ece(probs, y, bins=4)


def test_temperature_fitted_on_overconfident_logits_lowers_the_ece():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 3000)
    logits = rng.normal(size=(3000, 5))
    logits[np.arange(3000), y] += 1.5
    logp = np.log(softmax(logits * 4))  # four times too sharp
    t = fit_temperature(logp, y)
    assert t > 2
    assert ece(softmax(logp, t), y) < 0.5 * ece(softmax(logp), y)


def test_handler_answers_the_calibrated_probabilities_that_evaluate_computes(b0_dir, tmp_path):  # noqa: F811
    from handlers.galaxy_handler import GalaxyHandler

    d = tmp_path / "b0"
    shutil.copytree(b0_dir, d)
    write_calibration(d, tta=False, entry={"temperature": 2.5, "fitted_on": {"split": "val", "n": 0}})
    h = GalaxyHandler()
    h.initialize(make_context(d, [{}], yaml_config={"handler": {"spec": "b0"}}))
    data = [image_bytes(seed=s) for s in range(3)]
    rows = [{"body": b} for b in data]
    answers = [json.loads(o) for o in h.handle(rows, make_context(d, rows))]
    assert all(a["calibrated"] is True for a in answers)
    served = np.array([list(a["probabilities"].values()) for a in answers])
    ckpt = load_checkpoint(d)
    logp = ev.log_probs(ckpt.model, [torch.stack([ckpt.transform(decode_image(b)) for b in data])],
                        torch.device("cpu"))
    assert served == pytest.approx(softmax(logp, ckpt.temperature()), abs=1e-5)  # what evaluate fits and scores
    plain = softmax(logp)
    assert np.abs(served - plain).max() > 1e-3  # the temperature was applied
    assert (served.max(1) < plain.max(1)).all()  # T > 1 lowers the confidence


def test_write_calibration_keeps_the_other_mode(tmp_path):
    write_calibration(tmp_path, False, {"temperature": 1.5})
    write_calibration(tmp_path, True, {"temperature": 1.2})
    write_calibration(tmp_path, False, {"temperature": 1.7})
    assert read_calibration(tmp_path) == {"plain": {"temperature": 1.7}, "tta": {"temperature": 1.2}}


@pytest.mark.parametrize("name", ["b0", "b2"])
def test_shipped_demo_checkpoints_are_calibrated(name):
    ckpt = load_checkpoint(REPO / "checkpoints" / "demo" / name)
    assert ckpt.calibrated(tta=False)
    entry = ckpt.calibration["plain"]
    assert entry["fitted_on"]["split"] == "val" and entry["fitted_on"]["n"] > 1000
    before, after = entry["reliability_before"], entry["reliability_after"]
    assert after["ece"] <= before["ece"]
    assert sum(before["count"]) == sum(after["count"]) == entry["fitted_on"]["n"]
