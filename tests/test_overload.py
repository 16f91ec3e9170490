"""Overload and soak of the served stack: TorchServe pushed past what it can serve, then a long run.
Takes minutes, so `make test` skips it; 127.0.0.1 only, every loop bounded.

    make soak
    GALAXY_SOAK=1 .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/test_overload.py

Its own TorchServe (make_torchserve: galaxy-b0, galaxy-b2 and the galaxy-ensemble workflow, random-init
models). First the sustainable rate: a closed loop at concurrency 8 on each endpoint. Overload: open-loop
(Poisson) arrivals at OVERLOAD_FACTOR times the sustainable rate of the b0 / b2 / workflow mix: every
request is answered 200 or refused promptly (the job queue is full), none waits out the client timeout,
no worker dies, and at normal load afterwards the same images get the same labels. Soak: SOAK_REQUESTS
requests in a closed loop over the mix: all answered, no workflow node call waits out its timeout-ms
(TorchServe logs each as "Timed out while executing"), no worker's RSS grows by more than RSS_GROWTH
after a warm-up. Figures go to a section of docs/reliability.md (replaced on every full run).

Shorter runs: GALAXY_SOAK_OVERLOAD_S (default 60), GALAXY_SOAK_RECOVERY_S (60), GALAXY_SOAK_REQUESTS
(10000), GALAXY_SOAK_RATE_S (10 per endpoint). The doc is written only at the full defaults.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
import requests

from bench.load import load_test, ok_answer, percentiles
from tests.test_reliability import log_lines
from torchserve_ops.archive import DEVICE_CONFIG
from torchserve_ops.server import workflow_model_names

pytestmark = [pytest.mark.soak, pytest.mark.server,
              pytest.mark.skipif(os.environ.get("GALAXY_SOAK") != "1", reason="soak test: make soak (GALAXY_SOAK=1)")]

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "galaxy10_decals"
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- overload-soak: begin -->", "<!-- overload-soak: end -->"

ENDPOINTS = {"b0": "predictions/galaxy-b0", "b2": "predictions/galaxy-b2",
             "workflow": "wfpredict/galaxy-ensemble"}
MIX = {"b0": 0.4, "b2": 0.2, "workflow": 0.4}  # share of the requests sent to each endpoint
DEFAULTS = {"RATE_S": 10.0, "OVERLOAD_S": 60.0, "RECOVERY_S": 60.0, "REQUESTS": 10000}
RATE_S, OVERLOAD_S, RECOVERY_S = (float(os.environ.get(f"GALAXY_SOAK_{k}", DEFAULTS[k]))
                                  for k in ("RATE_S", "OVERLOAD_S", "RECOVERY_S"))
SOAK_REQUESTS = int(os.environ.get("GALAXY_SOAK_REQUESTS", DEFAULTS["REQUESTS"]))
FULL_LENGTH = (RATE_S, OVERLOAD_S, RECOVERY_S, SOAK_REQUESTS) == tuple(DEFAULTS.values())

OVERLOAD_FACTOR = 4.0
NORMAL_FACTOR = 0.5  # "normal load" after the overload: half the sustainable rate
CLIENT_TIMEOUT_S = 30.0
# A refusal answered later than this is not prompt. A model's 503 comes at once (what it takes here is
# mostly the load generator's own lag); the workflow's comes from the node whose queue is full, after
# the nodes before it have run.
REFUSAL_S = 5.0
MAX_OUTSTANDING = 1000  # client connections; TorchServe's queues (job_queue_size=100 per model) hold fewer
SOAK_CONCURRENCY, SOAK_WARMUP = 8, 500
RSS_GROWTH = 0.10
WORKERS_PER_MODEL = DEVICE_CONFIG["cpu"]["minWorkers"]  # what the CPU archives run
FIXED_IMAGES = 10  # the images whose labels must not change across the overload

FIGURES: dict[str, dict] = {}


@dataclass
class Result:
    endpoint: str
    image: int
    status: int | str  # HTTP status, or the exception's name
    latency_s: float  # from the scheduled send time (open loop) or the actual one (closed loop)
    label: int | None = None  # the answer's class index
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.label is not None


def record(name: str, **figures) -> None:
    FIGURES[name] = figures
    print(f"\n[{name}] " + ", ".join(f"{k}: {v}" for k, v in figures.items()))


@pytest.fixture(scope="module")
def server(make_torchserve):
    return make_torchserve(workflow=True)


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [p.read_bytes() for p in sorted(SAMPLES.glob("class_*.jpg"))]


@pytest.fixture(scope="module", autouse=True)
def soak_report():
    yield
    if FULL_LENGTH and {"rates", "overload", "recovery", "soak"} <= set(FIGURES):
        write_section()


# ---------------------------------------------------------------------------------------------
# Sending


class Sender:
    """POSTs images to the server's endpoints, one keep-alive session per thread."""

    def __init__(self, server):
        self.url = server.inference_url
        self.headers = {**server.auth("inference"), "Content-Type": "application/octet-stream"}
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        return self.local.s

    def send(self, endpoint: str, image: int, body: bytes, since: float | None = None) -> Result:
        t0 = time.perf_counter() if since is None else since
        try:
            r = self.session().post(f"{self.url}/{ENDPOINTS[endpoint]}", data=body, headers=self.headers,
                                    timeout=CLIENT_TIMEOUT_S)
        except requests.RequestException as e:
            return Result(endpoint, image, type(e).__name__, time.perf_counter() - t0)
        return answer(endpoint, image, r.status_code, r.text, time.perf_counter() - t0)


