"""Shared pieces of the benchmarks: paths, the targets, the machine, the sample JPEGs, the checkpoints.

Imported by bench.serving (`make bench`), bench.gpu_serving (`make bench-gpu`) and bench.handler;
importing it sets OMP_WAIT_POLICY=PASSIVE (before torch loads) for this process and the servers it
starts. Not a script.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sys
from pathlib import Path

# OpenMP threads that spin while they wait for work are ruinous when other processes share the
# cores: torch with 2 threads ran 10-50x slower than with 1 on this busy 2-core machine. Passive
# waiting is set before torch loads, on import of this module, and (inherited) in the Flask and
# TorchServe processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402

from galaxy_morph.answers import DEFAULT_VERSION  # noqa: E402
from galaxy_morph.specs import PAIR  # noqa: E402
from survey.samples import SAMPLES_DIR, sample_files  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = SAMPLES_DIR
DOCS = REPO / "docs"
TARGETS = ("b0", "b2", "ensemble")
CONCURRENCY = (1, 8, 64)  # clients at once: every server of make bench is measured at each


def machine_info() -> dict:
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = psutil.virtual_memory().total / 2 ** 30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem_gb, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "torchserve": _version("torchserve"), "flask": _version("flask"),
            "fastapi": _version("fastapi"), "uvicorn": _version("uvicorn"), "ray": _version("ray"),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def sample_payloads() -> list[bytes]:
    files = sample_files(SAMPLES)
    if not files:
        raise SystemExit(f"no sample images in {SAMPLES}")
    return [f.read_bytes() for f, _ in files]


def checkpoints(tmp: Path) -> tuple[Path, str]:
    """(run folder with b0/ and b2/, where it came from)."""
    for demo in (REPO / "checkpoints" / "demo", REPO / "runs" / "demo"):  # what make serve serves
        if all((demo / m / f).is_file() for m in PAIR for f in ("model.pt", "meta.json")):
            return demo, str(demo.relative_to(REPO))
    import torch

    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES, get_spec

    run = tmp / "run"
    for i, name in enumerate(PAIR):
        torch.manual_seed(i)
        save_checkpoint(run / name, build_model(name), get_spec(name), GALAXY10_CLASSES, version=DEFAULT_VERSION,
                        data={"path": "random-init", "sha256": None, "n": 0})
    return run, "random-init (no demo checkpoints)"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
