"""Acquisition scores: which galaxies a human should label next. Higher = more worth labelling.

    from labelling.acquisition import SCORES, bald, entropy, rank
    scores = entropy(probs)                 # probs: (n, classes) softmax outputs of one model
    scores = disagreement(p_b0, p_b2)       # two models' (n, classes) answers for the same galaxies
    scores = bald(samples)                  # samples: (passes, n, classes), MC-dropout passes
    best = rank(scores, k=50)               # indices of the 50 highest scores, best first

Every score takes numpy arrays (or anything np.asarray accepts) of probabilities: finite,
non-negative, each vector summing to 1. Logs are natural, so entropies are in nats.
SCORES names each score for a caller that lets the user choose one.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from galaxy_morph.uncertainty import entropy_nats as _entropy
from galaxy_morph.uncertainty import mutual_information

SUM_TOL = 1e-3  # float16 softmax outputs still pass; logits or unnormalised scores do not


def _probabilities(p, shape: str, name: str) -> np.ndarray:
    """p as float64, after checking that it has the axes named in shape and holds probabilities."""
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != shape.count(",") + 1:
        raise ValueError(f"{name} must have shape {shape}, got shape {a.shape}")
    if a.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes (last axis), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite probabilities, got NaN or inf")
    if (a < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities, got a minimum of {a.min():g}")
    sums = a.sum(-1)
    if a.size and np.abs(sums - 1).max() > SUM_TOL:
        raise ValueError(f"{name}: each probability vector must sum to 1, got sums from "
                         f"{sums.min():g} to {sums.max():g} (logits rather than softmax outputs?)")
    return a


def entropy(p) -> np.ndarray:
    """Predictive entropy -sum_c p_c ln p_c of each row of p (n, classes): (n,), 0 to ln(classes)."""
    return _entropy(_probabilities(p, "(n, classes)", "p"))


def margin(p) -> np.ndarray:
    """1 - (top1 - top2) of each row of p (n, classes): (n,), 0 when sure, 1 when the top two tie."""
    a = np.sort(_probabilities(p, "(n, classes)", "p"), axis=-1)
    return 1.0 - (a[:, -1] - a[:, -2])


def bald(samples) -> np.ndarray:
    """BALD mutual information over MC-dropout passes, samples (passes, n, classes): (n,).

    H(mean over passes) - mean over passes of H(each pass): high where the passes are each confident
    but disagree, i.e. where the model's weights, not the image, are uncertain (Houlsby et al. 2011,
    arXiv:1112.5745; Walmsley et al. 2020, MNRAS 491, 1554). 0 to ln(classes).
    """
    s = _probabilities(samples, "(passes, n, classes)", "samples")
    if s.shape[0] < 2:
        raise ValueError(f"samples must hold at least 2 passes (first axis), got shape {s.shape}")
    return mutual_information(s)


def disagreement(p_b0, p_b2) -> np.ndarray:
    """How much two models disagree on each galaxy: the Jensen-Shannon divergence (natural log)
    between their probability vectors, p_b0 and p_b2 both (n, classes): (n,), 0 to ln 2.

    JS(P, Q) = H(M) - (H(P) + H(Q)) / 2 with M = (P + Q) / 2: symmetric and finite even where one
    model gives a class probability 0, unlike KL. It equals BALD over the two models as two passes.
    """
    a = _probabilities(p_b0, "(n, classes)", "p_b0")
    b = _probabilities(p_b2, "(n, classes)", "p_b2")
    if a.shape != b.shape:
        raise ValueError(f"p_b0 and p_b2 must have the same shape, got {a.shape} and {b.shape}")
    return bald(np.stack([a, b]))


def random_scores(n: int, seed: int) -> np.ndarray:
    """The random baseline: n uniform scores in [0, 1) from a numpy Generator seeded with seed."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return np.random.default_rng(seed).random(int(n))


class Score(NamedTuple):
    fn: Callable[..., np.ndarray]
    description: str


SCORES = {
    "entropy": Score(entropy, "predictive entropy of one model's probabilities"),
    "margin": Score(margin, "1 - (top1 - top2): how close the two likeliest classes are"),
    "disagreement": Score(disagreement, "B0/B2 disagreement: Jensen-Shannon divergence of their answers"),
    "bald": Score(bald, "BALD mutual information over MC-dropout passes"),
    "random": Score(random_scores, "random baseline: seeded uniform scores"),
}


def rank(scores, k: int | None = None) -> np.ndarray:
    """Indices of scores (n,) from highest to lowest, equal scores in index order; the first k only
    when k is given (all when k > n)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
        raise ValueError(f"k must be None or a non-negative integer, got {k!r}")
    order = np.argsort(-s, kind="stable")  # stable on the negated scores: ties keep index order
    return order if k is None else order[:k]
