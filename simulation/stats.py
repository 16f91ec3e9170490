"""Measured statistics of the central galaxy, real samples against synthetic ones, per class.

    python -m simulation.stats [--samples samples/galaxy10_decals] [--per-class 30] [--seed 99]

The same measurement on both sides: sky level, noise and colour at the border; the central
source above 3 sigma (log10 area, second-moment axis ratio, colour, peak, how white its 30 brightest pixels are
(their faintest over their brightest colour plane: saturated cores clip to white), the share of its light
inside 0.3 of its radius, Conselice's asymmetry and clumpiness); the median light 40-70 px from the centre in units of the noise (faint
envelopes and tidal light below the 3 sigma cut); how many other sources are detected. Prints the median and 16-84 %
range of each per class, then the gap of each synthetic median from the real one in units of the
real half-range (|gap| under ~0.8 is within what 10 real galaxies a class can resolve) and the mean
|gap| per class and overall. This is how the generator (simulation.synthetic) is matched to real
galaxies: by these numbers, not by a classifier's score on the samples.
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image
from scipy import ndimage

from simulation.synthetic import NUM_CLASSES, render_galaxy
from survey.samples import SAMPLES_DIR as SAMPLES, sample_files

KEYS = ("sky", "noise", "sky_r_minus_b", "log_area", "axis_ratio", "log_r_over_b", "log_g_over_b",
        "peak", "core_white", "concentration", "asymmetry", "clumpiness", "outskirts", "sources")


def central_source_stats(img: np.ndarray) -> dict | None:
    """Statistics of the source at the centre of an HxWx3 uint8 cutout; None when there is none."""
    a = np.asarray(img, np.float32)
    lum = a.mean(2)
    edge = np.concatenate([lum[:16].ravel(), lum[-16:].ravel(), lum[:, :16].ravel(), lum[:, -16:].ravel()])
    sky = float(np.median(edge))
    noise = float(1.4826 * np.median(np.abs(edge - sky)))
    sky_rgb = np.median(np.concatenate([a[:16].reshape(-1, 3), a[-16:].reshape(-1, 3)]), 0)
    labels, n = ndimage.label(ndimage.binary_opening(lum > sky + max(3 * noise, 6)))
    c = lum.shape[0] // 2
    ids = labels[c - 6:c + 6, c - 6:c + 6]
    ids = ids[ids > 0]
    if ids.size == 0:
        return None
    mask = labels == np.bincount(ids).argmax()
    yy, xx = np.nonzero(mask)
    w = lum[mask] - sky
    cy, cx = np.average(yy, weights=w), np.average(xx, weights=w)
    ev = np.sort(np.linalg.eigvalsh(np.cov(np.vstack([xx - cx, yy - cy]), aweights=w)))
    rgb = (a[mask] - sky_rgb).clip(0).sum(0)
    r = np.hypot(xx - cx, yy - cy)
    core = a[mask][np.argsort(lum[mask])[-30:]].mean(0)
    asymmetry, clumpiness = cas_asymmetry_clumpiness(lum - sky, cy, cx, np.sqrt(mask.sum() / np.pi), noise)
    from_centre = np.hypot(*(np.indices(lum.shape) - c)) * 256 / lum.shape[0]
    ring = (from_centre > 40) & (from_centre < 70)
    return {"sky": sky, "noise": noise, "sky_r_minus_b": float(sky_rgb[0] - sky_rgb[2]),
            "log_area": float(np.log10(mask.sum())), "axis_ratio": float(np.sqrt(ev[0] / ev[1])),
            "log_r_over_b": float(np.log(rgb[0] / max(rgb[2], 1))),
            "log_g_over_b": float(np.log(rgb[1] / max(rgb[2], 1))),
            "peak": float(lum[mask].max()), "core_white": float(core.min() / max(core.max(), 1)),
            "concentration": float(w[r < 0.3 * r.max()].sum() / w.sum()),
            "asymmetry": asymmetry, "clumpiness": clumpiness,
            "outskirts": float((np.median(lum[ring]) - sky) / max(noise, 1e-6)),
            "sources": n - 1}


def cas_asymmetry_clumpiness(light, cy, cx, radius, noise) -> tuple[float, float]:
    """Conselice's (2003) asymmetry and clumpiness of sky-subtracted `light` within 1.5 `radius` of
    (cy, cx): the light unlike itself turned by 180 degrees (noise's own share taken off), and the
    light above a copy smoothed by 0.25 `radius`, outside the core, over the total."""
    n = light.shape[0]
    centred = ndimage.shift(light, ((n - 1) / 2 - cy, (n - 1) / 2 - cx), order=1, mode="nearest")
    r = np.hypot(*(np.indices(light.shape) - (n - 1) / 2))
    aperture = r < 1.5 * radius
    total = np.abs(centred[aperture]).sum()
    # Two independent noises differ by 2/sqrt(pi) sigma on average.
    noise_share = aperture.sum() * 2 / np.sqrt(np.pi) * noise
    asym = (np.abs(centred - centred[::-1, ::-1])[aperture].sum() - noise_share) / (2 * total)
    residual = centred - ndimage.gaussian_filter(centred, 0.25 * radius)
    clumps = residual[aperture & (r > 0.25 * radius)].clip(0).sum() / total
    return float(asym), float(clumps)


def summary(rows: list) -> dict:
    """{key: (median, 16th, 84th percentile)} over the rows that found a source."""
    rows = [r for r in rows if r]
    return {k: tuple(float(np.percentile([r[k] for r in rows], q)) for q in (50, 16, 84)) for k in KEYS}


def gaps(real: dict, synth: dict) -> dict:
    """{class: {key: (synthetic median - real median) / real half 16-84 % range}}."""
    return {c: {k: (synth[c][k][0] - real[c][k][0]) / max((real[c][k][2] - real[c][k][1]) / 2, 1e-6)
                for k in KEYS} for c in real}


def real_stats(folder) -> dict:
    by_class = {c: [] for c in range(NUM_CLASSES)}
    for path, label in sample_files(folder):
        with Image.open(path) as im:
            by_class[label].append(central_source_stats(np.asarray(im.convert("RGB"))))
    return {c: summary(rows) for c, rows in by_class.items() if rows}


def synthetic_stats(per_class: int, seed: int) -> dict:
    return {c: summary([central_source_stats(render_galaxy(c, np.random.default_rng([seed, c, i])))
                        for i in range(per_class)]) for c in range(NUM_CLASSES)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", default=str(SAMPLES), help="folder of class_<label>_<k>.jpg cutouts")
    p.add_argument("--per-class", type=int, default=30, help="synthetic galaxies per class")
    p.add_argument("--seed", type=int, default=99)
    args = p.parse_args(argv)
    real = real_stats(args.samples)
    if not real:
        p.error(f"no class_<label>_<k>.jpg images in {args.samples}")
    synth = synthetic_stats(args.per_class, args.seed)
    print("median [16-84 %] per class; r: real samples, s: synthetic")
    print("class " + " ".join(f"{k[:14]:>20}" for k in KEYS))
    for c in sorted(real):
        for tag, stats in (("r", real[c]), ("s", synth[c])):
            print(f"{c:>3} {tag} " + " ".join(f"{m:7.2f} [{lo:5.2f} {hi:5.2f}]"[:20].rjust(20)
                                            for m, lo, hi in (stats[k] for k in KEYS)))
    print("\ngap: (synthetic - real median) / real half-range")
    print("class " + " ".join(f"{k[:9]:>9}" for k in KEYS) + "  mean|gap|")
    table = gaps(real, synth)
    means = {c: float(np.mean(np.abs(list(g.values())))) for c, g in table.items()}
    for c, g in table.items():
        print(f"{c:>5} " + " ".join(f"{g[k]:9.2f}" for k in KEYS) + f"  {means[c]:9.2f}")
    print(f"mean |gap| over classes: {np.mean(list(means.values())):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
