"""Synthetic Galaxy10 DECaLS: galaxies of the ten classes on a dark, noisy sky, in the real file's schema.

Each image is a sum of light profiles (Sersic bulges, inclined exponential disks with small-scale
texture, logarithmic spiral arms, bars, thin edge-on disks, second nuclei and tidal tails, clumps) with
a colour per component (bulges red-yellow, disks and arms blue-white), blurred by a Gaussian PSF, with
field stars and small background galaxies, correlated sky noise, the Legacy Surveys' colour-preserving
asinh stretch to uint8, and JPEG compression at the quality of the real cutouts. Sizes, brightness,
colours, stretch, sky level, noise and compression were matched to the real samples in
samples/galaxy10_decals/. Everything is drawn from one seed: the same seed gives the same bytes.

Run:
    python -m simulation.synthetic --out data/synthetic.h5 [--n 6000] [--seed 0] [--size 256]
                                     [--mosaic docs/synthetic_mosaic.png]

Python:
    generate(path, n, seed=0, size=256)       # write an HDF5 file (images, ans, ra, dec, redshift, pxscale)
    render_galaxy(cls, rng, size=256)         # one HxWx3 uint8 image of class index cls
    save_mosaic(h5_path_or_arrays, png_path)  # one row per class, labelled
"""
from __future__ import annotations

import argparse
import io
import math
import os
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

from galaxy_morph.data import SYNTHETIC_SOURCE, create_h5
from galaxy_morph.legacy_rgb import sdss_rgb, to_uint8
from galaxy_morph.specs import GALAXY10_CLASSES

NUM_CLASSES = len(GALAXY10_CLASSES)
PXSCALE = 0.262  # arcsec per pixel, as in DECaLS
DEFAULT_N = 6000
CHUNK = 256
DUPLICATE_FRACTION = 0.003

# Flux ratios (R, G, B) = (z, r, g): old stellar light is red-yellow, young disks and arms blue-white.
BULGE_RGB = np.array([1.0, 0.92, 0.76], np.float32)
DISK_RGB = np.array([0.86, 0.82, 0.74], np.float32)
ARM_RGB = np.array([0.6, 0.76, 1.0], np.float32)

# The Legacy Surveys' colour-preserving stretch (galaxy_morph.legacy_rgb.sdss_rgb) on fluxes in units
# of the sky noise: I = mean over bands of (flux + SKY_OFFSET), each band out = (flux + SKY_OFFSET)
# * A * asinh(I / SOFT) / I (in 0-255), which is sdss_rgb with Q = (255 / A)^2 and a flux scale of
# 1 / (SOFT * Q). The offset is what turns the sky grey and the faint outskirts of every galaxy
# neutral, while cores keep their colour.
STRETCH_A = 54.0
STRETCH_SOFT = 3.8
STRETCH_Q = (255.0 / STRETCH_A) ** 2
STRETCH_SCALE = 1.0 / (STRETCH_SOFT * STRETCH_Q)
SKY_OFFSET = 2.45
# The real sky is a little redder than grey (median R - B of about +1 of 255 at the border).
SKY_TINT = np.array([1.01, 1.0, 0.99], np.float32)
NOISE_BLUR = 0.55
NOISE_BANK = 1024
NOISE_SHARED = 0.25
JPEG_QUALITY = 75  # the real cutouts are baseline JPEGs at quality 75 with 4:2:0 chroma
JPEG_QUALITY_RANGE = (60, 96)  # randomised around it: other surveys and re-encodings compress differently


@lru_cache(maxsize=4)
def _grid(size: int):
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return xx, yy


def _rotated(size, x0, y0, pa):
    """Pixel coordinates along (u) and across (v) a major axis at angle pa through (x0, y0)."""
    xx, yy = _grid(size)
    dx, dy = xx - np.float32(x0), yy - np.float32(y0)
    c, s = np.float32(math.cos(pa)), np.float32(math.sin(pa))
    return dx * c + dy * s, dy * c - dx * s


def _radius(u, v, q, soft):
    # soft ~ the PSF width keeps cuspy profiles finite at the centre
    return np.sqrt(u * u + (v / np.float32(q)) ** 2 + np.float32(soft * soft))