def answer(endpoint: str, image: int, status: int, text: str, latency: float) -> Result:
    """A Result from an HTTP answer: the label of a 200 with a classification, else the message."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    label = doc.get("label") if status == 200 and "label" in doc and "error" not in doc else None
    return Result(endpoint, image, status, latency, label,
                  str(doc.get("message") or doc.get("error") or text)[:300] if label is None else "")


def choose(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


def open_loop(server, payloads, rate: float, seconds: float, images: int | None = None,
              seed: int = 0) -> tuple[list[Result], float]:
    """Poisson arrivals at `rate` for `seconds`, each request sent at its time whatever the server's
    state; latency counts from the scheduled arrival. Returns (results, worst send lag s).
    One asyncio loop (aiohttp) sends them all: a thread per request costs the 2 cores more than
    the server's own work at 4x its rate."""
    rng = random.Random(seed)
    n_images = images or len(payloads)
    plan, t = [], rng.expovariate(rate)
    while t < seconds:
        plan.append((t, choose(rng), rng.randrange(n_images)))
        t += rng.expovariate(rate)
    return asyncio.run(_send_plan(server, payloads, plan))


async def _send_plan(server, payloads, plan) -> tuple[list[Result], float]:
    headers = {**server.auth("inference"), "Content-Type": "application/octet-stream"}
    results, lags = [None] * len(plan), [0.0]
    connector = aiohttp.TCPConnector(limit=MAX_OUTSTANDING)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def fire(i, at, endpoint, image):
            lags[0] = max(lags[0], time.perf_counter() - at)
            try:
                async with session.post(f"{server.inference_url}/{ENDPOINTS[endpoint]}", data=payloads[image],
                                        headers=headers) as r:
                    status, text = r.status, await r.text()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                results[i] = Result(endpoint, image, type(e).__name__, time.perf_counter() - at)
                return
            results[i] = answer(endpoint, image, status, text, time.perf_counter() - at)

        tasks, t0 = [], time.perf_counter()
        for i, (at, endpoint, image) in enumerate(plan):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            tasks.append(asyncio.create_task(fire(i, t0 + at, endpoint, image)))
        await asyncio.gather(*tasks)
    return results, lags[0]


