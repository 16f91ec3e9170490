"""How unsure a model is of one galaxy, from its probabilities or from MC-dropout passes.

    from galaxy_morph.uncertainty import entropy_nats, mutual_information
    entropy_nats(p)                  # p: (..., classes) -> (...), 0 to ln(classes)
    mutual_information(samples)      # samples: (passes, ..., classes) -> (...): BALD

The handler answers BALD for a request that asks for MC dropout (galaxy_morph.models
.mc_dropout_probabilities); labelling.acquisition ranks galaxies by these and other scores.
"""
from __future__ import annotations

import numpy as np

MAX_MC_PASSES = 64  # MC-dropout passes one request may ask for (each is one head forward)
EPS = 1e-12  # probabilities are clipped to this inside logs: 0 * log(0) counts as 0


def entropy_nats(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, EPS, None))).sum(-1)


def mutual_information(samples) -> np.ndarray:
    """BALD: H(mean over passes) - mean over passes of H(each pass) (Houlsby et al. 2011;
    Walmsley et al. 2020, MNRAS 491, 1554): high where the passes are each sure but disagree."""
    s = np.asarray(samples, dtype=np.float64)
    # >= 0 in exact arithmetic (entropy is concave); rounding can dip below
    return np.maximum(entropy_nats(s.mean(0)) - entropy_nats(s).mean(0), 0.0)
