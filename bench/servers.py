"""The servers under test: the Flask baseline and TorchServe (archives, start/stop, memory), and
TorchServe measured at each concurrency (measure_served). The servers a user would pick instead
(FastAPI, Ray Serve) are in bench.peers.

Used by bench.serving and bench.gpu_serving; not a script.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from bench.common import CONCURRENCY, REPO, TARGETS, log
from bench.load import fmt_result, load_test, ok_answer

@contextlib.contextmanager
def flask_server(run: Path, log: Path, runtime: str = "onnx"):
    from torchserve_ops.server import free_port
    from torchserve_ops.client import wait_for

    port = free_port()
    cmd = [sys.executable, "-m", "bench.flask_baseline", "--port", str(port), "--run", str(run),
           "--runtime", runtime]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/ping", timeout=2).raise_for_status(), 180,
                 f"the Flask baseline (log {log})", alive=lambda: proc.poll() is None)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_store(run: Path, store: Path, model_config: dict | None = None,
                workflow_models: dict | None = None) -> Path:
    """Archives for this run; `model_config` / `workflow_models` override the archive defaults."""
    from torchserve_ops.archive import build_all

    with contextlib.redirect_stdout(sys.stderr):
        build_all(run, store, model_config=model_config, workflow_models=workflow_models)
    return store


def served_runtime(device: str = "cpu") -> str:
    """The runtime the archives serve with by default on `device` (torchserve_ops.archive)."""
    from torchserve_ops.archive import DEVICE_CONFIG

    return DEVICE_CONFIG[device]["handler"].get("runtime", "torch")


@contextlib.contextmanager
def torchserve(store: Path, workdir: Path, env: dict | None = None):
    """A TorchServe of our own on free ports (token auth on), stopped on exit."""
    from torchserve_ops import server as ts_server

    ports = ts_server.free_ports()
    saved = {k: os.environ.get(k) for k in (env or {})}
    for k, v in (env or {}).items():  # None: unset
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        s = ts_server.start(store, workdir, ports=ports, log_dir=workdir / "logs", timeout=600,
                            quiet=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield s
    finally:
        ts_server.stop(s.workdir, s.log_dir)


def served_memory(server) -> dict:
    """RSS (MB) of the frontend and of every worker, named after the model it serves."""
    front = psutil.Process(server.pid)
    names = {}
    ts = server.client()
    for m in ts.list_models():
        for v in ts.describe(m["modelName"], customized=False):
            for w in v.get("workers", []):
                if w.get("pid"):
                    names[int(w["pid"])] = m["modelName"]
    procs = {"frontend (java)": front}
    for child in front.children(recursive=True):
        # function nodes of the workflow are not listed by the models API
        label = names.get(child.pid, f"workflow function node (pid {child.pid})")
        key = f"worker {label}"
        while key in procs:
            key += "'"
        procs[key] = child
    rss, pss = {}, {}
    for key, p in procs.items():
        with contextlib.suppress(psutil.Error):
            full = p.memory_full_info()
            rss[key], pss[key] = round(full.rss / 2 ** 20), round(full.pss / 2 ** 20)
    return {"rss": {**rss, "total": sum(rss.values())}, "pss": {**pss, "total": sum(pss.values())}}


def ts_procs(server) -> list:
    front = psutil.Process(server.pid)
    return [front] + front.children(recursive=True)


def ts_url(server, target: str) -> str:
    if target == "ensemble":
        return f"{server.inference_url}/wfpredict/galaxy-ensemble"
    return f"{server.inference_url}/predictions/galaxy-{target}"


def measure_served(server, payloads, seconds, concurrencies=CONCURRENCY, targets=TARGETS) -> dict:
    out = {}
    for target in targets:
        for c in concurrencies:
            r = load_test(ts_url(server, target), payloads, c, seconds, headers=server.auth("inference"),
                          check=ok_answer, server_procs=lambda: ts_procs(server))
            out[(target, c)] = r
            log(f"  served {target:8s} c={c}: {fmt_result(r)}")
    return out
