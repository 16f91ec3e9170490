"""Inputs of offline classification, cut into shards: the unit of work and of resuming.

    shards = plan_shards("samples/galaxy10_decals")          # or data/survey.h5, or a Parquet folder
    rows = read_shard(shards[0])                              # {"pos", "id", "image" or "pixels"}

- a folder of JPEG/PNG images (any depth): id = path relative to the folder, `shard_size` files a
  shard, in sorted order (the bulk classifier's ids and order);
- a Galaxy10-schema HDF5 file: id = row index, `shard_size` rows a shard, pixels passed as arrays;
- Parquet: one file or a folder of `*.parquet` shards with an `image` column of JPEG/PNG bytes and
  an optional `id` column (default "FILE:ROW"); each file is one shard.

A shard's `key` names its part file, so a re-run skips the shards whose part is already written.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from survey.inputs import H5_SUFFIXES, InputError, h5_size, iter_folder

PARQUET_SUFFIX = ".parquet"
DEFAULT_SHARD_SIZE = 1024


@dataclass
class Shard:
    index: int
    kind: str  # "folder" | "h5" | "parquet"
    source: str  # the folder, the HDF5 file or the Parquet file
    n: int  # rows in this shard
    start: int = 0  # h5: first row
    files: list = field(default_factory=list)  # folder: paths relative to `source`

    @property
    def key(self) -> str:
        return f"shard-{self.index:06d}"

    def to_dict(self) -> dict:
        return asdict(self)


def list_images(folder: Path) -> list[str]:
    """Image files under `folder` as relative paths, in the bulk classifier's order (its ids)."""
    return [item.id for item in iter_folder(Path(folder))]




def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        n = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path} is not a readable Parquet file ({e})") from None
    if "image" not in schema.names:
        raise InputError(f"{path}: no 'image' column of JPEG/PNG bytes (columns: {', '.join(schema.names)})")
    return int(n)


def plan_shards(path: str | os.PathLike, shard_size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """The shards of an input, in input order; raise InputError for anything unusable."""
    if not str(path).strip():
        raise InputError("no input given: --input FOLDER, FILE.h5 or Parquet (make predict INPUT=...)")
    if shard_size < 1:
        raise InputError(f"shard size must be at least 1, got {shard_size}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path} (give a folder of JPEG/PNG images, an HDF5 file "
                         f"or Parquet shards)")
    if path.is_file() and path.suffix.lower() in H5_SUFFIXES:
        n = h5_size(path)
        if n == 0:
            raise InputError(f"{path}: 'images' has no rows")
        return [Shard(i, "h5", str(path), min(shard_size, n - s), start=s)
                for i, s in enumerate(range(0, n, shard_size))]
    if path.is_file() and path.suffix.lower() == PARQUET_SUFFIX:
        return [Shard(0, "parquet", str(path), _parquet_rows(path))]
    if path.is_dir():
        parquet = sorted(p for p in path.rglob(f"*{PARQUET_SUFFIX}") if p.is_file())
        if parquet:
            return [Shard(i, "parquet", str(p), _parquet_rows(p)) for i, p in enumerate(parquet)]
        files = list_images(path)
        if not files:
            raise InputError(f"no JPEG/PNG images and no .parquet files under {path}")
        return [Shard(i, "folder", str(path), len(files[s:s + shard_size]), files=files[s:s + shard_size])
                for i, s in enumerate(range(0, len(files), shard_size))]
    raise InputError(f"{path}: expected a folder of images, an .h5/.hdf5 file or .parquet shards")


def read_shard(shard: Shard | dict) -> list[dict]:
    """The rows of one shard: {"pos", "id", "image": bytes} or {"pos", "id", "pixels": HxWxC uint8}.

    A file that cannot be read gets empty bytes: the classifier records it as an error row."""
    s = shard if isinstance(shard, Shard) else Shard(**shard)
    if s.kind == "folder":
        rows = []
        for pos, rel in enumerate(s.files):
            try:
                data = (Path(s.source) / rel).read_bytes()
            except OSError:
                data = b""
            rows.append({"pos": pos, "id": rel, "image": data})
        return rows
    if s.kind == "h5":
        import h5py

        with h5py.File(s.source, "r") as f:
            block = f["images"][s.start:s.start + s.n]
        return [{"pos": k, "id": str(s.start + k), "pixels": block[k]} for k in range(len(block))]
    if s.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(s.source, columns=None)
        images = table.column("image").to_pylist()
        ids = (table.column("id").to_pylist() if "id" in table.column_names
               else [f"{Path(s.source).name}:{k}" for k in range(len(images))])
        return [{"pos": k, "id": str(i), "image": bytes(b or b"")} for k, (i, b) in enumerate(zip(ids, images))]
    raise InputError(f"unknown shard kind {s.kind!r}")
