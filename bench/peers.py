"""The servers a user would pick instead of TorchServe, each serving the same galaxy_morph.Predictor.

    python -m bench.peers fastapi --run checkpoints/demo --port 38002 [--runtime onnx]
    python -m bench.peers ray_serve --run checkpoints/demo --port 38003 [--runtime onnx]

Both load Predictor.from_run(RUN, model, runtime=RUNTIME) for b0, b2 and the ensemble and answer

    POST /predictions/<model>      raw image bytes as the body (as bench.load sends them)
                                   -> Predictor.answer's JSON dict; 400 {"error": ...} for a bad image

on 127.0.0.1 only, batching concurrent requests the way TorchServe does (up to 8 images, at most
10 ms after the first, one batch at a time per model):

  fastapi    one uvicorn process, one event loop. Per model an asyncio queue drained by a batcher
             task: it waits for a first request, collects more until it has 8 or 10 ms have passed,
             and runs one answer_batch on them in a worker thread (asyncio.to_thread), so that the
             loop keeps reading requests while a batch runs. GET /ping answers when the models are
             loaded.
  ray_serve  a local Ray started by the server (ray.init(num_cpus=2), no dashboard), one deployment
             (one replica) per model with @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01),
             max_ongoing_requests 64 (Serve's default of 5 would cap a batch at 5 images), Serve's
             HTTP proxy on the port. The replicas ask for no logical CPU (three would not fit in
             two) and run with one thread per core, as the other servers do: Ray would give them one.

`make bench` (bench/serving.py) starts each with peer_server() and measures it beside Flask and
TorchServe; tests/test_bench.py checks the FastAPI peer's answers against Predictor.answer.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations as objects.
import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from bench.common import REPO, TARGETS

PEERS = ("fastapi", "ray_serve")
BATCH, WAIT_S = 8, 0.01


def load_predictors(run, runtime: str, models=TARGETS) -> dict:
    from galaxy_morph import Predictor

    return {m: Predictor.from_run(run, m, runtime=runtime) for m in models}


def answer_response(answer):
    """(status, body) of one answer_batch item: the answer, or the ImageError that refused it."""
    if isinstance(answer, Exception):
        return getattr(answer, "status", 400), {"error": str(answer)}
    return 200, answer


# ---- FastAPI + uvicorn

async def batcher(queue: asyncio.Queue, predictor) -> None:
    """Answers the (body, future) pairs put on `queue`: up to BATCH at a time, waiting at most WAIT_S
    after the first, one answer_batch at a time in a worker thread."""
    while True:
        items = [await queue.get()]
        deadline = time.monotonic() + WAIT_S
        while len(items) < BATCH:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        try:
            answers = await asyncio.to_thread(predictor.answer_batch, [body for body, _ in items])
        except Exception as e:  # the batch fails, not the batcher: each of its requests gets a 500
            answers, failed = [None] * len(items), e
        else:
            failed = None
        for (_, future), a in zip(items, answers):
            if future.done():  # the client went away
                continue
            if failed is not None:
                future.set_exception(failed)
            else:
                future.set_result(a)


def fastapi_app(predictors: dict):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    queues = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = []
        for m, p in predictors.items():
            queues[m] = asyncio.Queue()
            tasks.append(asyncio.create_task(batcher(queues[m], p)))
        yield
        for t in tasks:
            t.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predictions/{model}")
    async def predict(model: str, request: Request):
        if model not in queues:
            return JSONResponse({"error": f"unknown model {model!r}"}, 404)
        future = asyncio.get_running_loop().create_future()
        await queues[model].put((await request.body(), future))
        status, body = answer_response(await future)
        return JSONResponse(body, status)

    return app


def serve_fastapi(run, runtime: str, port: int) -> None:
    import uvicorn

    uvicorn.run(fastapi_app(load_predictors(run, runtime)), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


# ---- Ray Serve

def ray_deployment():
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class GalaxyModel:
        def __init__(self, run: str, model: str, runtime: str):
            import torch

            torch.set_num_threads(os.cpu_count() or 1)  # ONNX Runtime's session takes torch's count
            self.predictor = load_predictors(run, runtime, (model,))[model]

        @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=WAIT_S)
        async def answer(self, bodies: list[bytes]) -> list:
            return await asyncio.to_thread(self.predictor.answer_batch, bodies)

        async def __call__(self, request):
            status, body = answer_response(await self.answer(await request.body()))
            return JSONResponse(body, status)

    return GalaxyModel


def serve_ray(run, runtime: str, port: int) -> None:
    import signal

    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2 ** 20)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init, which sets its own; to the finally below
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        model = ray_deployment()
        for m in TARGETS:
            serve.run(model.options(name=f"galaxy-{m}").bind(str(run), m, runtime), name=m,
                      route_prefix=f"/predictions/{m}")
        print(f"ray serve ready on port {port}", flush=True)
        while True:
            time.sleep(3600)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


# ---- under test

def ready(peer: str, url: str) -> None:
    if peer == "ray_serve":  # the proxy answers before the routes are up
        routes = requests.get(url + "/-/routes", timeout=2).json()
        missing = [m for m in TARGETS if f"/predictions/{m}" not in routes]
        if missing:
            raise requests.ConnectionError(f"routes not up yet: {missing}")
    else:
        requests.get(url + "/ping", timeout=2).raise_for_status()


def tree(proc) -> list:
    """The process and its descendants (Ray's raylet, GCS, proxy and replicas), as psutil objects."""
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(proc.pid)
        return [p] + p.children(recursive=True)
    return []


@contextlib.contextmanager
def peer_server(peer: str, run: Path, log: Path, runtime: str = "onnx", timeout: float = 300):
    """PEER (fastapi, ray_serve) on a free port in its own process; yields (url, procs), procs() the
    server's processes now (for CPU and memory accounting). Stopped, descendants included, on exit."""
    from torchserve_ops.client import wait_for
    from torchserve_ops.server import free_port

    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    port = free_port()
    cmd = [sys.executable, "-m", "bench.peers", peer, "--run", str(run), "--runtime", runtime,
           "--port", str(port)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(peer, url), timeout, f"the {peer} peer (log {log})",
                 alive=lambda: proc.poll() is None)
        yield url, lambda: tree(proc)
    finally:
        stop(proc)


def stop(proc, timeout: float = 60) -> None:
    family = tree(proc)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for p in family[1:]:  # whatever the server's own shutdown left behind
        with contextlib.suppress(psutil.Error):
            p.kill()


def pss_mb(procs) -> dict:
    """PSS (MB) per process and in total."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out[f"{p.name()} ({p.pid})"] = round(p.memory_full_info().pss / 2 ** 20)
    return {**out, "total": sum(out.values())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer", choices=PEERS)
    p.add_argument("--run", required=True, help="run folder with b0/ and b2/")
    p.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    p.add_argument("--port", type=int, default=38002)
    args = p.parse_args(argv)
    (serve_ray if args.peer == "ray_serve" else serve_fastapi)(args.run, args.runtime, args.port)


if __name__ == "__main__":
    main()
