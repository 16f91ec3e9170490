"""make retrain calibrates the new version on the user's own labels (training/retrain.py, stage 3):
the temperature refitted on the held-out labels, the OOD threshold checked on them.

    .venv/bin/python -m pytest -q tests/test_retrain_calibration.py
"""
from __future__ import annotations

import json
import shutil

import pytest

from labelling.store import LabelStore
from tests.conftest import REPO
from training import retrain


def test_refit_on_labels_from_a_shifted_domain_lowers_the_held_out_ece(tmp_path):
    """FROM: the demo B0 as it was trained and calibrated, on synthetic galaxies only (its fit on real
    ones removed). The labels come from another domain: the 100 real Galaxy10 DECaLS samples. The
    retrained version answers with a temperature refitted on the held-out labels: there its ECE falls
    against the copied synthetic temperature (refitted and cross-validated), its answers say where the
    fit comes from, and its OOD threshold flags at most 10 % of those galaxies."""
    from galaxy_morph import Predictor
    from galaxy_morph.calibration import read_calibration

    source = tmp_path / "from"
    shutil.copytree(REPO / "checkpoints" / "demo" / "b0", source / "b0")
    calibration = read_calibration(source / "b0")
    calibration.pop("served")  # the fit on the real samples, which are this test's labels
    (source / "b0" / "calibration.json").write_text(json.dumps(calibration))
    store = LabelStore(tmp_path / "labels.db")
    samples = sorted((REPO / "samples" / "galaxy10_decals").glob("class_*.jpg"))
    for p in samples:
        store.add_label(store.add_candidate("decals", p.name, image=p.read_bytes()), "dana", int(p.name.split("_")[1]))
    out = tmp_path / "out"
    assert retrain.main(["--labels", str(tmp_path / "labels.db"), "--from", str(source), "--models", "b0",
                         "--epochs", "1", "--out", str(out), "--store", str(tmp_path / "store"), "--no-register"]) == 0

    report = json.loads((out / "retrain.json").read_text())["models"]["b0"]
    fit = report["calibration"]["plain"]
    assert fit["on"] == "your labels" and fit["n"] == report["this"]["n"] >= 15
    assert fit["copied"]["temperature"] == pytest.approx(calibration["plain"]["temperature"])
    assert fit["refitted"]["ece"] < fit["copied"]["ece"] and fit["cv"]["ece"] < fit["copied"]["ece"], fit
    assert fit["refitted"]["nll"] < fit["copied"]["nll"]
    assert report["this"]["ece"] == pytest.approx(fit["refitted"]["ece"], abs=1e-3)  # what 1.1 answers with
    assert report["this"]["accuracy"] == pytest.approx(fit["accuracy"])  # a temperature keeps the argmax
    answer = Predictor.from_run(out, "b0", device="cpu").answer(samples[0].read_bytes())
    assert answer["calibration"] == {"on": "your labels", "n": fit["n"], "temperature": pytest.approx(fit["temperature"])}
    ood = report["calibration"]["ood"]
    assert ood["flagged"] <= retrain.OOD_MAX_FLAGGED and ood["refitted"] == (ood["flagged_copied"] > retrain.OOD_MAX_FLAGGED)
    card = json.loads((out / "b0" / "report.json").read_text())["held_out_labels"]
    assert card["calibration"]["plain"]["temperature"] == fit["temperature"]
    assert "Calibration of 1.1 on your held-out labels" in (out / "retrain.md").read_text()