def _sersic(r, re, n):
    b = 2.0 * n - 1.0 / 3.0
    return np.exp(np.float32(-b) * ((r / np.float32(re)) ** np.float32(1.0 / n) - np.float32(1.0)))


def _jitter(rgb, rng, amount=0.14):
    # redder or bluer, hardly ever green: stellar populations vary along one colour axis
    tilt = rng.normal(0.0, amount)
    tint = np.exp(np.array([tilt, 0.0, -tilt])) * (1.0 + rng.normal(0.0, 0.02, 3))
    return (rgb * tint).astype(np.float32)


class _Canvas:
    """Accumulates coloured light maps for one galaxy."""

    def __init__(self, size):
        self.size = size
        self.lums, self.colours = [], []

    def add(self, lum, amp, rgb):
        self.lums.append(lum * np.float32(amp))
        self.colours.append(np.asarray(rgb, np.float32))

    def flux(self):
        """Band-first (3, size, size) flux."""
        out = np.empty((3, self.size, self.size), np.float32)
        for band in range(3):
            out[band] = self.lums[0] * self.colours[0][band]
            for lum, rgb in zip(self.lums[1:], self.colours[1:]):
                out[band] += lum * rgb[band]
        return out


def _bulge(cv, rng, x0, y0, re, n, q, pa, amp, rgb=None):
    u, v = _rotated(cv.size, x0, y0, pa)
    cv.add(_sersic(_radius(u, v, q, 1.0), re, n), amp, _jitter(BULGE_RGB, rng) if rgb is None else rgb)


def _spiral_disk(cv, rng, x0, y0, h, q, pa, amp, pitch_deg, arms, contrast, r_in=None,
                 phase=None, sharp=None, arm_rgb=ARM_RGB):
    """Exponential disk with logarithmic spiral arms, seen at axis ratio q."""
    u, v = _rotated(cv.size, x0, y0, pa)
    v = v / np.float32(q)
    r = np.sqrt(u * u + v * v + np.float32(1.0))
    theta = np.arctan2(v, u)
    k = np.float32(arms / math.tan(math.radians(pitch_deg)))
    phase = rng.uniform(0, 2 * math.pi) if phase is None else phase
    sharp = rng.uniform(2.0, 4.0) if sharp is None else sharp
    phi = np.float32(arms) * theta - k * np.log(r) + np.float32(phase)
    arm = ((1.0 + np.cos(phi)) * np.float32(0.5)) ** np.float32(sharp)
    r_in = 0.5 * h if r_in is None else r_in
    arm *= np.float32(contrast) * (1.0 - np.exp(-(r / np.float32(r_in)) ** 2))
    disk = np.exp(-r / np.float32(h)) * _texture(cv.size, rng, rng.uniform(0.1, 0.3))
    cv.add(disk * (1.0 - np.float32(contrast) * 0.5), amp, _jitter(DISK_RGB, rng))
    cv.add(disk * arm, amp * 1.6, _jitter(arm_rgb, rng))


def _clumps(cv, rng, x0, y0, spread, count, amp, rgb, width=(0.8, 2.0)):
    """Star-forming knots: small Gaussians scattered around (x0, y0)."""
    lum = np.zeros((1, cv.size, cv.size), np.float32)
    one = np.ones(1, np.float32)
    for _ in range(count):
        w = rng.uniform(*width) * _scale(cv.size)
        cx, cy = x0 + rng.normal(0, spread), y0 + rng.normal(0, spread)
        _blob(lum, cx, cy, rng.uniform(0.3, 1.0), w, w, 0.0, one)
    cv.add(lum[0], amp, _jitter(rgb, rng, 0.12))


def _centre(size, rng, spread=2.0):
    c = (size - 1) / 2.0
    spread *= _scale(size)
    return c + rng.normal(0, spread), c + rng.normal(0, spread)


def _scale(size):
    return size / 256.0


def _log_uniform(rng, lo, hi):
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


@lru_cache(maxsize=2)
def _texture_bank(size):
    rng = np.random.default_rng(0x7E7)
    field = gaussian_filter(rng.standard_normal((NOISE_BANK, NOISE_BANK), np.float32), 1.6 * _scale(size),
                            mode="wrap", truncate=3.0)
    field /= field.std()
    return np.pad(field, ((0, size), (0, size)), mode="wrap")


