"""Files written whole or not at all, and the one "is it up to date?" check.

    atomic_write_text(path, text)          # a reader sees the old file or the new one, never half
    atomic_write_json(path, obj, indent=1)
    with atomic_path(path) as tmp: torch.save(state, tmp)   # for writers that want a path

    digest = inputs_digest(Path("checkpoints/demo/b0"), Path("galaxy_morph"), {"device": "cpu"})
    if not is_current(out / ".inputs", digest):
        build(out); mark_current(out / ".inputs", digest)
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary path in the target's folder, renamed onto `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)  # mkstemp makes the file 0600: give it the mode a plain open() would
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1, default=None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


# --- "is it up to date?": a digest of what an output was made from ------------------------------

def inputs_digest(*inputs) -> str:
    """sha256 (first 16 hex digits) of the declared inputs of an output: files by content, folders
    by the relative names and contents of every file under them (skipping __pycache__ and hidden
    names), and anything else (options, versions) by its JSON. A missing path counts as missing."""
    import hashlib

    h = hashlib.sha256()
    for item in inputs:
        if isinstance(item, os.PathLike):  # a path (a str is a value: pass Path(...) for a file)
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                               and not any(part.startswith(".") for part in p.relative_to(path).parts))
                h.update(b"dir\0")
                for p in files:
                    h.update(p.relative_to(path).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
            elif path.is_file():
                h.update(b"file\0" + path.read_bytes() + b"\0")
            else:
                h.update(b"missing\0" + str(path).encode() + b"\0")
        else:
            h.update(b"value\0" + json.dumps(item, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()[:16]


def is_current(stamp: str | os.PathLike, digest: str) -> bool:
    """True when `stamp` (written by mark_current beside an output) holds this digest."""
    try:
        return Path(stamp).read_text().strip() == digest
    except OSError:
        return False


def mark_current(stamp: str | os.PathLike, digest: str) -> Path:
    """Record that the output beside `stamp` was made from inputs with this digest (after it is whole)."""
    return atomic_write_text(stamp, digest + "\n")