def closed_loop(server, payloads, n: int, concurrency: int, seed: int) -> list[Result]:
    """n requests over the mix, `concurrency` clients each sending the next as soon as one returns."""
    rng = random.Random(seed)
    jobs = [(choose(rng), rng.randrange(len(payloads))) for _ in range(n)]
    sender = Sender(server)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda job: sender.send(job[0], job[1], payloads[job[1]]), jobs))


def sustainable_rates(server, payloads) -> dict:
    """Answers per second of each endpoint alone, closed loop at concurrency 8 for RATE_S."""
    rates = {}
    for endpoint, path in ENDPOINTS.items():
        r = load_test(f"{server.inference_url}/{path}", payloads, 8, RATE_S, headers=server.auth("inference"),
                      check=ok_answer)
        assert r["statuses"] == {"200": r["requests"]}, (endpoint, r["statuses"])
        rates[endpoint] = r["img_s"]
    return rates


def mixed_rate(rates: dict) -> float:
    """The rate of the MIX that keeps the server just busy: each request costs 1/rate of a second."""
    return 1.0 / sum(share / rates[e] for e, share in MIX.items())


def baseline_labels(server, payloads) -> dict:
    sender = Sender(server)
    out = {}
    for endpoint in ENDPOINTS:
        for i in range(FIXED_IMAGES):
            r = sender.send(endpoint, i, payloads[i])
            assert r.ok, r
            out[endpoint, i] = r.label
    return out


# ---------------------------------------------------------------------------------------------
# The server's processes


def model_names() -> list[str]:
    return ["galaxy-b0", "galaxy-b2", *workflow_model_names()]


def workers(server) -> dict:
    """{worker: (pid, status)} of every worker of the models and the workflow's nodes, from the
    management API; a model's second worker is "MODEL#2"."""
    out = {}
    for name in model_names():
        r = requests.get(f"{server.management_url}/models/{name}", headers=server.auth("management"), timeout=30)
        r.raise_for_status()
        ws = sorted(r.json()[0]["workers"], key=lambda w: int(w["pid"]))
        assert ws, name
        for i, w in enumerate(ws):
            out[name if i == 0 else f"{name}#{i + 1}"] = (int(w["pid"]), w["status"])
    return out


def rss_mb(pids) -> dict:
    return {pid: round(psutil.Process(pid).memory_info().rss / 2 ** 20, 1) for pid in pids}


def frontend(server) -> dict:
    p = psutil.Process(server.pid)
    return {"rss_mb": round(p.memory_info().rss / 2 ** 20, 1), "threads": p.num_threads()}


def node_timeouts(server, since: int = 0) -> tuple[int, int]:
    """Workflow node calls that TorchServe timed out (and retried) in ts_log.log from byte `since`,
    and the log's size now. Each is a request stranded for the node's timeout-ms."""
    return log_lines(server, b"Timed out while executing", since)