def _texture(size, rng, amount):
    """Multiplicative small-scale light structure (star-forming regions, dust) of a stellar disk.

    Real disks are never smooth at the pixel scale; without this only the Disturbed class would
    have any texture and every real disk would look disturbed.
    """
    oy, ox = rng.integers(0, NOISE_BANK, 2)
    win = _texture_bank(size)[oy:oy + size, ox:ox + size]
    a = np.float32(amount)
    return np.exp(a * win - a * a / 2)


# ---- the ten classes; sizes are in pixels of a 256 px frame, flux in units of the sky noise ----

def _smooth_rgb(rng):
    # Galaxy Zoo's smooth classes hold many bluer, disk-like galaxies, not only red ellipticals
    t = rng.uniform(0.0, 1.0)
    return _jitter((1 - t) * BULGE_RGB + t * DISK_RGB, rng)


def _round_smooth(cv, rng, s):
    x0, y0 = _centre(cv.size, rng)
    re = _log_uniform(rng, 4.0, 11.0 if rng.random() < 0.85 else 25.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(1.5, 4.0), rng.uniform(0.78, 1.0), rng.uniform(0, math.pi),
           _log_uniform(rng, 20, 160), _smooth_rgb(rng))


def _in_between_smooth(cv, rng, s):
    x0, y0 = _centre(cv.size, rng)
    re = _log_uniform(rng, 5.0, 12.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(0.8, 2.5), rng.uniform(0.5, 0.78), rng.uniform(0, math.pi),
           _log_uniform(rng, 60, 240), _smooth_rgb(rng))


def _cigar(cv, rng, s):
    x0, y0 = _centre(cv.size, rng)
    re = _log_uniform(rng, 7.0, 16.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(0.8, 2.2), rng.uniform(0.25, 0.5), rng.uniform(0, math.pi),
           # the real cigars are the bluest smooth galaxies (measured colour ~0): disk to arm colours
           _log_uniform(rng, 60, 220), _jitter(DISK_RGB + rng.uniform(0.0, 0.6) * (ARM_RGB - DISK_RGB), rng))


def _edge_on(cv, rng, s, bulge):
    # Measured on the real samples (axis ratio, area and light concentration of the central source):
    # bulgeless edge-ons are long and not razor thin; edge-ons with a bulge are shorter, thin, and
    # their bulge is modest and red rather than a dominant round core.
    x0, y0 = _centre(cv.size, rng)
    pa = rng.uniform(0, math.pi)
    h = (_log_uniform(rng, 20.0, 50.0) if not bulge else _log_uniform(rng, 15.0, 28.0)) * s
    z = h * rng.uniform(0.1, 0.26) if not bulge else h * rng.uniform(0.14, 0.3)
    u, v = _rotated(cv.size, x0, y0, pa)
    r = np.sqrt(u * u + np.float32(1.0))
    # flatter than exponential along the disk: the real edge-ons' light is less centrally concentrated
    disk = np.exp(-(r / np.float32(h)) ** np.float32(rng.uniform(1.0, 1.8))) / np.cosh(np.minimum(np.abs(v) / np.float32(z + 0.8), 30)) ** 2
    disk *= _texture(cv.size, rng, rng.uniform(0.1, 0.4))
    amp = _log_uniform(rng, 120, 450) * (0.6 if bulge else 1.0)
    colour = _jitter(0.7 * DISK_RGB + 0.3 * ARM_RGB if not bulge else BULGE_RGB, rng)
    if rng.random() < 0.3:  # a dust lane along the midplane
        disk *= 1.0 - 0.6 * np.exp(-(v / np.float32(z * 0.5 + 0.5)) ** 2) * np.exp(-r / np.float32(3 * h))
    cv.add(disk, amp, colour)
    if bulge:
        re = h * rng.uniform(0.18, 0.35)
        _bulge(cv, rng, x0, y0, re, rng.uniform(1.0, 2.5), rng.uniform(0.45, 0.8), pa,
               amp * rng.uniform(0.08, 0.3))
    else:
        _bulge(cv, rng, x0, y0, h * rng.uniform(0.1, 0.2), 1.0, 0.5, pa, amp * rng.uniform(0.0, 0.2))


