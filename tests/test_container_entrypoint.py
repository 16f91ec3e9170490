"""The container's foreground entrypoint (deploy/serve_foreground.py), run here without a container.

    .venv/bin/python -m pytest -q tests/test_container_entrypoint.py

It runs on the pod's own config.properties (deploy/k8s/base/config.properties: 0.0.0.0, tokens
off), changed only in its ports (free ones: other servers may hold 8080-8082 on this machine) and
its model store path, serving the shipped demo models as the image does. Checked: the ready file
appears only once the workflow is registered, /ping and predictions answer without any token,
metrics are served, the served models flag images that are not galaxies (the issue's table is
docs/ood.md; here the server's verdicts are checked against the handler's), and SIGTERM (what
Kubernetes sends) stops TorchServe and the entrypoint with status 0. Bad configs exit 1 with a
message, before anything starts.
"""
from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from galaxy_morph.imaging import decode_image
from galaxy_morph.predictor import read_settings
from simulation import outliers
from survey.samples import sample_files
from torchserve_ops.server import free_ports

REPO = Path(__file__).resolve().parent.parent
POD_CONFIG = REPO / "deploy" / "k8s" / "base" / "config.properties"
SAMPLE = REPO / "samples" / "galaxy10_decals" / "class_5_0.jpg"
DEMO = REPO / "checkpoints" / "demo"


def pod_config(tmp: Path, store: Path, ports: dict) -> Path:
    text = POD_CONFIG.read_text()
    for api, port in ports.items():  # inference, management, metrics, grpc_inference, grpc_management
        if api.startswith("grpc_"):
            text = re.sub(rf"^{api}_port=\d+$", f"{api}_port={port}", text, flags=re.M)
        text = re.sub(rf"^{api}_address=http://0\.0\.0\.0:\d+$", f"{api}_address=http://0.0.0.0:{port}", text, flags=re.M)
    text = text.replace("/app/model_store", str(store))
    out = tmp / "config.properties"
    out.write_text(text)
    return out


def run_entrypoint(*args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "deploy.serve_foreground", *map(str, args)], cwd=REPO,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """The entrypoint on the pod's config, serving the shipped demo models as the image does:
    (process, {api: port}). Stopped by the last test of the module (SIGTERM), else killed."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17 (make java)")
    from torchserve_ops.archive import build_all

    tmp = tmp_path_factory.mktemp("pod")
    build_all(DEMO, tmp / "model_store")
    ports = free_ports()
    config = pod_config(tmp, tmp / "model_store", {k: ports[k] for k in (
        "inference", "management", "metrics", "grpc_inference", "grpc_management")})
    ready, out = tmp / "ready", tmp / "entrypoint.out"
    with open(out, "w") as log:  # a file, not a pipe: nobody reads TorchServe's output while it serves
        # a short stop grace: the frontend does not exit on SIGTERM within Kubernetes' 30 s here either
        proc = run_entrypoint("--config", config, "--log-dir", tmp / "logs", "--ready-file", ready,
                              "--timeout", 400, "--stop-grace", 5, stdout=log)
    try:
        deadline = time.time() + 420
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if proc.poll() is not None:
            pytest.fail(f"entrypoint exited with {proc.returncode}:\n{out.read_text()[-3000:]}")
        assert ready.exists(), "not ready in time"
        yield proc, ports
    finally:
        if proc.poll() is None:  # a test failed before the SIGTERM one: stop TorchServe too, not only the entrypoint
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


@pytest.mark.slow
def test_pod_answers_without_tokens_once_ready(pod):
    _, ports = pod
    base = f"http://127.0.0.1:{ports['inference']}"
    assert requests.get(base + "/ping", timeout=10).json()["status"] == "Healthy"
    r = requests.post(base + "/predictions/galaxy-b0", data=SAMPLE.read_bytes(), timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "galaxy-b0"
    r = requests.post(base + "/wfpredict/galaxy-ensemble", data=SAMPLE.read_bytes(), timeout=60)
    # the demo run's measured default rule (checkpoints/demo/ensemble.json), carried by the .war
    assert r.status_code == 200 and r.json()["rule"] == read_settings(REPO / "checkpoints" / "demo")["default_rule"]
    assert "ts_inference_requests_total" in requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics",
                                                         timeout=10).text


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_served_demo_models_flag_what_is_not_a_galaxy(pod):
    """Noise, flat, gradient, checkerboard, the other generated families and photographs through
    the three endpoints: at least 95 % flagged, real samples mostly not; each model's served verdict
    and score are the in-process handler's for the same bytes (tests/test_ood.py checks those on
    every sample); bad input is still a 400."""
    from tests.test_ood import demo_verdicts

    _, ports = pod
    base = f"http://127.0.0.1:{ports['inference']}"
    rng = np.random.default_rng(7)
    generated = outliers.generated(rng, 1)
    junk = [ims[0] for ims in generated.values()] + list(outliers.photographs().values())
    real = [np.asarray(decode_image(p.read_bytes())) for p, _ in sample_files()[::5]]  # 2 per class
    bodies = [png(a) for a in junk + real]

    def ask(path: str, sent: list[bytes]) -> list[dict]:
        def one(body: bytes) -> requests.Response:
            return requests.post(base + path, data=body, timeout=120)

        with ThreadPoolExecutor(4) as pool:  # the server batches concurrent requests (up to 8)
            answers = list(pool.map(one, sent))
        for r in answers:
            assert r.status_code == 200, r.text
        return [r.json() for r in answers]

    for name in ("b0", "b2"):
        got = ask(f"/predictions/galaxy-{name}", bodies)
        flagged = [a["in_distribution"] is False for a in got]
        assert np.mean(flagged[:len(junk)]) >= 0.95, (name, flagged[:len(junk)])
        assert sum(flagged[len(junk):]) <= 2, (name, flagged[len(junk):])  # of 20: the 10 %
        local = demo_verdicts(name, junk + real)
        assert [a["in_distribution"] for a in got] == [a["in_distribution"] for a in local]
        assert [a["ood_score"] for a in got] == pytest.approx([a["ood_score"] for a in local], rel=1e-4, abs=1e-4)
    # The workflow on the same images: it flags what either member flags.
    got = ask("/wfpredict/galaxy-ensemble", bodies)
    assert all(a["in_distribution"] == (a["b0"]["in_distribution"] and a["b2"]["in_distribution"]) for a in got)
    assert np.mean([not a["in_distribution"] for a in got[:len(junk)]]) >= 0.95
    assert sum(not a["in_distribution"] for a in got[len(junk):]) <= 4  # at most each member's 2 of 20
    r = requests.post(base + "/predictions/galaxy-b2", data=b"not an image", timeout=60)
    assert r.status_code == 400 and "not an image" in r.json()["error"]


@pytest.mark.slow
def test_sigterm_stops_the_pod_with_status_0(pod):
    proc, ports = pod
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{ports['inference']}/ping", timeout=5)


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
