"""make retrain's third stage: the new version calibrated on the user's own held-out labels, the
galaxies it will answer (training/retrain.py calls calibrate_on_labels for each model).

The temperature is refitted there (minimum NLL, each answering mode FROM was calibrated in) and
written under "served" in OUT/M/calibration.json, so answers say "calibration": {"on": "your
labels"}; the ECE, NLL and mean confidence under FROM's copied temperature, after the refit and
CV_FOLDS-fold cross-validated are kept beside it. The out-of-distribution head stays FROM's; its
threshold moves to the held-out galaxies' 90th percentile when it flags more than OOD_MAX_FLAGGED
of them. Fewer than MIN_REFIT held-out labels keep FROM's temperature and threshold.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from galaxy_morph.calibration import (CALIBRATION_FILE, ece, fit_temperature, nll, read_calibration, softmax,
                                      write_calibration)
from galaxy_morph.ood import OOD_FILE, OODDetector
from galaxy_morph.predictor import Member, Predictor, to_image
from training.calibrate_real import folds

MIN_REFIT = 10  # held-out labels below which FROM's temperature and OOD threshold are kept
OOD_MAX_FLAGGED = 0.10  # of the user's held-out galaxies; more and the threshold is refitted
CV_FOLDS = 5


def held_out_rows(data: Path, indices) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    idx = np.sort(np.asarray(indices))
    with h5py.File(data, "r") as f:
        return f["images"][idx], np.asarray(f["ans"][idx])


def refit_temperature(folder: Path, pixels: np.ndarray, y: np.ndarray, tta: bool, labels: str) -> dict:
    """The mode's temperature refitted on (pixels, y), written under "served" in the folder's
    calibration.json; the figures under the copied temperature, after the refit, and cross-validated."""
    member = Member(folder, "cpu", tta)
    copied, member.temperature = member.temperature, 1.0
    images = [to_image(p) for p in pixels]
    raw = np.concatenate([member.probabilities(member.inputs(images[i:i + 32]))[0].cpu().numpy()
                          for i in range(0, len(images), 32)]).astype(np.float64)
    logp = np.log(np.clip(raw, 1e-12, None))
    t = fit_temperature(logp, y)
    cv = np.zeros_like(raw)
    for held in folds(y, CV_FOLDS):
        rest = np.setdiff1d(np.arange(len(y)), held)
        cv[held] = softmax(logp[held], fit_temperature(logp[rest], y[rest]))

    def figures(p):
        return {"ece": float(ece(p, y)), "nll": nll(p, y), "mean_confidence": float(p.max(1).mean())}
    entry = {"temperature": t, "on": "your labels", "n": int(len(y)),
             "fitted_on": {"labels": labels, "split": "held-out", "n": int(len(y))},
             "accuracy": float(np.mean(raw.argmax(1) == y)),
             "copied": {"temperature": copied, **figures(softmax(logp, copied))},
             "refitted": figures(softmax(logp, t)), "cv": {"folds": CV_FOLDS, **figures(cv)}}
    write_calibration(folder, tta, entry, served=True)
    return entry


def check_ood_threshold(folder: Path, pixels: np.ndarray) -> dict | None:
    """The share of held-out galaxies the copied OOD head flags; over OOD_MAX_FLAGGED, its
    threshold moves to their 90th percentile (saved). None without an OOD head."""
    member = Member(folder, "cpu")
    if member.ood is None:
        return None
    answers = Predictor({member.spec.name: member}, member.spec.name).answer_batch(list(pixels))
    scores = np.array([a["ood_score"] for a in answers if a.get("ood_score") is not None])
    before = float(np.mean([not a["in_distribution"] for a in answers]))
    result = {"threshold_copied": member.ood.threshold, "flagged_copied": before, "refitted": False,
              "threshold": member.ood.threshold, "flagged": before, "n": len(answers)}
    if before > OOD_MAX_FLAGGED and len(scores):
        det = OODDetector.load(folder)
        det.threshold, det.quantile = float(np.quantile(scores, 1 - OOD_MAX_FLAGGED)), 1 - OOD_MAX_FLAGGED
        det.save(folder)
        cheap = sum(a.get("ood_score") is None and not a["in_distribution"] for a in answers)
        result.update(refitted=True, threshold=det.threshold,
                      flagged=float((np.sum(scores > det.threshold) + cheap) / len(answers)))
    return result


def calibrate_on_labels(source: Path, folder: Path, data: Path, test, labels: str) -> dict:
    """FROM's calibration and OOD files (`source`: FROM/M) copied afresh into `folder` (OUT/M), then
    refitted on the held-out rows `test` of `data`: {"plain": entry, ["tta": entry], "ood": ...},
    or {"kept": reason}."""
    for inherited in (CALIBRATION_FILE, OOD_FILE):  # the baseline: a second compare starts from FROM's again
        (folder / inherited).unlink(missing_ok=True)
        if (source / inherited).is_file():
            shutil.copy2(source / inherited, folder / inherited)
    pixels, y = held_out_rows(data, test)
    if len(y) < MIN_REFIT:
        return {"kept": f"{len(y)} held-out labels (fewer than {MIN_REFIT}): FROM's temperature and OOD threshold kept"}
    copied = read_calibration(folder)
    modes = [False] + ([True] if "tta" in copied or "tta" in (copied.get("served") or {}) else [])
    result = {("tta" if tta else "plain"): refit_temperature(folder, pixels, y, tta, labels) for tta in modes}
    result["ood"] = check_ood_threshold(folder, pixels)
    return result