def _spiral(cv, rng, s, kind):
    x0, y0 = _centre(cv.size, rng)
    pa = rng.uniform(0, math.pi)
    # real barred spirals are the largest and most face-on of the spirals, loose ones smaller;
    # their bars, arms and bulges are weaker than drawn before (measured: light concentration
    # 0.26, axis ratio 0.81), and no spiral's core saturates as often as a smooth galaxy's
    q = rng.uniform(0.7 if kind == "barred" else 0.45, 1.0)
    h = _log_uniform(rng, 11.0, 26.0) * s
    amp = _log_uniform(rng, 35, 120)
    if kind == "barred":
        h *= 1.25
        bar_len = h * rng.uniform(0.9, 1.5)
        bar_pa = rng.uniform(0, math.pi)
        # arms start at the bar ends: phase puts an arm crest at r = bar_len, theta = bar angle
        pitch = rng.uniform(12, 28)
        k = 2 / math.tan(math.radians(pitch))
        phase = -2 * (bar_pa - pa) + k * math.log(bar_len)
        _spiral_disk(cv, rng, x0, y0, h, q, pa, amp, pitch, 2, rng.uniform(0.4, 0.8),
                     r_in=bar_len * 0.9, phase=phase)
        u, v = _rotated(cv.size, x0, y0, bar_pa)
        bar_q = rng.uniform(0.2, 0.32)
        cv.add(_sersic(_radius(u, v, bar_q, 1.0), bar_len * 0.55, rng.uniform(0.4, 0.8)),
               amp * rng.uniform(0.5, 1.4), _jitter((BULGE_RGB + DISK_RGB) / 2, rng))
        if rng.random() < 0.4:  # inner ring at the bar ends
            u, v = _rotated(cv.size, x0, y0, pa)
            rr = np.sqrt(u * u + (v / np.float32(q)) ** 2)
            cv.add(np.exp(-((rr - bar_len) / np.float32(0.15 * bar_len + 1)) ** 2),
                   amp * rng.uniform(0.3, 0.8), _jitter(DISK_RGB, rng))
        bulge_amp = amp * rng.uniform(0.9, 3)
    elif kind == "tight":
        h *= 0.85
        _spiral_disk(cv, rng, x0, y0, h, q, pa, amp, rng.uniform(7, 14), rng.choice([2, 2, 3]),
                     rng.uniform(0.35, 0.85))
        bulge_amp = amp * rng.uniform(0.9, 3.6)
    else:
        h *= 0.95
        _spiral_disk(cv, rng, x0, y0, h, q, pa, amp, rng.uniform(20, 34), rng.choice([2, 2, 3]),
                     rng.uniform(0.55, 1.0), r_in=0.35 * h)
        bulge_amp = amp * rng.uniform(1.2, 6)
    _bulge(cv, rng, x0, y0, h * rng.uniform(0.12, 0.25), rng.uniform(1.5, 3.0), rng.uniform(0.75, 1.0),
           pa, bulge_amp)
    if rng.random() < 0.5:
        _clumps(cv, rng, x0, y0, h * 1.3, int(rng.integers(3, 10)), amp * 0.8, ARM_RGB)


def _merging(cv, rng, s):
    x0, y0 = _centre(cv.size, rng, 4.0)
    sep = _log_uniform(rng, 10.0, 48.0) * s
    ang = rng.uniform(0, 2 * math.pi)
    ratio = rng.uniform(0.3, 1.0)
    dx, dy = 0.5 * sep * math.cos(ang), 0.5 * sep * math.sin(ang)
    amp = _log_uniform(rng, 100, 350)
    for (cx, cy), f in (((x0 - dx, y0 - dy), 1.0), ((x0 + dx, y0 + dy), ratio)):
        re = rng.uniform(3.0, 8.0) * s
        _bulge(cv, rng, cx, cy, re, rng.uniform(1.5, 4.0), rng.uniform(0.5, 1.0),
               rng.uniform(0, math.pi), amp * f)
        if rng.random() < 0.45:  # each partner may keep a (distorted) disk of its own
            u, v = _rotated(cv.size, cx, cy, rng.uniform(0, math.pi))
            r = np.sqrt(u * u + (v / np.float32(rng.uniform(0.4, 1.0))) ** 2 + np.float32(1.0))
            cv.add(np.exp(-r / np.float32(re * rng.uniform(1.5, 3.0))) * _texture(cv.size, rng, 0.3),
                   amp * f * rng.uniform(0.05, 0.2), _jitter(DISK_RGB, rng))
    # shared envelope and tidal tails: a faint, loose m=2 spiral around the pair
    # (real mergers' light 40-70 px out is ~0.6 sigma: the envelope stays small and faint)
    h = sep * rng.uniform(0.4, 0.8) + 3 * s
    _spiral_disk(cv, rng, x0, y0, h, rng.uniform(0.5, 1.0), rng.uniform(0, math.pi),
                 amp * rng.uniform(0.03, 0.1), rng.uniform(25, 45), 2 if rng.random() < 0.6 else 1,
                 rng.uniform(0.5, 0.9), r_in=0.6 * sep, sharp=rng.uniform(1.5, 3.0),
                 arm_rgb=(BULGE_RGB + DISK_RGB) / 2)