def assert_workers_alive(server, before: dict) -> None:
    after = workers(server)
    children = {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
    assert after == before, f"workers changed: {before} -> {after}"
    assert all(pid in children for pid, _ in after.values()), (after, children)


# ---------------------------------------------------------------------------------------------
# Figures


def is_refusal(r: Result) -> bool:
    """TorchServe's answer when a job queue is full: 503 from a model; from the workflow, whose
    node got that 503, a 500 carrying the same message (TorchServe 0.12 answers 500 for any node
    failure)."""
    full = "has no worker to serve inference request" in r.message
    return r.status == 503 or (r.endpoint == "workflow" and r.status == 500 and full)


def ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def latency_figures(results: list[Result], prefix: str = "") -> dict:
    lat = [r.latency_s * 1000 for r in results]
    p = percentiles(lat)
    return {f"{prefix}p50_ms": p["p50_ms"], f"{prefix}p99_ms": p["p99_ms"],
            f"{prefix}max_ms": round(max(lat), 1) if lat else None}


def count(results: list[Result]) -> dict:
    """{"ok": answered with a label, "refused": queue full, "other": anything else}."""
    out = {"ok": [], "refused": [], "other": []}
    for r in results:
        out["ok" if r.ok else "refused" if is_refusal(r) else "other"].append(r)
    return out


# ---------------------------------------------------------------------------------------------


def test_overload_refuses_promptly_and_recovers(server, payloads):
    rates = sustainable_rates(server, payloads)
    sustainable = mixed_rate(rates)
    record("rates", **{f"{e}_req_s": round(v, 1) for e, v in rates.items()}, mix=MIX,
           mix_req_s=round(sustainable, 1), seconds_each=RATE_S, concurrency=8)
    labels = baseline_labels(server, payloads)
    before, front0 = workers(server), frontend(server)
    _, log_at = node_timeouts(server)

    offered = OVERLOAD_FACTOR * sustainable
    t0 = time.perf_counter()
    results, lag = open_loop(server, payloads, offered, OVERLOAD_S, seed=1)
    wall = time.perf_counter() - t0
    c = count(results)
    by_endpoint = {e: {k: sum(r.endpoint == e for r in v) for k, v in c.items()} for e in ENDPOINTS}
    slow_refusals = [r for r in c["refused"] if r.latency_s > REFUSAL_S]
    front1, (stranded, _) = frontend(server), node_timeouts(server, log_at)
    refused_max = {e: ms(max((r.latency_s for r in c["refused"] if r.endpoint == e), default=0)) for e in ENDPOINTS}
    record("overload", offered_req_s=round(offered, 1), factor=OVERLOAD_FACTOR, seconds=OVERLOAD_S,
           requests=len(results), answered_200=len(c["ok"]), refused=len(c["refused"]),
           other=len(c["other"]), by_endpoint=by_endpoint,
           goodput_req_s=round(len(c["ok"]) / OVERLOAD_S, 1),
           **latency_figures(c["ok"], "ok_"), **latency_figures(c["refused"], "refused_"),
           refused_max_ms_by_endpoint=refused_max, max_ms=ms(max(r.latency_s for r in results)),
           slow_refusals=len(slow_refusals), workflow_node_timeouts=stranded,
           client_send_lag_ms=ms(lag), wall_s=round(wall, 1),
           frontend_threads=f"{front0['threads']} -> {front1['threads']}",
           frontend_rss_mb=f"{front0['rss_mb']} -> {front1['rss_mb']}")
    assert not c["other"], [(r.endpoint, r.status, ms(r.latency_s), r.message[:120]) for r in c["other"][:10]]
    assert not slow_refusals, [(r.endpoint, r.status, ms(r.latency_s), r.message[:40]) for r in slow_refusals[:10]]
    assert max(r.latency_s for r in results) < CLIENT_TIMEOUT_S
    assert c["refused"], "the offered load was never refused: not an overload"
    assert_workers_alive(server, before)

    normal = NORMAL_FACTOR * sustainable
    after, _ = open_loop(server, payloads, normal, RECOVERY_S, images=FIXED_IMAGES, seed=2)
    changed = [(r.endpoint, r.image, labels[r.endpoint, r.image], r.label) for r in after
               if r.label != labels[r.endpoint, r.image]]
    record("recovery", rate_req_s=round(normal, 1), seconds=RECOVERY_S, requests=len(after),
           answered_200=sum(r.ok for r in after),
           labels_changed=len(changed), **latency_figures(after))
    assert all(r.status == 200 for r in after), [(r.endpoint, r.status, r.message[:120])
                                                 for r in after if r.status != 200][:10]
    assert not changed, changed[:10]
    assert_workers_alive(server, before)


@pytest.mark.timeout(3600)
def test_soak_worker_memory_stays_flat(server, payloads):
    before = workers(server)
    pids = [pid for pid, _ in before.values()]
    warm = closed_loop(server, payloads, SOAK_WARMUP, SOAK_CONCURRENCY, seed=3)
    rss0, front0 = rss_mb(pids), frontend(server)
    _, log_at = node_timeouts(server)

    t0 = time.perf_counter()
    results = closed_loop(server, payloads, SOAK_REQUESTS, SOAK_CONCURRENCY, seed=4)
    wall = time.perf_counter() - t0
    rss1, front1 = rss_mb(pids), frontend(server)
    stranded, _ = node_timeouts(server, log_at)
    name = {pid: model for model, (pid, _) in before.items()}
    growth = {name[p]: round(rss1[p] / rss0[p] - 1, 4) for p in pids}
    bad = [(r.endpoint, r.status, ms(r.latency_s), r.message[:120]) for r in warm + results
           if not r.ok]
    record("soak", requests=len(results), warmup=len(warm), concurrency=SOAK_CONCURRENCY, mix=MIX,
           duration_s=round(wall, 1), throughput_req_s=round(len(results) / wall, 1),
           answered_200=len(results) + len(warm) - len(bad), errors=len(bad),
           **latency_figures(results), workflow_node_timeouts=stranded,
           worker_rss_mb={name[p]: f"{rss0[p]} -> {rss1[p]}" for p in pids},
           max_rss_growth_pct=round(100 * max(growth.values()), 1),
           frontend_rss_mb=f"{front0['rss_mb']} -> {front1['rss_mb']}",
           frontend_threads=f"{front0['threads']} -> {front1['threads']}")
    assert not bad, bad[:10]
    assert stranded == 0, f"{stranded} workflow node calls waited out their timeout-ms (see ts_log.log)"
    assert_workers_alive(server, before)
    assert all(g <= RSS_GROWTH for g in growth.values()), growth


# ---------------------------------------------------------------------------------------------
# docs/reliability.md


def write_section() -> None:
    rates, over, rec, soak = (FIGURES[k] for k in ("rates", "overload", "recovery", "soak"))
    fmt = lambda figs: "; ".join(f"{k}: {v}" for k, v in figs.items())  # noqa: E731
    lines = [
        BEGIN,
        "## Overload and soak\n",
        f"Generated by `make soak` (tests/test_overload.py) on "
        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} ({os.cpu_count()} cores); "
        "a rerun replaces this section. Its own TorchServe (token auth on, 127.0.0.1, random-init "
        f"models, the archives' workers: {WORKERS_PER_MODEL} per model, job_queue_size=100); client timeout "
        f"{CLIENT_TIMEOUT_S:.0f} s. "
        "Latencies count from the scheduled arrival in the open-loop runs.\n",
        "| run | what is checked | figures |", "|---|---|---|",
        f"| sustainable rate | closed loop, 8 clients, {RATE_S:.0f} s on each endpoint alone; the mix's "
        f"rate from those | {fmt(rates)} |",
        f"| overload | open-loop Poisson arrivals at {OVERLOAD_FACTOR:g}x the mix's sustainable rate for "
        f"{OVERLOAD_S:.0f} s: every request answered 200 or refused (503; the workflow's 500 with the "
        f"queue-full message) within {REFUSAL_S:g} s, none past the client timeout, no worker restarted "
        f"| {fmt(over)} |",
        f"| after the overload | open loop at {NORMAL_FACTOR:g}x the sustainable rate for {RECOVERY_S:.0f} s "
        f"over {FIXED_IMAGES} fixed images: all 200, labels as before the overload | {fmt(rec)} |",
        f"| soak | {SOAK_REQUESTS} requests in a closed loop over the mix after a {SOAK_WARMUP}-request "
        f"warm-up: all 200, no workflow node call timed out, no worker restarted, no worker's RSS "
        f"{100 * RSS_GROWTH:.0f} % above its post-warm-up value | {fmt(soak)} |",
        END,
    ]
    section = "\n".join(lines)
    text = DOC.read_text() if DOC.is_file() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text.rstrip("\n") + "\n")
