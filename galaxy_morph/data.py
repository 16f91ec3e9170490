"""Galaxy10-schema HDF5: validation, a DataLoader-safe dataset, and the stratified, position-grouped split.

Schema: `images` (N, S, S, 3) uint8 and `ans` (N,) integer class index are required; `ra`, `dec`
(positions, used to keep repeated sky positions in one split), `redshift`, `pxscale` are optional.
An optional `class_names` attribute (a JSON list or an array of strings) names the classes of
another catalogue; without it the ten Galaxy10 DECaLS classes are assumed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from galaxy_morph.specs import GALAXY10_CLASSES

SPLITS = ("train", "val", "test")
# The `source` attribute of the files simulation.synthetic writes; checkpoints record it, so the
# value stays what it was when the generator lived in this package.
SYNTHETIC_SOURCE = "galaxy_morph.synthetic"


class DataError(ValueError):
    """The data file cannot be used; the message says why."""


def class_names_of(f: h5py.File) -> list[str]:
    raw = f.attrs.get("class_names")
    if raw is None:
        return list(GALAXY10_CLASSES)
    if isinstance(raw, (bytes, str)):
        raw = json.loads(raw)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    if len(names) < 2:
        raise DataError("class_names attribute must name at least 2 classes")
    return names


def images_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of the file's `images` dataset, (N, H, W, C) uint8 with C 1, 3 or 4; DataError
    when the file cannot be read or holds no such dataset. Readers of images only (classifying a
    survey file) need no more than this; training needs `inspect_h5`."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        if "images" not in f:
            raise DataError(f"{path}: missing dataset 'images' (have: {', '.join(f.keys()) or 'none'})")
        shape, dtype = f["images"].shape, f["images"].dtype
    if len(shape) != 4 or shape[3] not in (1, 3, 4):
        raise DataError(f"{path}: 'images' must be (N, S, S, 3), got {shape}")
    if dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8, got {dtype}")
    return tuple(int(d) for d in shape)


def inspect_h5(path: str | os.PathLike) -> dict:
    """Validate the schema and return {n, size, class_names, labels, ra, dec}; raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    shape = images_shape(path)
    if shape[3] != 3 or shape[1] != shape[2]:
        raise DataError(f"{path}: 'images' must be (N, S, S, 3), got {shape}")
    with h5py.File(path, "r") as f:
        if "ans" not in f:
            raise DataError(f"{path}: missing dataset 'ans' (have: {', '.join(f.keys()) or 'none'})")
        images, ans = f["images"], f["ans"]
        if ans.shape != (images.shape[0],):
            raise DataError(f"{path}: 'ans' must be ({images.shape[0]},), got {ans.shape}")
        if not np.issubdtype(ans.dtype, np.integer):
            raise DataError(f"{path}: 'ans' must hold integer class indices, got {ans.dtype}")
        names = class_names_of(f)
        labels = ans[:].astype(np.int64)
        bad = labels[(labels < 0) | (labels >= len(names))]
        if bad.size:
            raise DataError(f"{path}: labels out of range 0..{len(names) - 1}: "
                            f"{sorted(set(bad.tolist()))[:10]}")
        ra = f["ra"][:].astype(np.float64) if "ra" in f else None
        dec = f["dec"][:].astype(np.float64) if "dec" in f else None
        return {"n": int(images.shape[0]), "size": int(images.shape[1]), "class_names": names,
                "labels": labels, "ra": ra, "dec": dec}