def _patchy(size, rng, scale, waves=3):
    """A smooth random modulation (a few plane waves on the scale of the disk) for irregular light."""
    xx, yy = _grid(size)
    field = np.zeros((size, size), np.float32)
    for _ in range(waves):
        k = 2 * math.pi / (scale * rng.uniform(2.5, 6.0))
        a = rng.uniform(0, 2 * math.pi)
        field += np.cos(xx * np.float32(k * math.cos(a)) + yy * np.float32(k * math.sin(a))
                        + np.float32(rng.uniform(0, 2 * math.pi)))
    return np.exp(np.float32(rng.uniform(0.15, 0.4)) * field)


def _disturbed(cv, rng, s):
    x0, y0 = _centre(cv.size, rng, 3.0)
    h = _log_uniform(rng, 5.0, 12.0) * s
    pa = rng.uniform(0, math.pi)
    q = rng.uniform(0.3, 0.9)
    # lopsided disk: the outer isophotes are shifted to one side
    u, v = _rotated(cv.size, x0, y0, pa)
    r0 = np.sqrt(u * u + (v / np.float32(q)) ** 2 + np.float32(1.0))
    off = rng.uniform(0.2, 0.5)
    da = rng.uniform(0, 2 * math.pi)
    u2 = u - np.float32(off * math.cos(da)) * r0
    v2 = v - np.float32(off * math.sin(da)) * r0
    r = np.sqrt(u2 * u2 + (v2 / np.float32(q)) ** 2 + np.float32(1.0))
    amp = _log_uniform(rng, 70, 250)
    light = np.exp(-r / np.float32(h)) * _patchy(cv.size, rng, h)
    light *= _texture(cv.size, rng, rng.uniform(0.15, 0.45))
    cv.add(light, amp, _jitter(ARM_RGB * 0.5 + DISK_RGB * 0.5, rng))
    _clumps(cv, rng, x0, y0, h * 1.0, int(rng.integers(1, 6)), amp * rng.uniform(0.5, 1.5), ARM_RGB,
            width=(1.5, 3.5))
    if rng.random() < 0.75:  # most real disturbed galaxies keep a bright core
        _bulge(cv, rng, x0, y0, h * 0.25, 1.5, rng.uniform(0.6, 1.0), pa, amp * rng.uniform(0.6, 2.4))
    if rng.random() < 0.4:  # a faint plume
        _spiral_disk(cv, rng, x0, y0, 2 * h, q, pa, amp * 0.15, rng.uniform(25, 40), 1, 1.0, r_in=h)


RENDERERS = {
    0: _disturbed,
    1: _merging,
    2: _round_smooth,
    3: _in_between_smooth,
    4: _cigar,
    5: lambda cv, rng, s: _spiral(cv, rng, s, "barred"),
    6: lambda cv, rng, s: _spiral(cv, rng, s, "tight"),
    7: lambda cv, rng, s: _spiral(cv, rng, s, "loose"),
    8: lambda cv, rng, s: _edge_on(cv, rng, s, bulge=False),
    9: lambda cv, rng, s: _edge_on(cv, rng, s, bulge=True),
}

STAR_COLOURS = np.array([
    [1.0, 0.55, 0.3],   # red dwarfs and distant red galaxies: the most common field objects
    [1.0, 0.7, 0.45],
    [1.0, 0.9, 0.7],
    [0.55, 0.8, 1.2],
], np.float32)


