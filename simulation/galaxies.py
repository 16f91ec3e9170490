"""The ten Galaxy10 classes as sums of light profiles: Sersic bulges, inclined exponential disks with
small-scale texture, logarithmic spiral arms, bars, thin edge-on disks, second nuclei, tidal tails
and clumps, each with a colour per component. Fluxes are in units of the sky noise on a 256 px frame
(scaled by `s` for other sizes); simulation.synthetic adds the sky, the PSF and the survey's look.

    cv = Canvas(256); RENDERERS[label](cv, rng, 1.0); cv.flux   # (3, H, W) float32, (z, r, g)
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

# Flux ratios (R, G, B) = (z, r, g): old stellar light is red-yellow, young disks and arms blue-white.
BULGE_RGB = np.array([1.0, 0.92, 0.76], np.float32)
DISK_RGB = np.array([0.86, 0.82, 0.74], np.float32)
ARM_RGB = np.array([0.6, 0.76, 1.0], np.float32)
TEXTURE_BANK = 1024  # pixels a side of the tiled texture field that disks sample windows from


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


class Canvas:
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
        if not self.lums:  # no galaxy: an empty sky
            out[:] = 0
            return out
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
        w = rng.uniform(*width) * frame_scale(cv.size)
        cx, cy = x0 + rng.normal(0, spread), y0 + rng.normal(0, spread)
        blob(lum, cx, cy, rng.uniform(0.3, 1.0), w, w, 0.0, one)
    cv.add(lum[0], amp, _jitter(rgb, rng, 0.12))


def _centre(size, rng, spread=2.0):
    c = (size - 1) / 2.0
    spread *= frame_scale(size)
    return c + rng.normal(0, spread), c + rng.normal(0, spread)


def frame_scale(size):
    return size / 256.0


def log_uniform(rng, lo, hi):
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


@lru_cache(maxsize=2)
def _texture_bank(size):
    rng = np.random.default_rng(0x7E7)
    field = gaussian_filter(rng.standard_normal((TEXTURE_BANK, TEXTURE_BANK), np.float32), 1.6 * frame_scale(size),
                            mode="wrap", truncate=3.0)
    field /= field.std()
    return np.pad(field, ((0, size), (0, size)), mode="wrap")


def _texture(size, rng, amount):
    """Multiplicative small-scale light structure (star-forming regions, dust) of a stellar disk.

    Real disks are never smooth at the pixel scale; without this only the Disturbed class would
    have any texture and every real disk would look disturbed.
    """
    oy, ox = rng.integers(0, TEXTURE_BANK, 2)
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
    re = log_uniform(rng, 4.0, 11.0 if rng.random() < 0.85 else 25.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(1.5, 4.0), rng.uniform(0.78, 1.0), rng.uniform(0, math.pi),
           log_uniform(rng, 20, 160), _smooth_rgb(rng))


def _in_between_smooth(cv, rng, s):
    x0, y0 = _centre(cv.size, rng)
    re = log_uniform(rng, 5.0, 12.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(0.8, 2.5), rng.uniform(0.5, 0.78), rng.uniform(0, math.pi),
           log_uniform(rng, 60, 240), _smooth_rgb(rng))


def _cigar(cv, rng, s):
    x0, y0 = _centre(cv.size, rng)
    re = log_uniform(rng, 7.0, 16.0) * s
    _bulge(cv, rng, x0, y0, re, rng.uniform(0.8, 2.2), rng.uniform(0.25, 0.5), rng.uniform(0, math.pi),
           # the real cigars are the bluest smooth galaxies (measured colour ~0): disk to arm colours
           log_uniform(rng, 60, 220), _jitter(DISK_RGB + rng.uniform(0.0, 0.6) * (ARM_RGB - DISK_RGB), rng))


def _edge_on(cv, rng, s, bulge):
    # Measured on the real samples (axis ratio, area and light concentration of the central source):
    # bulgeless edge-ons are long and not razor thin; edge-ons with a bulge are shorter, thin, and
    # their bulge is modest and red rather than a dominant round core.
    x0, y0 = _centre(cv.size, rng)
    pa = rng.uniform(0, math.pi)
    h = (log_uniform(rng, 20.0, 50.0) if not bulge else log_uniform(rng, 15.0, 28.0)) * s
    z = h * rng.uniform(0.1, 0.26) if not bulge else h * rng.uniform(0.14, 0.3)
    u, v = _rotated(cv.size, x0, y0, pa)
    r = np.sqrt(u * u + np.float32(1.0))
    # flatter than exponential along the disk: the real edge-ons' light is less centrally concentrated
    disk = np.exp(-(r / np.float32(h)) ** np.float32(rng.uniform(1.0, 1.8))) / np.cosh(np.minimum(np.abs(v) / np.float32(z + 0.8), 30)) ** 2
    disk *= _texture(cv.size, rng, rng.uniform(0.1, 0.4))
    amp = log_uniform(rng, 120, 450) * (0.6 if bulge else 1.0)
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
    h = log_uniform(rng, 11.0, 26.0) * s
    amp = log_uniform(rng, 35, 120)
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
    sep = log_uniform(rng, 10.0, 48.0) * s
    ang = rng.uniform(0, 2 * math.pi)
    ratio = rng.uniform(0.3, 1.0)
    dx, dy = 0.5 * sep * math.cos(ang), 0.5 * sep * math.sin(ang)
    amp = log_uniform(rng, 100, 350)
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
    h = log_uniform(rng, 5.0, 12.0) * s
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
    amp = log_uniform(rng, 70, 250)
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


def blob(flux, cx, cy, amp, w_major, w_minor, angle, colour):
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
