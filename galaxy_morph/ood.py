"""Is this a galaxy cutout the model was trained on? Two cheap checks that need no model, then a
reject head on the model's own penultimate-layer features.

    detector = OODDetector.load(ckpt_dir)               # ood.npz beside model.pt (None when absent)
    reason = cheap_check(image_uint8)                   # "constant image", "no source ...", or None
    scores = detector.score(features)                   # (N,) float; > detector.threshold: flagged

The head is fitted on the training split's galaxies against generated non-galaxy images
(simulation.outliers), and its threshold on the validation split, so that a chosen share of held-out
galaxies passes; training.ood writes the file and measures it against the other candidates.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
# A cutout whose pixels hardly vary (std below one grey level of 255) carries no source at all.
CONSTANT_STD = 1.0
# The brightest point of the central half, smoothed over 5x5 pixels, must stand this many robust
# sigmas above the sky. Smoothed Gaussian noise peaks at about 4 sigma over a 128 px box; the faintest
# of the 100 real samples stands 13 sigma above its sky.
SOURCE_SIGMA = 6.0
SMOOTH = 5


def cheap_check(image) -> str | None:
    """A reason to flag the image without any model, or None. `image`: HxWxC or HxW uint8 pixels
    (array or PIL image) or a CxHxW uint8 tensor (the GPU decoder's)."""
    if hasattr(image, "detach"):  # a torch tensor, on any device
        t = image.detach().cpu()
        image = t.permute(1, 2, 0).numpy() if t.dim() == 3 else t.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:  # the int32 sums below are sized for 8-bit pixels
        raise TypeError(f"cheap_check wants uint8 pixels, got {a.dtype}")
    # The grey image is the channels' mean, kept as the integer channel sum k = channels * grey, and
    # the 5x5 mean as the integer box sum times lcm / (pixels in the window): every statistic below
    # is exact, and the medians come from a histogram instead of a sort (4x faster than float32).
    channels = a.shape[2] if a.ndim == 3 else 1
    a = a.reshape(a.shape[0], a.shape[1], channels)
    k = a[..., 0].astype(np.int32)
    for c in range(1, channels):  # slice by slice: 7x faster than a.sum(2)
        k += a[..., c]
    if k.std(ddof=1) / channels < CONSTANT_STD:  # ddof 1: torch's std, as the threshold was set
        return "constant image: no structure at all"
    h, w = k.shape
    p = np.pad(k, SMOOTH // 2)
    rows = sum(p[i:i + h] for i in range(SMOOTH))
    lcm, weight = _window_weights(h, w)
    s = sum(rows[:, j:j + w] for j in range(SMOOTH)) * weight  # = channels * lcm * smoothed grey
    sky = _lower_median(s.ravel())
    mad = _lower_median(np.abs(s.ravel() - sky))
    peak = s[h // 4: 3 * h // 4, w // 4: 3 * w // 4].max()
    unit = channels * lcm
    sigmas = float((peak - sky) / unit / (1.4826 * mad / unit + 1e-6))
    if sigmas < SOURCE_SIGMA:
        return f"no source above the sky noise in the centre (peak {sigmas:.1f} sigma)"
    return None


@functools.lru_cache(maxsize=8)
def _window_weights(h: int, w: int) -> tuple[int, np.ndarray]:
    """(lcm, lcm // pixels) of the SMOOTH x SMOOTH windows of an h x w image, clipped at its edges
    (avg_pool2d's count_include_pad=False)."""
    r = SMOOTH // 2

    def inside(n):
        i = np.arange(n)
        return np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1
    pixels = np.outer(inside(h), inside(w))
    lcm = int(np.lcm.reduce(np.unique(pixels)))
    return lcm, (lcm // pixels).astype(np.int32)


def _lower_median(v: np.ndarray, bits: int = 8):
    """The lower of the two middle values (torch.median's) of non-negative integers: a histogram of
    v >> bits finds the bin that holds it, a partition of that bin alone the value."""
    m = (v.size - 1) // 2
    high = v >> bits
    below = np.cumsum(np.bincount(high))
    b = int(np.searchsorted(below, m, side="right"))
    rank = m - (int(below[b - 1]) if b else 0)
    return np.partition(v[high == b], rank)[rank]


@dataclass
class OODDetector:
    """A reject head on the frozen penultimate features (outlier exposure, Hendrycks et al. 2019):
    a logistic regression of "not a galaxy" trained against generated non-galaxy images, as Galaxy
    Zoo's "star or artifact" answer. score = w . (f - mean) / scale + b, the logit of "not a galaxy"."""
    mean: np.ndarray  # (D,) the training galaxies' feature mean
    scale: np.ndarray  # (D,) and standard deviation
    weight: np.ndarray  # (D,)
    bias: float
    threshold: float  # scores above it are flagged
    quantile: float  # share of validation galaxies whose score is at most the threshold

    def score(self, features) -> np.ndarray:
        f = features.detach().float().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
        return ((f.astype(np.float64) - self.mean) / self.scale) @ self.weight + self.bias

    def save(self, ckpt_dir: str | os.PathLike) -> Path:
        path = Path(ckpt_dir) / OOD_FILE
        np.savez_compressed(path, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                            weight=self.weight.astype(np.float32), bias=np.float64(self.bias),
                            threshold=np.float64(self.threshold), quantile=np.float64(self.quantile))
        return path

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike) -> "OODDetector | None":
        path = Path(ckpt_dir) / OOD_FILE
        if not path.is_file():
            return None
        with np.load(path) as z:
            return cls(z["mean"].astype(np.float64), z["scale"].astype(np.float64), z["weight"].astype(np.float64),
                       float(z["bias"]), float(z["threshold"]), float(z["quantile"]))

    @classmethod
    def fit(cls, galaxy_features, outlier_features, val_features, c: float = 1.0,
            quantile: float = 0.99) -> "OODDetector":
        """The head on galaxies (training split) against generated outliers, classes weighted
        equally; the threshold at `quantile` of the validation galaxies' scores."""
        from sklearn.linear_model import LogisticRegression

        g, o = np.asarray(galaxy_features, np.float64), np.asarray(outlier_features, np.float64)
        mean, scale = g.mean(0), g.std(0) + 1e-6
        x = np.r_[(g - mean) / scale, (o - mean) / scale]
        y = np.r_[np.zeros(len(g)), np.ones(len(o))]
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x, y)
        det = cls(mean, scale, head.coef_[0], float(head.intercept_[0]), 0.0, quantile)
        det.threshold = float(np.quantile(det.score(val_features), quantile))
        return det

def verdict(reason: str | None, score: float | None, detector: OODDetector | None) -> dict:
    """The answer's fields: in_distribution, ood_score (None without a detector) and, when flagged,
    ood_reason: the cheap check's reason, else the distance's."""
    out = {"in_distribution": True, "ood_score": None if score is None else float(score)}
    if reason:
        return {**out, "in_distribution": False, "ood_reason": reason}
    if score is not None and detector is not None and score > detector.threshold:
        return {**out, "in_distribution": False,
                "ood_reason": f"unlike the galaxies the model was trained on (score {score:.2f} > "
                              f"threshold {detector.threshold:.2f})"}
    return out