def _blob(flux, cx, cy, amp, w_major, w_minor, angle, colour):
    """Add an elliptical Gaussian of peak `amp` to band-first flux, inside a local patch."""
    size = flux.shape[1]
    lo = int(3.5 * w_major + 2 + (3 if amp > 1000 else 0))
    x_a, x_b = max(int(cx) - lo, 0), min(int(cx) + lo + 1, size)
    y_a, y_b = max(int(cy) - lo, 0), min(int(cy) + lo + 1, size)
    if x_a >= x_b or y_a >= y_b:
        return
    xx, yy = _grid(size)
    dx, dy = xx[y_a:y_b, x_a:x_b] - np.float32(cx), yy[y_a:y_b, x_a:x_b] - np.float32(cy)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = dx * c + dy * s, dy * c - dx * s
    d2 = (u / np.float32(w_major)) ** 2 + (v / np.float32(w_minor)) ** 2
    lum = np.float32(amp) * np.exp(np.float32(-0.5) * d2)
    flux[:, y_a:y_b, x_a:x_b] += colour.astype(np.float32)[:, None, None] * lum


def _field(flux, rng, s, psf, density=1.0):
    """Field stars, small background galaxies and now and then a brighter neighbour galaxy."""
    size = flux.shape[1]
    centre = (size - 1) / 2.0

    def position(min_r):
        while True:
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            if math.hypot(cx - centre, cy - centre) >= min_r * s:
                return cx, cy

    for _ in range(int(rng.poisson(18 * density * s * s))):  # stars
        cx, cy = position(10)
        amp = math.exp(rng.uniform(math.log(2), math.log(40))) if rng.random() < 0.93 else \
            math.exp(rng.uniform(math.log(40), math.log(2000)))
        colour = STAR_COLOURS[rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])] * (1 + rng.normal(0, 0.1, 3))
        _blob(flux, cx, cy, amp, psf, psf, 0.0, colour)
    for _ in range(int(rng.poisson(14 * density * s * s))):  # small, mostly red, background galaxies
        cx, cy = position(8)
        re = rng.uniform(0.5, 3.0) * s
        w = math.sqrt(re * re + psf * psf)
        q = rng.uniform(0.3, 1.0)
        colour = STAR_COLOURS[rng.choice(4, p=[0.4, 0.35, 0.15, 0.1])] * (1 + rng.normal(0, 0.1, 3))
        _blob(flux, cx, cy, math.exp(rng.uniform(math.log(2), math.log(30))), w,
              max(w * q, psf), rng.uniform(0, math.pi), colour)
    for _ in range(int(rng.poisson(0.6))):  # neighbour galaxies, as common around every class
        cx, cy = position(22)
        w = rng.uniform(2.5, 7.0) * s
        colour = [BULGE_RGB, DISK_RGB, ARM_RGB][rng.integers(3)] * (1 + rng.normal(0, 0.08, 3))
        _blob(flux, cx, cy, math.exp(rng.uniform(math.log(20), math.log(200))), w,
              w * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi), colour)


def _blur(flux, psf):
    """Gaussian PSF, applied only inside the box where the galaxy has light (the rest is ~0)."""
    size = flux.shape[1]
    rows = np.flatnonzero(flux[0].max(1) > 0.02)
    cols = np.flatnonzero(flux[0].max(0) > 0.02)
    if rows.size == 0:
        return flux
    pad = int(4 * psf) + 1
    y_a, y_b = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, size)
    x_a, x_b = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, size)
    flux[:, y_a:y_b, x_a:x_b] = gaussian_filter(flux[:, y_a:y_b, x_a:x_b], (0, psf, psf), truncate=3.0)
    return flux


@lru_cache(maxsize=2)
def _noise_bank(size):
    """A fixed, periodic field of sky noise; each image takes a window at a random offset.

    The noise is spatially correlated (the DECaLS coadds are resampled) and partly shared between
    bands (the real cutouts' sky has less colour noise than independent bands would give).
    """
    rng = np.random.default_rng(0x5C1)
    common = rng.standard_normal((1, NOISE_BANK, NOISE_BANK), np.float32)
    own = rng.standard_normal((3, NOISE_BANK, NOISE_BANK), np.float32)
    noise = np.float32(math.sqrt(NOISE_SHARED)) * common + np.float32(math.sqrt(1 - NOISE_SHARED)) * own
    noise = gaussian_filter(noise, (0, NOISE_BLUR, NOISE_BLUR), mode="wrap", truncate=3.0)
    noise /= noise.std()
    return np.pad(noise, ((0, 0), (0, size), (0, size)), mode="wrap")


