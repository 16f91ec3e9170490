"""A checkpoint folder's description, read without torch: spec, class names, eval transform,
version, temperatures and where they were fitted.

    ckpt = read_checkpoint("checkpoints/demo/b0")    # .spec .transform .class_names .meta, .model None
    ckpt = galaxy_morph.models.load_checkpoint(...)  # the same with the torch model built and loaded

A worker answering on ONNX Runtime needs only this: torch is imported where the torch model is
(galaxy_morph.models).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from galaxy_morph.answers import DEFAULT_VERSION
from galaxy_morph.calibration import provenance, read_calibration, served_entry, temperature_of
from galaxy_morph.preprocess import eval_transform
from galaxy_morph.run_files import WEIGHTS_FILE, read_meta
from galaxy_morph.specs import ModelSpec

# data.SYNTHETIC_SOURCE (the generator's files) and its older name; data.py is not imported for it
SYNTHETIC_SOURCES = ("galaxy_morph.synthetic", "simulation.synthetic")


@dataclass
class Checkpoint:
    """A loaded checkpoint: everything a caller needs to answer with it, parsed once."""
    model: Any  # the torch model, eval mode; None when read without it
    spec: ModelSpec
    transform: Callable  # PIL image -> normalised tensor (.array: numpy), from the spec
    class_names: list[str]
    meta: dict
    calibration: dict  # calibration.json beside the weights ({} when not calibrated)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", DEFAULT_VERSION))

    def temperature(self, tta: bool = False) -> float:
        """The fitted temperature for this answering mode, 1.0 when there is none."""
        return temperature_of(self.calibration, tta) or 1.0

    def calibrated(self, tta: bool = False) -> bool:
        return temperature_of(self.calibration, tta) is not None

    def calibration_info(self, tta: bool = False) -> dict | None:
        """{"on", "n", "temperature"} of the fit this mode answers with (None: not calibrated)."""
        return provenance(served_entry(self.calibration, tta), synthetic_data(self.meta))


def synthetic_data(meta: dict) -> bool:
    """Whether the checkpoint's training data was the project's synthetic galaxies."""
    data = meta.get("data") or {}
    return data.get("source") in SYNTHETIC_SOURCES or "synthetic" in Path(str(data.get("path") or "")).name


def read_checkpoint(ckpt_dir: str | os.PathLike) -> Checkpoint:
    """Everything of a checkpoint folder but the model."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    spec = ModelSpec.from_dict(meta["spec"])
    weights = ckpt_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    return Checkpoint(None, spec, eval_transform(spec), list(meta["class_names"]), meta, read_calibration(ckpt_dir))
