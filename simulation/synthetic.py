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
from galaxy_morph.files import atomic_path
from galaxy_morph.legacy_rgb import sdss_rgb, to_uint8
from galaxy_morph.specs import GALAXY10_CLASSES
from simulation.galaxies import ARM_RGB, BULGE_RGB, DISK_RGB, RENDERERS, Canvas, blob, frame_scale, log_uniform

NUM_CLASSES = len(GALAXY10_CLASSES)
PXSCALE = 0.262  # arcsec per pixel, as in DECaLS
DEFAULT_N = 6000
CHUNK = 256
DUPLICATE_FRACTION = 0.003


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


STAR_COLOURS = np.array([
    [1.0, 0.55, 0.3],   # red dwarfs and distant red galaxies: the most common field objects
    [1.0, 0.7, 0.45],
    [1.0, 0.9, 0.7],
    [0.55, 0.8, 1.2],
], np.float32)


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
        blob(flux, cx, cy, amp, psf, psf, 0.0, colour)
    for _ in range(int(rng.poisson(14 * density * s * s))):  # small, mostly red, background galaxies
        cx, cy = position(8)
        re = rng.uniform(0.5, 3.0) * s
        w = math.sqrt(re * re + psf * psf)
        q = rng.uniform(0.3, 1.0)
        colour = STAR_COLOURS[rng.choice(4, p=[0.4, 0.35, 0.15, 0.1])] * (1 + rng.normal(0, 0.1, 3))
        blob(flux, cx, cy, math.exp(rng.uniform(math.log(2), math.log(30))), w,
             max(w * q, psf), rng.uniform(0, math.pi), colour)
    for _ in range(int(rng.poisson(0.6))):  # neighbour galaxies, as common around every class
        cx, cy = position(22)
        w = rng.uniform(2.5, 7.0) * s
        colour = [BULGE_RGB, DISK_RGB, ARM_RGB][rng.integers(3)] * (1 + rng.normal(0, 0.08, 3))
        blob(flux, cx, cy, math.exp(rng.uniform(math.log(20), math.log(200))), w,
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


def render_galaxy(cls: int | None, rng: np.random.Generator, size: int = 256, jpeg_quality=None,
                  star: float | None = None) -> np.ndarray:
    """One synthetic galaxy of Galaxy10 class index `cls` as a (size, size, 3) uint8 array.

    The JPEG quality is drawn from JPEG_QUALITY_RANGE unless `jpeg_quality` fixes it. `cls` None
    renders the sky and field alone (a cutout with no galaxy), `star` a point source of that peak
    flux (in sky sigmas) at the centre instead of a galaxy: the non-galaxy images of simulation.outliers.
    """
    if cls is not None and cls not in RENDERERS:
        raise ValueError(f"class index must be 0..{NUM_CLASSES - 1}, got {cls}")
    s = frame_scale(size)
    cv = Canvas(size)
    # Domain randomisation around the measured medians: galaxy scale, seeing, crowding, sky noise
    # (the real samples' sky noise spans 6-12 of 255, median 10), sky level and JPEG quality.
    galaxy_scale = s * log_uniform(rng, 0.85, 1.2)
    if cls is not None:
        RENDERERS[cls](cv, rng, galaxy_scale)
    psf = rng.uniform(1.3, 2.8) * s
    flux = _blur(cv.flux(), psf)
    if star is not None:
        c = (size - 1) / 2.0
        blob(flux, c, c, star, psf, psf, 0.0, STAR_COLOURS[rng.integers(len(STAR_COLOURS))])
    _field(flux, rng, s, psf, density=log_uniform(rng, 0.35, 1.3))
    flux += _noise(rng, size) * np.float32(log_uniform(rng, 0.8, 1.45))
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
    rng = np.random.default_rng([seed, 0x6A1A])
    labels = _labels(n, rng, class_weights)
    ra, dec = _positions(n, rng)
    redshift = rng.gamma(4.0, 0.025, n)
    redshift[rng.random(n) < 0.05] = np.nan
    with atomic_path(path) as tmp:  # nothing half-written under either name
        _write(tmp, labels, ra, dec, redshift, seed, size, chunk, progress, workers)
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
