"""Ensemble rules: pure functions over the two models' probability vectors.

Every rule returns the same structure:

    {"label": int, "confidence": float, "source": str, "probabilities": list[float], "rule": str}

`probabilities` is the distribution the answer was read from (so `confidence ==
probabilities[label]`), and `source` says which model(s) the answer comes from: "both" when the
two models' top classes agree, otherwise "b0" or "b2" (the model whose top class was chosen) or
"neither" (a combined distribution whose top class neither model had on top).

- `seed`: the seed system's rule. Agree: that label, confidence (p1+p2)/2 at it, source "both".
  Disagree: B0's label and confidence, source "b0".
- `mean`: the average of the two softmax vectors.
- `weighted`: per class c, (w0[c] p0[c] + w2[c] p2[c]) / (w0[c] + w2[c]) renormalised, where w are
  each model's validation F1 for that class.
"""
from __future__ import annotations

import numpy as np

RULES = ("seed", "mean", "weighted")


def _as_probs(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError("a probability vector must be one-dimensional with at least 2 classes")
    return p


def _answer(probs: np.ndarray, p0: np.ndarray, p2: np.ndarray, rule: str) -> dict:
    label = int(np.argmax(probs))
    top0, top2 = int(np.argmax(p0)), int(np.argmax(p2))
    if top0 == top2 == label:
        source = "both"
    elif label == top0:
        source = "b0"
    elif label == top2:
        source = "b2"
    else:
        source = "neither"
    return {"label": label, "confidence": float(probs[label]), "source": source,
            "probabilities": probs.tolist(), "rule": rule}


def seed(p_b0, p_b2) -> dict:
    p0, p2 = _as_probs(p_b0), _as_probs(p_b2)
    if int(np.argmax(p0)) == int(np.argmax(p2)):
        return _answer((p0 + p2) / 2, p0, p2, "seed")
    return _answer(p0, p0, p2, "seed")


def mean(p_b0, p_b2) -> dict:
    p0, p2 = _as_probs(p_b0), _as_probs(p_b2)
    return _answer((p0 + p2) / 2, p0, p2, "mean")


def weighted(p_b0, p_b2, f1_b0, f1_b2) -> dict:
    p0, p2 = _as_probs(p_b0), _as_probs(p_b2)
    w0, w2 = np.asarray(f1_b0, dtype=np.float64), np.asarray(f1_b2, dtype=np.float64)
    if w0.shape != p0.shape or w2.shape != p2.shape:
        raise ValueError("weights need one value per class")
    total = w0 + w2
    # A class that neither model ever got right on validation falls back to equal weights.
    w0 = np.where(total > 0, w0, 0.5)
    w2 = np.where(total > 0, w2, 0.5)
    mixed = (w0 * p0 + w2 * p2) / (w0 + w2)
    return _answer(mixed / mixed.sum(), p0, p2, "weighted")


def combine(rule: str, p_b0, p_b2, f1_b0=None, f1_b2=None) -> dict:
    """Apply a rule by name; `weighted` needs both models' per-class validation F1."""
    if rule == "seed":
        return seed(p_b0, p_b2)
    if rule == "mean":
        return mean(p_b0, p_b2)
    if rule == "weighted":
        if f1_b0 is None or f1_b2 is None:
            raise ValueError("the weighted rule needs both models' per-class validation F1")
        return weighted(p_b0, p_b2, f1_b0, f1_b2)
    raise ValueError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)}")
