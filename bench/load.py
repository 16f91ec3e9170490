"""HTTP load generator: concurrent clients, one image per request, with the servers' CPU time.

load_test measures one URL (img/s, latency percentiles, statuses, CPU ms per image); used by
bench.serving and, through bench.servers.measure_served, bench.gpu_serving; not a script.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time

import psutil
import requests

def cpu_seconds(procs) -> float:
    """User + system CPU seconds used so far by these processes (psutil.Process objects)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def load_test(url: str, payloads: list[bytes], concurrency: int, seconds: float,
              headers: dict | None = None, min_requests: int = 16, max_requests: int = 5000,
              check=None, server_procs=None) -> dict:
    """`concurrency` clients, each sending one image per request back to back for `seconds`.

    Returns img_s, latency percentiles (ms), counts by status. A request that fails is counted,
    never retried.
    """
    headers = {"Content-Type": "application/octet-stream", **(headers or {})}
    lock = threading.Lock()
    latencies, statuses, errors = [], {}, []
    counter = iter(range(10 ** 9))
    stop_at = [None]

    def client():
        s = requests.Session()
        # warm-up: one request each, not timed
        with contextlib.suppress(requests.RequestException):
            s.post(url, data=payloads[0], headers=headers, timeout=300)
        barrier.wait()
        while True:
            with lock:
                i = next(counter)
                if i >= max_requests or (time.perf_counter() > stop_at[0] and i >= min_requests):
                    return
            body = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                r = s.post(url, data=body, headers=headers, timeout=300)
                code = r.status_code
                if code == 200 and check is not None and not check(r):
                    code = "bad-answer"
            except requests.RequestException as e:
                code = type(e).__name__
            dt_ms = (time.perf_counter() - t0) * 1000
            with lock:
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    latencies.append(dt_ms)
                else:
                    errors.append(code)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    stop_at[0] = float("inf")  # until the clients are warm and the clock starts
    for t in threads:
        t.start()
    procs = server_procs() if server_procs else []
    barrier.wait()
    cpu0, first0 = cpu_seconds(procs), cpu_seconds(procs[:1])
    client0 = time.process_time()  # this process: the load generator's threads
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(procs) - cpu0
    first = cpu_seconds(procs[:1]) - first0  # TorchServe: the Java frontend
    client = time.process_time() - client0
    n = sum(statuses.values())
    return {"concurrency": concurrency, "requests": n, "ok": len(latencies),
            "img_s": len(latencies) / wall if wall else 0.0, "wall_s": round(wall, 2),
            "server_cpu_s": round(cpu, 2), "img_per_cpu_s": round(len(latencies) / cpu, 2) if cpu > 0 else None,
            "cpu_ms_per_img": round(1000 * cpu / len(latencies), 2) if latencies else None,
            "first_proc_cpu_ms_per_img": round(1000 * first / len(latencies), 2) if latencies else None,
            "client_cpu_ms_per_img": round(1000 * client / len(latencies), 2) if latencies else None,
            **percentiles(latencies), "statuses": {str(k): v for k, v in statuses.items()}}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    v = sorted(values)

    def pick(q):  # nearest-rank
        return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]

    return {"p50_ms": round(statistics.median(v), 1), "p95_ms": round(pick(95), 1),
            "p99_ms": round(pick(99), 1)}


def ok_answer(r: requests.Response) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "label" in body and "error" not in body


def fmt_result(r: dict) -> str:
    return (f"{r['img_s']:7.1f} img/s ({r['img_per_cpu_s']} per server CPU-s)  p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms"
            f"  ({r['requests']} requests, statuses {r['statuses']})")
