"""The container's foreground entrypoint (deploy/serve_foreground.py), run here without a container.

    .venv/bin/python -m pytest -q tests/test_container_entrypoint.py

It runs on the pod's own config.properties (deploy/k8s/base/config.properties: 0.0.0.0, tokens
off), changed only in its ports (free ones: other servers may hold 8080-8082 on this machine) and
its model store path (random-init archives built for the test session) and, to spare a worker,
loads only galaxy-b0 at start besides the workflow. Checked: the ready file
appears only once the workflow is registered, /ping and predictions answer without any token,
metrics are served, and SIGTERM (what Kubernetes sends) stops TorchServe and the entrypoint with
status 0. Bad configs exit 1 with a message, before anything starts.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests

from torchserve_ops.server import free_ports

REPO = Path(__file__).resolve().parent.parent
POD_CONFIG = REPO / "deploy" / "k8s" / "base" / "config.properties"
SAMPLE = REPO / "samples" / "galaxy10_decals" / "class_5_0.jpg"


def pod_config(tmp: Path, store: Path, ports: dict) -> Path:
    text = POD_CONFIG.read_text()
    for api, port in ports.items():  # inference, management, metrics, grpc_inference, grpc_management
        if api.startswith("grpc_"):
            text = re.sub(rf"^{api}_port=\d+$", f"{api}_port={port}", text, flags=re.M)
        text = re.sub(rf"^{api}_address=http://0\.0\.0\.0:\d+$", f"{api}_address=http://0.0.0.0:{port}", text, flags=re.M)
    text = text.replace("/app/model_store", str(store))
    # One start-up model instead of two: a worker less on a small machine (the workflow has its own).
    text = text.replace("load_models=galaxy-b0.mar,galaxy-b2.mar", "load_models=galaxy-b0.mar")
    out = tmp / "config.properties"
    out.write_text(text)
    return out


def run_entrypoint(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "deploy.serve_foreground", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_foreground_server_answers_without_tokens_and_stops_on_sigterm(tmp_path, served_archives):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17 (make java)")
    _, store = served_archives
    ports = free_ports()
    inference, management, metrics, grpc_i, grpc_m = (ports[k] for k in (
        "inference", "management", "metrics", "grpc_inference", "grpc_management"))
    config = pod_config(tmp_path, store, {"inference": inference, "management": management, "metrics": metrics,
                                          "grpc_inference": grpc_i, "grpc_management": grpc_m})
    ready = tmp_path / "ready"
    proc = run_entrypoint("--config", config, "--log-dir", tmp_path / "logs", "--ready-file", ready,
                          "--timeout", 400)
    try:
        deadline = time.time() + 420
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(1)
        if proc.poll() is not None:
            pytest.fail(f"entrypoint exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        assert ready.exists(), "not ready in time"
        base = f"http://127.0.0.1:{inference}"
        assert requests.get(base + "/ping", timeout=10).json()["status"] == "Healthy"
        r = requests.post(base + "/predictions/galaxy-b0", data=SAMPLE.read_bytes(), timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "galaxy-b0"
        r = requests.post(base + "/wfpredict/galaxy-ensemble", data=SAMPLE.read_bytes(), timeout=60)
        assert r.status_code == 200 and r.json()["rule"] == "seed"
        assert "ts_inference_requests_total" in requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(base + "/ping", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("case, message", [("no-config", "config not found"),
                                           ("no-archives", "the archives")])
def test_bad_config_exits_1_with_a_message(tmp_path, case, message):
    config = tmp_path / "config.properties"
    if case == "no-archives":
        config.write_text(POD_CONFIG.read_text().replace("/app/model_store", str(tmp_path / "empty")))
    proc = run_entrypoint("--config", config, "--log-dir", tmp_path / "logs")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert message in out


def test_dockerfile_builds_with_the_makefile_steps_and_starts_the_pod_entrypoint():
    """No container daemon here: check the Dockerfile against the repository instead."""
    text = (REPO / "Dockerfile").read_text()
    steps = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any("make setup" in s for s in steps) and any("make archive RUN=${RUN}" in s for s in steps)
    assert not any("pip install" in s for s in steps), "install only through the Makefile's steps"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for pkg in packages:  # `make setup` installs them (pip install -e .): they must be in the image first
        setup = next(i for i, step in enumerate(steps) if "make setup" in step)
        assert steps.index(f"COPY {pkg} {pkg}") < setup
    for needed in ("handlers", "deploy", "config.properties"):
        assert any(s.startswith(f"COPY {needed} ") for s in steps)
    assert "USER 1000:1000" in steps and "ARG DEVICE=cpu" in steps
    entry = next(s for s in steps if s.startswith("ENTRYPOINT"))
    assert '"deploy.serve_foreground"' in entry and (REPO / "deploy" / "serve_foreground.py").is_file()
    cmd = [s for s in steps if s.startswith("CMD")][-1]  # (the HEALTHCHECK has one too)
    config = re.search(r'"--config", "/app/([^"]+)"', cmd).group(1)
    props = dict(line.split("=", 1) for line in (REPO / config).read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    ports = [props[f"{api}_address"].rsplit(":", 1)[1] for api in ("inference", "management", "metrics")]
    assert f"EXPOSE {' '.join(ports)}" in steps
    assert f"http://127.0.0.1:{ports[0]}/ping" in text  # HEALTHCHECK
