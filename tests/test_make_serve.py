"""README's quick start, as a user runs it: `make serve` (the shipped demo models, TorchServe with
token auth, the dashboard), a sample classified through the API, then `make stop`.

    .venv/bin/python -m pytest -q tests/test_make_serve.py

It runs in a copy of the working tree (tracked files and untracked ones git does not ignore, the
venv linked), on free ports (TS_*_PORT, DASHBOARD_PORT), so that what `make serve` writes
(model_store/, logs/, key_file.json, runs/similarity/) lands in the copy, and a server the
developer runs from the repository is neither stopped nor answered. The copy holds one of the ten
real samples of each class: `make serve` embeds every sample for the dashboard's similar
galaxies, about 15 s for all 100 on 2 cores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from galaxy_morph.specs import GALAXY10_CLASSES
from torchserve_ops.server import Server, free_port, free_ports, port_in_use

REPO = Path(__file__).resolve().parent.parent
SAMPLE = Path("samples") / "galaxy10_decals" / "class_2_0.jpg"  # README's curl example
LEFT_OUT = re.compile(r"samples/galaxy10_decals/class_\d_[1-9][.]jpg")  # the copy keeps class_K_0
# Ignored, or made by `make serve`: never copied.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "runs",
                                    "logs", "data", "*.mar", "*.war", "key_file.json", "*.egg-info")


def copy_of_the_tree(dest: Path) -> Path:
    """The working tree as it is now (uncommitted changes included), without what git ignores and
    the LEFT_OUT samples."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0:  # not a git checkout: the folder less the usual build outputs
        shutil.copytree(REPO, dest, ignore=NOT_COPIED, symlinks=True)
        for p in dest.glob("samples/galaxy10_decals/*.jpg"):
            if LEFT_OUT.fullmatch(p.relative_to(dest).as_posix()):
                p.unlink()
    else:
        for name in filter(None, listed.stdout.decode().split("\0")):
            src = REPO / name
            if src.is_file() and not LEFT_OUT.fullmatch(name):  # (tracked files deleted in the tree: skipped)
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)  # times kept: make sees nothing newer than the venv
    (dest / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return dest


def make(target: str, tree: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    # -o: the venv is installed already (the suite runs in it); make must not reinstall it from the copy
    return subprocess.run(["make", "-o", ".venv/.installed", target], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(tree, env, `make serve`'s result); `make stop` afterwards if a test left it running."""
    if shutil.which("java") is None or shutil.which("make") is None:
        pytest.skip("make serve needs make and Java 17 (make java)")
    tree = copy_of_the_tree(tmp_path_factory.mktemp("make_serve") / "repo")
    ports = free_ports()
    env = {**os.environ, "TS_HOST": "127.0.0.1", "DASHBOARD_PORT": str(free_port()),
           **{f"TS_{api.upper()}_PORT": str(port) for api, port in ports.items()}}
    # as from a user's shell: not a sub-make of `make test` (which would print "Entering directory")
    for var in ("TS_KEY_FILE", "TS_MODEL_STORE", "RUN", "DEVICE", "TTA", "VERSION",
                "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(var, None)
    served = make("serve", tree, env, timeout=600)
    try:
        yield tree, env, served
    finally:
        if (tree / "logs" / "torchserve.pid").exists() or (tree / "logs" / "dashboard.pid").exists():
            make("stop", tree, env, timeout=120)


def test_make_serve_answers_with_a_class_behind_its_token(made):
    tree, env, served = made
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    inference = f"http://127.0.0.1:{env['TS_INFERENCE_PORT']}"
    assert f"Inference   {inference}" in served.stdout
    assert f"dashboard: http://127.0.0.1:{env['DASHBOARD_PORT']}" in served.stdout
    server = Server.from_json((tree / "logs" / "torchserve.pid").read_text())
    assert server.model_store == tree / "model_store" and server.workdir == tree  # the copy's, not the repo's
    assert {f.name for f in server.model_store.iterdir()} >= {"galaxy-b0.mar", "galaxy-b2.mar", "galaxy-ensemble.war"}

    key = json.loads((tree / "key_file.json").read_text())["inference"]["key"]  # as README reads it
    auth = {"Authorization": f"Bearer {key}"}
    image = (tree / SAMPLE).read_bytes()
    assert requests.get(f"{inference}/ping", headers=auth, timeout=30).json()["status"] == "Healthy"
    refused = requests.post(f"{inference}/predictions/galaxy-b0", data=image, timeout=60)
    assert refused.status_code in (400, 401) and "label" not in refused.text  # TorchServe 0.12 says 400

    b0 = requests.post(f"{inference}/predictions/galaxy-b0", data=image, headers=auth, timeout=120)
    assert b0.status_code == 200, b0.text
    answer = b0.json()
    assert answer["model"] == "galaxy-b0" and answer["class_name"] == GALAXY10_CLASSES[answer["label"]]
    assert list(answer["probabilities"]) == list(GALAXY10_CLASSES)

    ensemble = requests.post(f"{inference}/wfpredict/galaxy-ensemble", data=image, timeout=120,
                             headers={**auth, "X-Ensemble-Rule": "mean"})
    assert ensemble.status_code == 200, ensemble.text
    answer = ensemble.json()
    assert answer["rule"] == "mean" and answer["class_name"] == GALAXY10_CLASSES[answer["label"]]
    assert {answer["b0"]["model"], answer["b2"]["model"]} == {"galaxy-ensemble__b0", "galaxy-ensemble__b2"}

    health = requests.get(f"http://127.0.0.1:{env['DASHBOARD_PORT']}/_stcore/health", timeout=30)
    assert health.status_code == 200 and health.text == "ok"


def test_make_stop_stops_everything(made):
    tree, env, served = made
    assert served.returncode == 0, served.stderr[-3000:]
    server = Server.from_json((tree / "logs" / "torchserve.pid").read_text())
    dashboard = psutil.Process(int((tree / "logs" / "dashboard.pid").read_text()))
    procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True),
             dashboard, *dashboard.children(recursive=True)]
    assert len(procs) >= 1 + 6 + 1  # the frontend, a worker per model and workflow node, Streamlit

    stopped = make("stop", tree, env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "dashboard stopped" in stopped.stdout and "stopped" in stopped.stdout.splitlines()[-1]
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert not any(port_in_use(int(env[f"TS_{api.upper()}_PORT"])) for api in server.ports)
    assert not port_in_use(int(env["DASHBOARD_PORT"]))
    assert not (tree / "key_file.json").exists() and not (tree / "logs" / "torchserve.pid").exists()
    assert not (tree / "logs" / "dashboard.pid").exists()
