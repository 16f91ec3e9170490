"""TorchServe's frontend with the workflow executor fixed: the classes that go ahead of its jar.

    python -m torchserve_ops.frontend      # compile if needed (make java does), print the folder

torchserve_ops/frontend/DagExecutor.java replaces TorchServe 0.12's workflow executor, which lost
node answers (requests stalled for a node's timeout-ms) and leaked threads on every failed request;
its comments say how. It is compiled once per source and TorchServe version into the virtualenv
(sys.prefix/torchserve-frontend/DIGEST), so an image built with `make setup java` carries it and
needs no compiler at run time. Compiling needs javac (a JDK; `make java` installs one).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from galaxy_morph.files import inputs_digest, is_current, mark_current

SOURCES = Path(__file__).resolve().parent / "frontend"
STAMP = ".inputs"


class FrontendError(RuntimeError):
    """The fixed classes are missing and cannot be compiled here."""


def jar_dir() -> Path:
    import ts

    return Path(ts.__file__).resolve().parent / "frontend"


def classes_dir() -> Path:
    digest = inputs_digest(SOURCES, {"torchserve": version("torchserve")})
    return Path(sys.prefix) / "torchserve-frontend" / digest


def classes() -> Path:
    """The folder of compiled classes, compiled first when it is missing or stale."""
    out = classes_dir()
    digest = out.name
    if is_current(out / STAMP, digest):
        return out
    javac = shutil.which("javac")
    if javac is None:
        raise FrontendError(f"{out} is missing and there is no javac to compile "
                            f"{SOURCES.relative_to(SOURCES.parent.parent)}: run make java (installs a JDK)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        done = subprocess.run([javac, "-nowarn", "--release", "17", "-cp", str(jar_dir() / "*"), "-d", tmp,
                               *map(str, sorted(SOURCES.glob("*.java")))], capture_output=True, text=True)
        if done.returncode != 0:
            raise FrontendError(f"javac failed:\n{done.stderr[-2000:]}")
        mark_current(Path(tmp) / STAMP, digest)
        if not is_current(out / STAMP, digest):  # another process may have compiled it meanwhile
            shutil.rmtree(out, ignore_errors=True)
            Path(tmp).rename(out)
            Path(tmp).mkdir()  # for TemporaryDirectory's own clean-up
    return out


def class_path() -> str:
    """-cp for the frontend: the fixed classes first, then TorchServe's (as its launcher sets it)."""
    return f"{classes()}:.:{jar_dir() / '*'}"


if __name__ == "__main__":
    try:
        print(classes())
    except FrontendError as e:
        sys.exit(f"error: {e}")
