"""The Legacy Surveys' g, r, z -> RGB mapping (legacypipe `sdss_rgb`), the look of Galaxy10 DECaLS.

One function for both users: FITS cutouts from the survey are rendered with the survey's own
scales, and the synthetic generator renders its fluxes (in units of the sky noise) through the same
curve with a scale of its own.

    rgb = sdss_rgb(np.stack([g, r, z]))           # float32 (H, W, 3) in [0, 1]: R = z, G = r, B = g
    img = to_uint8(rgb)
"""
from __future__ import annotations

import numpy as np

BANDS = ("g", "r", "z")
# legacypipe py/legacypipe/survey.py: band -> (RGB plane, scale); z is red, g is blue.
RGB_SCALES = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2)}
SOFTENING_M = 0.03
Q = 20.0


def sdss_rgb(imgs, bands=BANDS, scales=None, m: float = SOFTENING_M, q: float = Q) -> np.ndarray:
    """(3, H, W) band images (nanomaggies for survey data) -> (H, W, 3) float32 RGB in [0, 1].

    I = mean over bands of max(0, img * s + m); each plane = (img * s + m) * asinh(q I) / sqrt(q) / I.
    `scales` maps band -> (plane, scale) like RGB_SCALES. Each plane clips at 1 on its own, so
    saturated cores turn white, as in the survey's images.
    """
    imgs = np.asarray(imgs, np.float32)
    if imgs.ndim != 3 or imgs.shape[0] != len(bands):
        raise ValueError(f"expected ({len(bands)}, H, W) band images, got shape {imgs.shape}")
    scales = RGB_SCALES if scales is None else scales
    h, w = imgs.shape[1:]
    planes = np.zeros((3, h, w), np.float32)
    for img, band in zip(imgs, bands):
        plane, scale = scales[band]
        planes[plane] = img * np.float32(scale) + np.float32(m)
    np.maximum(planes, 0, out=planes)
    inten = planes.mean(0) + np.float32(1e-8)
    gain = np.arcsinh(np.float32(q) * inten) / np.float32(np.sqrt(q)) / inten
    out = planes * gain
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[0, 1] float RGB -> uint8, truncating like the survey's JPEG writer."""
    return (np.asarray(rgb, np.float32) * np.float32(255.0)).astype(np.uint8)
