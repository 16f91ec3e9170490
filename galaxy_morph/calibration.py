"""Calibrated probabilities: temperature scaling (Guo et al. 2017) fitted on the validation split,
and the reliability of probabilities (ECE and the reliability diagram's bins).

    probs = calibrate(probs, ckpt.temperature(tta=False))     # softmax(log p / T): argmax unchanged
    t = fit_temperature(val_logp, val_y); ece(softmax(val_logp, t), val_y); nll(probs, y)

A checkpoint folder's calibration.json holds one entry per answering mode, "plain" and "tta" (the
mean over the 8 dihedral views), each with the temperature, the data it was fitted on and the
reliability before and after: training.evaluate fits them on the training data's validation split.
Under "served", fits on the galaxies the service answers win over those: real labelled galaxies
(training.calibrate_real) or a user's own held-out labels (training.retrain). A mode without an
entry is answered with T = 1 and says it is not calibrated. Each answer says which fit it used:
{"on": "real" | "your labels" | "synthetic" | "validation split", "n", "temperature"}.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from galaxy_morph.files import atomic_write_json

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15


def mode(tta: bool) -> str:
    return "tta" if tta else "plain"


def calibrate(probs, temperature: float):
    """softmax(log(p) / T) over the last axis of a torch tensor or a numpy array (float32 back);
    T = 1 returns `probs` as they are."""
    if temperature == 1.0:
        return probs
    if isinstance(probs, np.ndarray):
        z = np.log(np.clip(probs, 1e-12, None)) / np.float32(temperature)
        e = np.exp(z - z.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
    import torch

    return torch.softmax(probs.clamp_min(1e-12).log() / temperature, dim=-1)


def softmax(logp, t: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logp / t) of float64 log-probabilities (or logits): temperature scaling."""
    z = np.asarray(logp, np.float64) / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(probs, y) -> float:
    """Mean negative log-likelihood of the true classes."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(logp, y) -> float:
    """The temperature that minimises the NLL of softmax(logp / T) on (logp, y) (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    logp, y = np.asarray(logp, np.float64), np.asarray(y)

    def loss(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    return float(np.exp(minimize_scalar(loss, bounds=(-4, 4), method="bounded").x))


def reliability(probs, y, bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins: {"edges", "count", "confidence", "accuracy", "ece"} (None for an
    empty bin). ECE is |accuracy - confidence| averaged over the bins, weighted by their counts."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    count, confidence, accuracy, total = [], [], [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        count.append(int(m.sum()))
        confidence.append(float(conf[m].mean()) if m.any() else None)
        accuracy.append(float(correct[m].mean()) if m.any() else None)
        if m.any():
            total += m.mean() * abs(accuracy[-1] - confidence[-1])
    return {"edges": edges.tolist(), "count": count, "confidence": confidence, "accuracy": accuracy,
            "ece": float(total)}


def ece(probs, y, bins: int = ECE_BINS) -> float:
    return reliability(probs, y, bins)["ece"]


def read_calibration(ckpt_dir: str | os.PathLike) -> dict:
    """{"plain": {...}, "tta": {...}} from the folder's calibration.json ({} when there is none)."""
    path = Path(ckpt_dir) / CALIBRATION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def served_entry(calibration: dict, tta: bool) -> dict | None:
    """The fit an answer in this mode uses: the served-domain one, else the validation split's."""
    return (calibration.get("served") or {}).get(mode(tta)) or calibration.get(mode(tta))


def temperature_of(calibration: dict, tta: bool) -> float | None:
    entry = served_entry(calibration, tta)
    return float(entry["temperature"]) if entry else None


def provenance(entry: dict | None, synthetic_data: bool | None = None) -> dict | None:
    """What an answer says of its calibration: {"on", "n", "temperature"} (None: not calibrated).
    An entry that does not name its galaxies was fitted on the training data's validation split."""
    if not entry:
        return None
    on = entry.get("on") or ("synthetic" if synthetic_data else "validation split")
    n = entry.get("n", (entry.get("fitted_on") or {}).get("n"))
    return {"on": on, "n": n, "temperature": float(entry["temperature"])}


def write_calibration(ckpt_dir: str | os.PathLike, tta: bool, entry: dict, served: bool = False) -> Path:
    """Set one mode's entry (`served`: the served-domain fit), keeping the others; written atomically."""
    path = Path(ckpt_dir) / CALIBRATION_FILE
    data = read_calibration(ckpt_dir)
    if served:
        data.setdefault("served", {})[mode(tta)] = entry
    else:
        data[mode(tta)] = entry
    return atomic_write_json(path, data)