def _noise(rng, size):
    bank = _noise_bank(size)
    oy, ox = rng.integers(0, NOISE_BANK, 2)
    win = bank[:, oy:oy + size, ox:ox + size]
    flip = rng.integers(0, 8)
    if flip & 1:
        win = win[:, ::-1]
    if flip & 2:
        win = win[:, :, ::-1]
    if flip & 4:
        win = win.transpose(0, 2, 1)
    return win


def _stretch(flux, offset):
    """Band-first (R, G, B) = (z, r, g) flux in sky-noise units plus a sky offset -> HxWx3 uint8."""
    flux += offset[:, None, None]
    k = STRETCH_SCALE
    # each plane clips on its own, as the survey's: saturated cores turn white (the real samples'
    # brightest pixels are near-white, median RGB ~(245, 253, 249) for round smooth galaxies)
    rgb = sdss_rgb(flux[::-1], scales={"g": (2, k), "r": (1, k), "z": (0, k)}, m=0.0, q=STRETCH_Q)
    return to_uint8(rgb)


def _jpeg(img, quality=JPEG_QUALITY):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


def render_galaxy(cls: int, rng: np.random.Generator, size: int = 256, jpeg_quality=None) -> np.ndarray:
    """One synthetic galaxy of Galaxy10 class index `cls` as a (size, size, 3) uint8 array.

    The JPEG quality is drawn from JPEG_QUALITY_RANGE unless `jpeg_quality` fixes it.
    """
    if cls not in RENDERERS:
        raise ValueError(f"class index must be 0..{NUM_CLASSES - 1}, got {cls}")
    s = _scale(size)
    cv = _Canvas(size)
    # Domain randomisation around the measured medians: galaxy scale, seeing, crowding, sky noise
    # (the real samples' sky noise spans 6-12 of 255, median 10), sky level and JPEG quality.
    RENDERERS[cls](cv, rng, s * _log_uniform(rng, 0.85, 1.2))
    psf = rng.uniform(1.3, 2.8) * s
    flux = _blur(cv.flux(), psf)
    _field(flux, rng, s, psf, density=_log_uniform(rng, 0.35, 1.3))
    flux += _noise(rng, size) * np.float32(_log_uniform(rng, 0.8, 1.45))
    offset = (SKY_OFFSET * rng.normal(1.0, 0.04) * SKY_TINT * (1 + rng.normal(0, 0.015, 3))).astype(np.float32)
    quality = rng.integers(*JPEG_QUALITY_RANGE)
    return _jpeg(_stretch(flux, offset), quality=quality if jpeg_quality is None else jpeg_quality)


def _positions(n, rng):
    """(ra, dec) in degrees over the DECaLS footprint; ~0.3 % of rows repeat another row's position."""
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-20)), math.sin(math.radians(35)), n)))
    n_dup = int(round(n * DUPLICATE_FRACTION)) if n >= 20 else (1 if n >= 2 else 0)
    if n_dup:
        rows = rng.choice(n, size=2 * n_dup, replace=False)
        ra[rows[n_dup:]] = ra[rows[:n_dup]]
        dec[rows[n_dup:]] = dec[rows[:n_dup]]
    return ra, dec


def _labels(n, rng, class_weights=None):
    if class_weights is None:
        labels = np.arange(n) % NUM_CLASSES
    else:
        p = np.asarray(class_weights, np.float64)
        labels = rng.choice(NUM_CLASSES, size=n, p=p / p.sum())
    return rng.permutation(labels)


def _render_block(args):
    labels, start, seed, size = args
    block = np.empty((len(labels), size, size, 3), np.uint8)
    for k, label in enumerate(labels):
        block[k] = render_galaxy(int(label), np.random.default_rng([seed, start + k]), size)
    return block


