"""Images that are not galaxy cutouts, to measure the out-of-distribution flag on (training.ood).

    families = generated(rng, n_per_family=8)       # {family: [HxWx3 uint8, ...]}
    photos = photographs()                          # {name: HxWx3 uint8}: for testing only

Generated: uniform colours, Gaussian and salt-and-pepper noise, gradients, checkerboards, stripes,
noise with a photograph's 1/f spectrum, scenes of flat shapes, a satellite trail across the sky,
sky-only cutouts (the synthetic sky and field with no galaxy) and a single bright point source on
that sky. Photographs: the sample images that installed packages ship (matplotlib's sample data,
scikit-image's data folder), centre-cropped square; they are never used to fit anything.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from simulation.synthetic import render_galaxy

SIZE = 256


def _uniform(rng):
    return np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (SIZE, SIZE, 3)).copy()


def _gaussian(rng):
    return np.clip(rng.normal(rng.uniform(10, 200), rng.uniform(3, 60), (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _salt_and_pepper(rng):
    img = np.full((SIZE, SIZE, 3), rng.integers(0, 256), np.uint8)
    u = rng.random((SIZE, SIZE))
    share = rng.uniform(0.02, 0.3)
    img[u < share / 2] = 0
    img[u > 1 - share / 2] = 255
    return img


def _gradient(rng):
    y, x = np.mgrid[:SIZE, :SIZE] / (SIZE - 1)
    kind = rng.integers(3)
    t = x if kind == 0 else (y if kind == 1 else np.hypot(x - 0.5, y - 0.5) / 0.71)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return (a + (b - a) * t[..., None]).clip(0, 255).astype(np.uint8)


def _checkerboard(rng):
    cell = int(rng.choice([4, 8, 16, 32, 64]))
    y, x = np.mgrid[:SIZE, :SIZE] // cell
    on = ((x + y) % 2).astype(bool)
    lo, hi = rng.integers(0, 100, 3), rng.integers(155, 256, 3)
    return np.where(on[..., None], hi, lo).astype(np.uint8)


def _stripes(rng):
    period = rng.uniform(4, 48)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[:SIZE, :SIZE]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    return (wave[..., None] * rng.integers(100, 256, 3)).astype(np.uint8)


def _pink_noise(rng):
    """Noise with a natural image's 1/f amplitude spectrum, in colour: the statistics of photographs."""
    fy, fx = np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE), indexing="ij")
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / SIZE) ** rng.uniform(0.8, 1.2)
    planes = [np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((SIZE, SIZE)))).real for _ in range(3)]
    img = np.stack(planes, -1)
    img = (img - img.min()) / (np.ptp(img) or 1.0)
    return (255 * img).astype(np.uint8)


def _shapes(rng):
    """A scene of flat-coloured rectangles and discs on a coloured ground."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    y, x = np.mgrid[:SIZE, :SIZE]
    for _ in range(rng.integers(2, 9)):
        cx, cy, r = rng.uniform(0, SIZE, 2).tolist() + [rng.uniform(10, 80)]
        mask = (np.hypot(x - cx, y - cy) < r) if rng.random() < 0.5 else \
            ((np.abs(x - cx) < r) & (np.abs(y - cy) < rng.uniform(10, 80)))
        img[mask] = rng.integers(0, 256, 3)
    return img


def _satellite_trail(rng):
    """The synthetic sky crossed by a bright straight streak, one of Galaxy Zoo's artifacts."""
    img = render_galaxy(None, rng, SIZE).astype(np.float32)
    y, x = np.mgrid[:SIZE, :SIZE]
    angle, offset = rng.uniform(0, np.pi), rng.uniform(-20, 20)
    d = np.abs((x - SIZE / 2) * np.sin(angle) - (y - SIZE / 2) * np.cos(angle) - offset)
    img += rng.uniform(80, 220) * np.exp(-0.5 * (d / rng.uniform(0.8, 2.5)) ** 2)[..., None]
    return img.clip(0, 255).astype(np.uint8)


def _sky_only(rng):
    return render_galaxy(None, rng, SIZE)


def _point_source(rng):
    return render_galaxy(None, rng, SIZE, star=float(np.exp(rng.uniform(np.log(200), np.log(3000)))))


FAMILIES = {"uniform colour": _uniform, "Gaussian noise": _gaussian, "salt-and-pepper noise": _salt_and_pepper,
            "gradient": _gradient, "checkerboard": _checkerboard, "stripes": _stripes,
            "1/f noise": _pink_noise, "shapes": _shapes, "satellite trail": _satellite_trail,
            "sky only (no source)": _sky_only, "single point source": _point_source}


def generated(rng: np.random.Generator, n_per_family: int = 8) -> dict[str, list[np.ndarray]]:
    return {name: [make(rng) for _ in range(n_per_family)] for name, make in FAMILIES.items()}


def _package_dir(package: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    return path if path.is_dir() else None


def photographs() -> dict[str, np.ndarray]:
    """Every JPEG/PNG photograph of matplotlib's sample data and scikit-image's data folder, as RGB,
    centre-cropped square and resized to SIZE (charts, logos and masks under 64 px are skipped)."""
    folders = [_package_dir("matplotlib", "mpl-data/sample_data"), _package_dir("skimage", "data")]
    out = {}
    for folder in filter(None, folders):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                if min(w, h) < 64:
                    continue
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                out[f"{folder.parent.name}/{path.name}"] = np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR))
    return out
