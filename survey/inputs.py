"""Inputs to classify, streamed: a folder of cutouts, a Galaxy10-schema HDF5 file, or a table of
sky positions whose cutouts are downloaded. The HTTP bulk path (torchserve_ops.bulk) and the Ray path
(prediction.inputs) read them alike.

    items, total = open_input("samples/galaxy10_decals")     # lazy Items (id, load() -> bytes)
    items, total = open_input("positions.csv", fetcher=CutoutFetcher(CutoutParams()))

Ids: a file's path relative to the folder, an HDF5 row's index, a table's `id` column (else its row
index). Unusable inputs raise InputError with the reason.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from galaxy_morph.data import DataError, images_shape
from survey.cutouts import position_loaders
from survey.positions import PositionsError, read_positions, table_format

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".fits", ".fit")  # FITS: g, r, z cutouts
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class InputError(ValueError):
    """The input cannot be classified; the message says why."""


@dataclass
class Item:
    id: str
    load: Callable[[], bytes]  # called in a worker thread: reading/encoding happens in parallel


def iter_folder(folder: Path, skip: set | frozenset = frozenset()) -> Iterator[Item]:
    """Image files under `folder`, depth first in sorted order, streamed one directory at a time."""
    folder = Path(folder)

    def walk(d: Path, rel: str):
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                yield from walk(Path(e.path), r + "/")
            elif e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                if r not in skip:
                    path = e.path
                    yield Item(r, lambda p=path: Path(p).read_bytes())

    yield from walk(folder, "")


def count_folder(folder: Path) -> int:
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(1 for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return n


def encode_png(array) -> bytes:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def iter_h5(path: Path, skip: set | frozenset = frozenset(), chunk: int = 64) -> Iterator[Item]:
    """Rows of the `images` dataset as PNG; read `chunk` rows at a time, encoded lazily."""
    import h5py

    with h5py.File(path, "r") as f:
        images = f["images"]
        n = images.shape[0]
        for start in range(0, n, chunk):
            ids = [str(i) for i in range(start, min(n, start + chunk))]
            if all(i in skip for i in ids):
                continue
            block = images[start:start + len(ids)]
            for k, i in enumerate(ids):
                if i not in skip:
                    yield Item(i, lambda a=block[k].copy(): encode_png(a))
            del block


def h5_size(path: Path) -> int:
    try:
        return images_shape(path)[0]
    except DataError as e:
        raise InputError(str(e)) from None


def open_input(path: str | os.PathLike, skip=frozenset(), fetcher=None,
               columns: dict | None = None) -> tuple[Iterator[Item], int]:
    """(lazy items, total count) for a folder, an HDF5 file or a table of sky positions (whose
    cutouts `fetcher`, a survey.cutouts.CutoutFetcher, downloads); InputError if unusable."""
    if not str(path).strip():
        raise InputError("no input given: --input FOLDER_OR_H5 (make classify INPUT=...)")
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path!s} (give a folder of JPEG, PNG or FITS cutouts, an HDF5 file, or a table of sky positions)")
    if table_format(path) and path.is_file():
        return position_items(path, skip, fetcher, columns or {})
    if path.is_dir():
        total = count_folder(path)
        if total == 0:
            raise InputError(f"no JPEG, PNG or FITS images under {path}")
        return iter_folder(path, skip), total
    if path.suffix.lower() in H5_SUFFIXES:
        return iter_h5(path, skip), h5_size(path)
    raise InputError(f"{path}: expected a folder of images, an .h5/.hdf5 file or a table of positions "
                    f"(.csv, .fits, .vot, .ecsv)")


def position_items(path: Path, skip, fetcher, columns: dict) -> tuple[Iterator[Item], int]:
    """Rows of a positions table; each item's load() fetches its cutout, or raises an OSError whose
    message (outside the footprint, download failed, no position) becomes the row's error."""
    try:
        positions = read_positions(path, **columns)
    except PositionsError as e:
        raise InputError(str(e)) from None
    return (Item(i, load) for i, load in position_loaders(positions, fetcher, skip)), len(positions)