def _write(tmp, labels, ra, dec, redshift, seed, size, chunk, progress, workers=1):
    n = len(labels)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="img", desc="synthetic galaxies")
    with create_h5(tmp, labels, size, ra=ra, dec=dec, redshift=redshift, pxscale=np.full(n, PXSCALE),
                   source=SYNTHETIC_SOURCE, seed=seed) as f:
        images = f["images"]
        jobs = [(labels[a:a + chunk], a, seed, size) for a in range(0, n, chunk)]
        pool = None
        if workers > 1 and len(jobs) > 1:
            import multiprocessing
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)))
        try:
            blocks = pool.imap(_render_block, jobs) if pool else map(_render_block, jobs)
            for (_, start, _, _), block in zip(jobs, blocks):  # in order: the file is the same for any workers
                images[start:start + len(block)] = block
                if bar is not None:
                    bar.update(len(block))
        finally:
            if pool:
                pool.terminate()
    if bar is not None:
        bar.close()


def generate(path, n: int = DEFAULT_N, seed: int = 0, size: int = 256, class_weights=None,
             progress: bool = False, chunk: int = CHUNK, workers: int = 1) -> Path:
    """Write n synthetic galaxies in the Galaxy10 DECaLS HDF5 schema to `path`; return the path.

    Classes are balanced unless `class_weights` (ten relative frequencies) is given. Image i is
    drawn from its own stream seeded by (seed, i), so the file is identical for a given seed,
    whatever the number of worker processes.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x6A1A])
    labels = _labels(n, rng, class_weights)
    ra, dec = _positions(n, rng)
    redshift = rng.gamma(4.0, 0.025, n)
    redshift[rng.random(n) < 0.05] = np.nan
    tmp = path.with_name(path.name + ".part")
    try:
        _write(tmp, labels, ra, dec, redshift, seed, size, chunk, progress, workers)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written under either name
        raise
    tmp.replace(path)
    return path


def _load_for_mosaic(source, per_class):
    if isinstance(source, (str, Path)):
        with h5py.File(source, "r") as f:
            labels = f["ans"][:]
            picks = {c: np.flatnonzero(labels == c)[:per_class] for c in range(NUM_CLASSES)}
            return {c: [f["images"][int(i)] for i in idx] for c, idx in picks.items()}
    images, labels = source
    labels = np.asarray(labels)
    return {c: [images[int(i)] for i in np.flatnonzero(labels == c)[:per_class]] for c in range(NUM_CLASSES)}


def save_mosaic(source, png_path, per_class: int = 8, thumb: int = 96) -> Path:
    """A PNG with one row per class (labelled), `per_class` thumbnails each.

    `source` is an HDF5 path or an (images, labels) pair.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = _load_for_mosaic(source, per_class)
    sheet = np.zeros((NUM_CLASSES * thumb, per_class * thumb, 3), np.uint8)
    for c, imgs in rows.items():
        for k, img in enumerate(imgs):
            small = np.asarray(Image.fromarray(np.asarray(img)).resize((thumb, thumb), Image.BILINEAR))
            sheet[c * thumb:(c + 1) * thumb, k * thumb:(k + 1) * thumb] = small
    label_w, dpi = 2.2, 100  # inches for the class names, dots per inch
    width = label_w + per_class * thumb / dpi
    fig = plt.figure(figsize=(width, NUM_CLASSES * thumb / dpi), dpi=dpi)
    ax = fig.add_axes([label_w / width, 0, 1 - label_w / width, 1])
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    for c in range(NUM_CLASSES):
        fig.text(0.01, 1 - (c + 0.5) / NUM_CLASSES, f"{c} {GALAXY10_CLASSES[c]}", va="center", ha="left",
                 fontsize=9)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:  # RGB, not matplotlib's RGBA: a quarter smaller
        im.convert("RGB").save(png_path, optimize=True)
    return png_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write synthetic Galaxy10 DECaLS galaxies to an HDF5 file.")
    p.add_argument("--out", required=True, help="HDF5 file to write")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of images (default {DEFAULT_N})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes rendering in parallel (default: one per core)")
    p.add_argument("--mosaic", help="also write a PNG mosaic, one row per class")
    args = p.parse_args(argv)
    if args.n < 1 or args.size < 32:
        p.error("--n must be >= 1 and --size >= 32")
    generate(args.out, args.n, seed=args.seed, size=args.size, progress=True, workers=args.workers)
    print(f"wrote {args.n} images to {args.out}")
    if args.mosaic:
        save_mosaic(args.out, args.mosaic)
        print(f"wrote mosaic {args.mosaic}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
