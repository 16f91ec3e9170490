"""The files of a run folder and its checkpoint folders, read without torch (the archive builder,
`make serve`'s staleness check and the version tools use these).

    RUN/ensemble.json         the ensemble settings training.evaluate writes (read_settings)
    RUN/M/model.pt, meta.json one checkpoint (WEIGHTS_FILE, META_FILE: read_meta)
    RUN/M/report.json         its evaluation report (val_per_class_f1: the weighted rule's weights)
    RUN/M/model.onnx          its ONNX export, and model.onnx.json the check (galaxy_morph.runtimes)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from galaxy_morph.answers import WORKFLOW_SETTINGS
from galaxy_morph.specs import ALL_SPECS

ENSEMBLE = "ensemble"  # the model name of a run's members answering together
WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
REPORT_FILE = "report.json"
SETTINGS_FILE = WORKFLOW_SETTINGS  # RUN/ensemble.json; the .war carries its default rule too
RUNTIMES = ("torch", "onnx")  # where a member's forward runs (galaxy_morph.runtimes)
ONNX_FILE = "model.onnx"
ONNX_RECORD = "model.onnx.json"  # the weights it was exported from and its check against torch


class CheckpointError(ValueError):
    """A run or checkpoint folder that cannot answer; the message says which file."""


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint meta at {path}")
    return json.loads(path.read_text())


def weights_sha256(ckpt_dir: str | os.PathLike) -> str:
    from galaxy_morph.data import file_sha256

    return file_sha256(Path(ckpt_dir) / WEIGHTS_FILE)


def onnx_is_current(ckpt_dir: str | os.PathLike) -> bool:
    """CKPT/model.onnx exists and was exported (and checked) from CKPT's present weights."""
    ckpt_dir = Path(ckpt_dir)
    try:
        record = json.loads((ckpt_dir / ONNX_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return (ckpt_dir / ONNX_FILE).is_file() and record.get("weights_sha256") == weights_sha256(ckpt_dir)


def run_members(run: str | os.PathLike) -> list[str]:
    """The models with a checkpoint in RUN (RUN/M/model.pt), B0 first (the seed rule's answering
    model), then in spec order: the members of the run's ensemble."""
    found = [m for m in ALL_SPECS if (Path(run) / m / WEIGHTS_FILE).is_file()]
    return sorted(found, key=lambda m: m != "b0")


def val_per_class_f1(ckpt_dir: str | os.PathLike, meta: dict | None = None):
    """Per-class validation F1 (the weighted rule's weights): the evaluation report, else the meta."""
    report = Path(ckpt_dir) / REPORT_FILE
    found = json.loads(report.read_text()).get("val_per_class_f1") if report.is_file() else None
    return found or ((meta or {}).get("metrics") or {}).get("val_per_class_f1")


def read_settings(run: str | os.PathLike) -> dict:
    """RUN/ensemble.json ({} when the run was never evaluated as an ensemble)."""
    path = Path(run) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
