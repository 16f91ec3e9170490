"""TorchServe's Python worker, with torch imported only when something uses it.

    python -m torchserve_ops.worker PATH/ts/model_service_worker.py --sock-type unix ...

The frontend starts every worker as `PYTHON ts/model_service_worker.py ...`; torchserve_ops.server
gives it a PYTHON that runs this module instead (worker_python). TorchServe's message codec imports
torch only to ask whether an answer is a tensor, and that import alone holds about 500 MB per process
with this torch build (its CUDA libraries) and takes seconds of CPU. The workflow's function nodes
(pre, ensemble) have no other use for torch. Here `torch` starts as a stand-in module that imports
the real one the first time anything is asked of it; a model worker's handler does so at once.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import runpy
import sys
import types


class TorchOnFirstUse(types.ModuleType):
    """Stands in for torch in sys.modules until an attribute is asked for, then forwards to it."""

    def __getattr__(self, attr):
        return getattr(real_torch(), attr)


def real_torch() -> types.ModuleType:
    if isinstance(sys.modules.get("torch"), TorchOnFirstUse):
        del sys.modules["torch"]
    return importlib.import_module("torch")


def main(argv: list[str]) -> None:
    if not argv or not argv[0].endswith(".py"):  # anything else the frontend may run: plain Python
        os.execv(sys.executable, [sys.executable, *argv])
    if "torch" not in sys.modules:
        stand_in = TorchOnFirstUse("torch")
        stand_in.__spec__ = importlib.util.find_spec("torch")  # found, not imported
        sys.modules["torch"] = stand_in
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python SCRIPT` sets it
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
