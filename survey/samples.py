"""The real Galaxy10 DECaLS sample cutouts shipped with the repository, and their labels.

    from survey.samples import sample_files
    for path, label in sample_files():      # samples/galaxy10_decals/class_<label>_<k>.jpg
        ...

The label is in the file name (see samples/galaxy10_decals/README.md); any folder laid out the same
way (other real cutouts) can be given instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples" / "galaxy10_decals"
SAMPLE_NAME = re.compile(r"class_(\d+)_(\d+)\.(jpe?g|png)$", re.I)  # class_<label>_<k>


def sample_label(name: str) -> tuple[int, int] | None:
    """(label, k) for a sample's file name, None for any other file."""
    m = SAMPLE_NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def sample_files(folder: str | os.PathLike = SAMPLES_DIR) -> list[tuple[Path, int]]:
    """(path, label) of every sample in `folder`, sorted by file name."""
    out = []
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        found = sample_label(p.name)
        if found is not None and p.is_file():
            out.append((p, found[0]))
    return out