def create_h5(path: str | os.PathLike, labels, size: int, *, images=None, ra=None, dec=None,
              redshift=None, pxscale=None, class_names=None, **attrs) -> h5py.File:
    """The one writer of the schema: an open file with `ans` and the optional columns written and
    `images` (N, size, size, 3) uint8 either filled from `images` or allocated for the caller to
    fill row by row (chunked one image a row). Use as a context manager."""
    labels = np.asarray(labels)
    n = len(labels)
    f = h5py.File(path, "w")
    try:
        if images is None:
            f.create_dataset("images", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3))
        else:
            images = np.asarray(images, np.uint8)
            if images.shape != (n, size, size, 3):
                raise DataError(f"images must be ({n}, {size}, {size}, 3), got {images.shape}")
            f.create_dataset("images", data=images, chunks=(1, size, size, 3))
        f.create_dataset("ans", data=labels.astype(np.uint8))  # as Galaxy10 DECaLS stores it
        for key, column, dtype in (("ra", ra, np.float64), ("dec", dec, np.float64),
                                   ("redshift", redshift, np.float32), ("pxscale", pxscale, np.float32)):
            if column is not None:
                f.create_dataset(key, data=np.asarray(column, dtype))
        if class_names is not None:
            f.attrs["class_names"] = json.dumps(list(class_names))
        for key, value in attrs.items():
            f.attrs[key] = value
    except BaseException:
        f.close()
        raise
    return f


class GalaxyH5Dataset:
    """Rows `indices` of a Galaxy10-schema file as (tensor, label) pairs: a map-style dataset for
    torch's DataLoader, which needs only __len__ and __getitem__. It does not subclass
    torch.utils.data.Dataset so that this module, which survey I/O and the HTTP clients import for
    the schema helpers above, loads neither torch nor torchvision.

    The HDF5 handle is opened lazily in each process: h5py handles must not cross a fork, so a
    DataLoader worker opens its own on first use.
    """

    def __init__(self, path, indices=None, transform=None):
        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            self.labels = f["ans"][:].astype(np.int64)
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices)
        self.transform = transform
        self._file = None

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        from galaxy_morph.transforms import to_pil

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        row = int(self.indices[i])
        image = to_pil(self._file["images"][row])
        x = self.transform(image) if self.transform else image
        return x, int(self.labels[row])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_split(labels, ra=None, dec=None, seed: int = 42,
               fractions=(0.8, 0.1, 0.1), class_names=None) -> dict[str, np.ndarray]:
    """Stratified train/val/test row indices; rows at the same (ra, dec) land in the same split.

    Galaxy10 DECaLS has ~59 positions listed twice with different labels: splitting them apart
    would leak test images into training. Each group is stratified by its first row's label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if ra is not None and dec is not None:
        # Positions rounded to ~0.36 arcsec identify the same galaxy.
        keys = np.round(np.stack([ra, dec], 1), 4)
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.ravel()
    else:
        group = np.arange(n)
    order = np.argsort(group, kind="stable")
    first_rows = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    group_label = {int(group[r]): int(labels[r]) for r in first_rows}

    rng = np.random.default_rng(seed)
    assign = {}
    for c in sorted(set(group_label.values())):
        gs = np.array(sorted(g for g, l in group_label.items() if l == c))
        if len(gs) < 3:
            name = class_names[c] if class_names else c
            raise DataError(f"class {name!r} has only {len(gs)} distinct galaxies: "
                            f"at least 3 are needed to stratify into train/val/test")
        rng.shuffle(gs)
        n_val = max(1, int(round(fractions[1] * len(gs))))
        n_test = max(1, int(round(fractions[2] * len(gs))))
        for g in gs[:n_test]:
            assign[int(g)] = "test"
        for g in gs[n_test:n_test + n_val]:
            assign[int(g)] = "val"
        for g in gs[n_test + n_val:]:
            assign[int(g)] = "train"
    where = np.array([assign[int(g)] for g in group])
    return {s: np.flatnonzero(where == s) for s in SPLITS}


def save_split(path: str | os.PathLike, split: dict, **meta) -> None:
    payload = {**meta, **{s: np.asarray(split[s]).tolist() for s in SPLITS}}
    Path(path).write_text(json.dumps(payload))


def load_split(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    payload = json.loads(Path(path).read_text())
    split = {s: np.asarray(payload.pop(s), dtype=np.int64) for s in SPLITS}
    return split, payload
