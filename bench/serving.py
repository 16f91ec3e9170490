"""Serving benchmark: raw in-process vs the seed's Flask endpoint vs TorchServe, one run, one table.

    make bench                         # = python -m bench.serving
    python -m bench.serving --seconds 4 --tune      # shorter runs, plus the tuning sweep

For b0, b2 and the ensemble, measured in the same run on this machine:
  raw      the same checkpoints in this process, eval transform already applied, batched,
           torch.inference_mode (the limit);
  flask    bench/flask_baseline.py, one Flask process that decodes, transforms and runs the
           model(s) per request (the seed's architecture), at concurrency 1 and 8;
  served   TorchServe (handlers/server.py, token auth on, free ports) with the galaxy-b0/b2
           handlers and the galaxy-ensemble workflow, at concurrency 1 and 8.
Clients send the 100 real sample JPEGs (samples/galaxy10_decals) one image per request, each
measurement runs for --seconds. Checkpoints come from runs/demo or checkpoints/demo, else random-init
ones in a temporary folder (speed does not depend on the weights). Besides wall-clock images/s,
each measurement counts the CPU seconds the server processes used, so that images per CPU-second
can be compared even when other processes share the cores. Every process runs with
OMP_WAIT_POLICY=PASSIVE (see below). Writes docs/benchmarks.md and docs/benchmarks.json (about
5 minutes on 2 cores); with --tune (about 15 minutes), also measures TorchServe variants (threads
per worker, OpenMP waiting, workers, batch size and delay, workflow timeout) and records what each
did; a run without --tune keeps the last sweep in the files.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# OpenMP threads that spin while they wait for work are ruinous when other processes share the
# cores: torch with 2 threads ran 10-50x slower than with 1 on this busy 2-core machine. Passive
# waiting is set before torch loads, here and (inherited) in the Flask and TorchServe processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402
import requests  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "galaxy10_decals"
DOCS = REPO / "docs"
TARGETS = ("b0", "b2", "ensemble")
CONCURRENCY = (1, 8)


# ---------------------------------------------------------------------------------------------
# Machine and inputs


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
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def sample_payloads() -> list[bytes]:
    files = sorted(SAMPLES.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no sample images in {SAMPLES}")
    return [f.read_bytes() for f in files]


def checkpoints(tmp: Path) -> tuple[Path, str]:
    """(run folder with b0/ and b2/, where it came from)."""
    for demo in (REPO / "runs" / "demo", REPO / "checkpoints" / "demo"):  # a rebuilt run first
        if all((demo / m / f).is_file() for m in ("b0", "b2") for f in ("model.pt", "meta.json")):
            return demo, str(demo.relative_to(REPO))
    import torch

    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES, get_spec

    run = tmp / "run"
    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(i)
        save_checkpoint(run / name, build_model(name), get_spec(name), GALAXY10_CLASSES, version="1.0",
                        data={"path": "random-init", "sha256": None, "n": 0})
    return run, "random-init (no demo checkpoints)"


# ---------------------------------------------------------------------------------------------
# Raw in-process


def raw_throughput(run: Path, payloads: list[bytes], seconds: float, batch: int = 8,
                   threads=(1, None)) -> dict:
    """Images/s of each model (and both, for the ensemble) on pre-transformed batches.

    Measured with each torch thread count in `threads` (None = torch's default, one per core);
    the best is the limit. Returns {target: img/s, target + "_threads": the count that won}.
    """
    import torch

    from galaxy_morph.imaging import decode_image
    from galaxy_morph.models import load_checkpoint
    from galaxy_morph.specs import ModelSpec
    from galaxy_morph.transforms import eval_transform

    images = [decode_image(p) for p in payloads[:32]]
    models, inputs = {}, {}
    for name in ("b0", "b2"):
        model, meta = load_checkpoint(run / name)
        models[name] = model.to(memory_format=torch.channels_last).eval()
        tf = eval_transform(ModelSpec.from_dict(meta["spec"]))
        x = torch.stack([tf(im) for im in images]).contiguous(memory_format=torch.channels_last)
        inputs[name] = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]

    def run_for(names) -> tuple[float, float]:
        with torch.inference_mode():
            for n in names:  # warm-up
                models[n](inputs[n][0])
            done, k, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
            while True:
                for n in names:
                    torch.softmax(models[n](inputs[n][k % len(inputs[n])]), 1)
                done += batch
                k += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds and done >= 2 * batch:
                    return done / elapsed, done / max(1e-9, time.process_time() - c0)

    default = torch.get_num_threads()
    out = {}
    try:
        for th in threads:
            torch.set_num_threads(th or default)
            for t, names in (("b0", ["b0"]), ("b2", ["b2"]), ("ensemble", ["b0", "b2"])):
                v, per_cpu = run_for(names)
                if v > out.get(t, 0):
                    out[t], out[t + "_threads"] = v, th or default
                out[t + "_per_cpu"] = max(out.get(t + "_per_cpu", 0), per_cpu)
    finally:
        torch.set_num_threads(default)
    del models, inputs
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
# HTTP load


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
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(procs) - cpu0
    first = cpu_seconds(procs[:1]) - first0  # TorchServe: the Java frontend
    n = sum(statuses.values())
    return {"concurrency": concurrency, "requests": n, "ok": len(latencies),
            "img_s": len(latencies) / wall if wall else 0.0, "wall_s": round(wall, 2),
            "server_cpu_s": round(cpu, 2), "img_per_cpu_s": round(len(latencies) / cpu, 2) if cpu > 0 else None,
            "cpu_ms_per_img": round(1000 * cpu / len(latencies), 2) if latencies else None,
            "first_proc_cpu_ms_per_img": round(1000 * first / len(latencies), 2) if latencies else None,
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


# ---------------------------------------------------------------------------------------------
# Servers


@contextlib.contextmanager
def flask_server(run: Path, log: Path):
    from handlers.server import free_port
    from galaxy_service.client import wait_for

    port = free_port()
    cmd = [sys.executable, "-m", "bench.flask_baseline", "--port", str(port),
           "--b0", str(run / "b0"), "--b2", str(run / "b2")]
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
    from handlers.archive import build_all

    with contextlib.redirect_stdout(sys.stderr):
        build_all(run, store, model_config=model_config, workflow_models=workflow_models)
    return store


@contextlib.contextmanager
def torchserve(store: Path, workdir: Path, env: dict | None = None):
    """A TorchServe of our own on free ports (token auth on), stopped on exit."""
    from handlers import server as ts_server

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


# ---------------------------------------------------------------------------------------------
# The run


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


def fmt_result(r: dict) -> str:
    return (f"{r['img_s']:7.1f} img/s ({r['img_per_cpu_s']} per server CPU-s)  p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms"
            f"  ({r['requests']} requests, statuses {r['statuses']})")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Changes on top of the archive defaults (handlers/archive.py) that the benchmark serves with.
# TorchServe 0.12's workflow executor enqueues a node's job before it attaches the response
# future (DagExecutor.invokeModel: addRESTInferenceJob, then setResponsePromise); when a fast node
# answers in between, the answer is dropped and the node waits timeout-ms (120 s in the archive)
# before its retry. A short timeout with more retries turns that stall into a few seconds.
CHOSEN_WORKFLOW = {"timeout-ms": 5000, "retry-attempts": 3}
CHOSEN_MODEL = {}
# Torch's default threads (one per core) in every worker, with OMP_WAIT_POLICY=PASSIVE (set above,
# inherited): the sweep measured 1 thread, 2 threads spinning, and 2 workers of 1 thread.
CHOSEN_ENV = {}
CHOSEN_LABEL = ("chosen: 1 worker per model, batch 8 / 10 ms, torch default threads (2) with "
                "passive OpenMP waiting, workflow timeout-ms 5000 x 3 attempts")

TUNING = [
    # (label, env for the workers, model-config overrides, workflow overrides)
    ("archive defaults as shipped (workflow timeout-ms 120000, retry-attempts 1)", {}, {},
     {"timeout-ms": 120000, "retry-attempts": 1}),
    ("OpenMP spin-waiting (OMP_WAIT_POLICY unset: torch's default)", {"OMP_WAIT_POLICY": None}, {}, {}),
    ("1 torch thread per worker (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}, {}, {}),
    ("2 workers per model, 1 torch thread each", {"OMP_NUM_THREADS": "1"},
     {"minWorkers": 2, "maxWorkers": 2}, {"min-workers": 2, "max-workers": 2}),
    ("batch size 8, max delay 50 ms (the earlier default)", {}, {"maxBatchDelay": 50},
     {"max-batch-delay": 50}),
    ("batch size 4, max delay 20 ms", {}, {"batchSize": 4, "maxBatchDelay": 20},
     {"batch-size": 4, "max-batch-delay": 20}),
    ("batch size 16, max delay 100 ms", {}, {"batchSize": 16, "maxBatchDelay": 100},
     {"batch-size": 16, "max-batch-delay": 100}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    ap.add_argument("--tune", action="store_true",
                    help="also measure TorchServe variants at c=8 (adds ~2 min per variant)")
    ap.add_argument("--out", default=str(DOCS), help="folder for benchmarks.md/json")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    info = machine_info()
    payloads = sample_payloads()
    results = {t: {} for t in TARGETS}
    raws = []
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as tmp:
        tmp = Path(tmp)
        run, source = checkpoints(tmp)
        info["checkpoints"] = source
        log(f"checkpoints: {source}; {len(payloads)} sample JPEGs; {args.seconds:g} s per measurement")

        def raw_round(when):
            r = raw_throughput(run, payloads, args.seconds / 3)
            raws.append(r)
            log(f"raw in-process ({when}): " + ", ".join(f"{t} {r[t]:.1f} ({r[t + '_threads']} threads)"
                                                        for t in TARGETS) + " img/s")

        raw_round("first")
        log("Flask baseline ...")
        with flask_server(run, tmp / "flask.log") as (url, proc):
            for t in TARGETS:
                for c in CONCURRENCY:
                    r = load_test(f"{url}/predict/{t}", payloads, c, args.seconds, check=ok_answer,
                                  server_procs=lambda: [psutil.Process(proc.pid)])
                    results[t][f"flask_c{c}"] = r
                    log(f"  flask  {t:8s} c={c}: {fmt_result(r)}")
            flask_rss = round(psutil.Process(proc.pid).memory_info().rss / 2 ** 20)
        raw_round("between Flask and TorchServe")

        log("TorchServe: building archives, starting ...")
        store = build_store(run, tmp / "store", CHOSEN_MODEL, CHOSEN_WORKFLOW)
        t0 = time.time()
        with torchserve(store, tmp / "ts", CHOSEN_ENV) as server:
            startup_s = time.time() - t0
            served = measure_served(server, payloads, args.seconds)
            memory = served_memory(server)
            settings = served_settings(server)
        for (t, c), r in served.items():
            results[t][f"served_c{c}"] = r
        raw_round("last")

        tuning = None
        if args.tune:
            tuning = {"date": info["date"], "seconds": args.seconds,
                      "rows": run_tuning(run, tmp, payloads, args.seconds, served)}
    for t in TARGETS:
        results[t]["raw_runs"] = [round(r[t], 1) for r in raws]
        results[t]["raw_threads"] = [r[t + "_threads"] for r in raws]
        results[t]["raw_per_cpu"] = statistics.median(r[t + "_per_cpu"] for r in raws)
        results[t]["raw_img_s"] = statistics.median(r[t] for r in raws)
    if tuning is None:  # keep the last sweep (it takes long), marked with its date
        with contextlib.suppress(OSError, ValueError, KeyError):
            tuning = json.loads((out_dir / "benchmarks.json").read_text())["tuning"]

    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["bench_wall_s"] = round(time.time() - t_start)
    settings["changes_over_archive_defaults"] = {"workflow": CHOSEN_WORKFLOW, "model-config": CHOSEN_MODEL,
                                                 "env": CHOSEN_ENV}
    summary = summarise(results, memory, flask_rss)
    (out_dir / "benchmarks.json").write_text(json.dumps(
        {**summary, "machine": info, "settings": settings, "tuning": tuning,
         "detail": {t: {k: v for k, v in results[t].items()} for t in TARGETS}}, indent=1) + "\n")
    write_md(out_dir / "benchmarks.md", results, summary, info, memory, flask_rss, settings, startup_s,
             tuning, args)
    log(f"wrote {out_dir / 'benchmarks.md'} and benchmarks.json in {info['bench_wall_s']} s")
    print((out_dir / "benchmarks.md").read_text().split("\n## Memory")[0])
    return 0


def served_settings(server) -> dict:
    """What the running TorchServe says about each model: workers, batch size, delay."""
    ts = server.client()
    out = {}
    for m in ts.list_models():
        d = ts.describe(m["modelName"], customized=False)[0]
        out[m["modelName"]] = {"workers": len(d.get("workers", [])), "batchSize": d.get("batchSize"),
                               "maxBatchDelay": d.get("maxBatchDelay")}
    out["torch_threads_per_worker"] = (CHOSEN_ENV.get("OMP_NUM_THREADS")
                                       or f"torch default (one per core: {os.cpu_count()})")
    return out


def run_tuning(run, tmp, payloads, seconds, chosen) -> list[dict]:
    def row(label, res):
        return {"variant": label, **{t: round(res[(t, 8)]["img_s"], 1) for t in TARGETS},
                "per_cpu": {t: res[(t, 8)]["img_per_cpu_s"] for t in TARGETS},
                "p50": {t: res[(t, 8)]["p50_ms"] for t in TARGETS},
                "p99": {t: res[(t, 8)]["p99_ms"] for t in TARGETS}}

    rows = [row(CHOSEN_LABEL + " (the table above)", chosen)]
    for i, (label, env, mc, wf) in enumerate(TUNING):
        log(f"tuning: {label} ...")
        store = build_store(run, tmp / f"store{i}", {**CHOSEN_MODEL, **mc}, {**CHOSEN_WORKFLOW, **wf})
        try:
            with torchserve(store, tmp / f"ts{i}", {**CHOSEN_ENV, **env}) as server:
                res = measure_served(server, payloads, seconds, concurrencies=(8,))
        except Exception as e:  # a variant that does not start is a result too
            rows.append({"variant": label, "error": str(e)[:200]})
            continue
        finally:
            import shutil

            shutil.rmtree(tmp / f"store{i}", ignore_errors=True)
        rows.append(row(label, res))
    return rows


def summarise(results: dict, memory: dict, flask_rss: int) -> dict:
    out = {}
    for t in TARGETS:
        r = results[t]
        best = max((r["served_c1"], r["served_c8"]), key=lambda x: x["img_s"])
        flask_best = max((r["flask_c1"], r["flask_c8"]), key=lambda x: x["img_s"])
        c8 = r["served_c8"]
        raw = r["raw_img_s"]
        out[t] = {"raw_img_s": round(raw, 1), "flask_img_s": round(flask_best["img_s"], 1),
                  "served_img_s": round(best["img_s"], 1), "served_best_concurrency": best["concurrency"],
                  "p50_ms": c8["p50_ms"], "p95_ms": c8["p95_ms"], "p99_ms": c8["p99_ms"],
                  "served_over_raw": round(best["img_s"] / raw, 2) if raw else None,
                  "served_over_flask_c8": round(c8["img_s"] / r["flask_c8"]["img_s"], 2)
                  if r["flask_c8"]["img_s"] else None,
                  "served_errors": sum(v for x in (r["served_c1"], c8)
                                       for k, v in x["statuses"].items() if k != "200"),
                  # images per CPU-second the server (or this process, for raw) spent: robust to
                  # other processes sharing the cores, which the wall-clock figures are not
                  "raw_img_per_cpu_s": round(r["raw_per_cpu"], 2),
                  "flask_img_per_cpu_s_c8": r["flask_c8"]["img_per_cpu_s"],
                  "served_img_per_cpu_s_c8": c8["img_per_cpu_s"]}
        per = out[t]
        per["served_over_raw_per_cpu"] = (round(per["served_img_per_cpu_s_c8"] / per["raw_img_per_cpu_s"], 2)
                                          if per["served_img_per_cpu_s_c8"] and per["raw_img_per_cpu_s"] else None)
        per["served_over_flask_per_cpu_c8"] = (
            round(per["served_img_per_cpu_s_c8"] / per["flask_img_per_cpu_s_c8"], 2)
            if per["served_img_per_cpu_s_c8"] and per["flask_img_per_cpu_s_c8"] else None)
    out["memory"] = {"torchserve_rss_mb": memory["rss"], "torchserve_pss_mb": memory["pss"],
                     "flask_baseline_rss_mb": flask_rss}
    return out


def goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write_md(path, results, summary, info, memory, flask_rss, settings, startup_s, tuning, args) -> None:
    L = []
    L.append("# Serving benchmark\n")
    L.append(f"Generated by `make bench` (`python -m bench.serving --seconds {args.seconds:g}"
             f"{' --tune' if args.tune else ''}`) on {info['date']}; do not edit by hand.\n")
    L.append("One image per request (the 100 real sample JPEGs, 256x256), each measurement "
             f"{args.seconds:g} s after one warm-up request per client. img/s = answered requests / wall "
             "time; latency is per request as the client saw it. **Raw** = the same checkpoints in this "
             "process, eval transform already applied, batches of 8, `torch.inference_mode`, "
             "channels_last, the better of 1 and 2 torch threads (median of three rounds: before "
             "Flask, between, after TorchServe). Ensemble "
             "raw = b0 and b2 both run on every image (raw b0+b2). **Flask** = the seed's architecture "
             "(bench/flask_baseline.py: one process, decode + transform + model per request, Flask's "
             "threaded server). **Served** = TorchServe with the project's handlers and workflow, token "
             "auth on.\n")
    L.append("| model | raw img/s | Flask c=1 | Flask c=8 | served c=1 | served c=8 "
             "| served/raw | served/Flask c=8 | served c=1 p50/p95/p99 ms | served c=8 p50/p95/p99 ms "
             "| Flask c=8 p50/p95/p99 ms |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for t in TARGETS:
        r, s = results[t], summary[t]
        c1, c8, f8 = r["served_c1"], r["served_c8"], r["flask_c8"]
        L.append(f"| {t} | {r['raw_img_s']:.1f} | {r['flask_c1']['img_s']:.1f} | {f8['img_s']:.1f} | "
                 f"{c1['img_s']:.1f} | {c8['img_s']:.1f} | {s['served_over_raw']} | "
                 f"{s['served_over_flask_c8']} | {c1['p50_ms']} / {c1['p95_ms']} / {c1['p99_ms']} | "
                 f"{c8['p50_ms']} / {c8['p95_ms']} / {c8['p99_ms']} | "
                 f"{f8['p50_ms']} / {f8['p95_ms']} / {f8['p99_ms']} |")
    L.append("")
    L.append("The same runs per CPU-second (images answered / CPU seconds used by the server processes "
             "during the measurement: TorchServe frontend + all workers, the Flask process, or this "
             "process for raw; the load generator is not counted). Other processes on the machine "
             "take wall-clock time from every column above; they do not change these:\n")
    L.append("| model | raw img/CPU-s | Flask c=8 img/CPU-s | served c=8 img/CPU-s | served/raw | served/Flask "
             "| served CPU ms per image: all / Java frontend |")
    L.append("|---|---:|---:|---:|---:|---:|---|")
    for t in TARGETS:
        s_, c8 = summary[t], results[t]["served_c8"]
        L.append(f"| {t} | {s_['raw_img_per_cpu_s']} | {s_['flask_img_per_cpu_s_c8']} | "
                 f"{s_['served_img_per_cpu_s_c8']} | {s_['served_over_raw_per_cpu']} | "
                 f"{s_['served_over_flask_per_cpu_c8']} | {c8.get('cpu_ms_per_img')} / "
                 f"{c8.get('first_proc_cpu_ms_per_img')} |")
    L.append("")
    L.append("Raw rounds (img/s, torch threads of the best): " + "; ".join(
        f"{t} {results[t]['raw_runs']} ({results[t]['raw_threads']})" for t in TARGETS) + ".")
    errs = {f"{t} {k}": v["statuses"] for t in TARGETS for k, v in results[t].items()
            if isinstance(v, dict) and any(code != "200" for code in v["statuses"])}
    L.append(f"Requests without a 200 answer: {errs or 'none'}.\n")
    L.append("## Goals\n")
    L.append("| goal | wall clock | | per CPU-second | |")
    L.append("|---|---|---|---|---|")
    for t, need in (("b0", 0.8), ("b2", 0.8), ("ensemble", 0.7)):
        s_ = summary[t]
        what = f"{t} served >= {need}x raw" + (" b0+b2" if t == "ensemble" else "")
        L.append(f"| {what} | {s_['served_over_raw']}x | {goal((s_['served_over_raw'] or 0) >= need)} | "
                 f"{s_['served_over_raw_per_cpu']}x | {goal((s_['served_over_raw_per_cpu'] or 0) >= need)} |")
    for t in TARGETS:
        s = summary[t]
        ratio = round(s["p99_ms"] / s["p50_ms"], 2) if s["p50_ms"] and s["p99_ms"] else None
        L.append(f"| {t}: p99 < 3x p50 at c=8 | {ratio}x | {goal(ratio is not None and ratio < 3)} | | |")
    for t in TARGETS:
        s_ = summary[t]
        L.append(f"| {t}: TorchServe ahead of Flask at c=8 | {s_['served_over_flask_c8']}x | "
                 f"{goal((s_['served_over_flask_c8'] or 0) > 1)} | {s_['served_over_flask_per_cpu_c8']}x | "
                 f"{goal((s_['served_over_flask_per_cpu_c8'] or 0) > 1)} |")
    rss, pss = memory["rss"]["total"], memory["pss"]["total"]
    L.append(f"| served stack < 3 GB | RSS {rss} MB | {goal(rss < 3072)} | PSS {pss} MB | "
             f"{goal(pss < 3072)} (PSS) |")
    L.append("")
    L.append("## Memory after the load tests (MB)\n")
    L.append("Every TorchServe worker is its own Python process and imports torch (TorchServe's worker "
             "does so itself, before any handler); this torch build maps its CUDA libraries at import, "
             "about 0.7 GB of RSS per process before a model is loaded. The workflow adds four workers: "
             "its own copies of both models (`galaxy-ensemble__b0`, `__b2`) and one per function node "
             "(`__pre`, `__ensemble`). RSS counts the shared library pages once per process; PSS "
             "divides them among the processes that share them, so the PSS total is what the stack "
             "really holds.\n")
    L.append("| process | RSS | PSS |")
    L.append("|---|---:|---:|")
    for k in memory["rss"]:
        if k != "total":
            L.append(f"| {k} | {memory['rss'][k]} | {memory['pss'].get(k)} |")
    L.append(f"| **TorchServe total** | **{rss}** | **{pss}** |")
    L.append(f"| Flask baseline (one process, b0 + b2) | {flask_rss} | |")
    L.append("")
    L.append("## Machine\n")
    L.append(f"- CPU: {info['cpu']}, {info['cores']} cores; RAM {info['ram_gb']} GB")
    L.append(f"- Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
             f"TorchServe {info['torchserve']}, Flask {info['flask']}")
    L.append(f"- Checkpoints: {info['checkpoints']}")
    L.append(f"- Load average at start {info['load_avg_start']}, at end {info['load_avg_end']}: other "
             "processes may share these cores, so compare columns of one run, not runs")
    L.append(f"- TorchServe start until every worker READY and the workflow registered: {startup_s:.0f} s; "
             f"whole bench {info['bench_wall_s']} s")
    L.append("")
    L.append("## TorchServe settings measured\n")
    L.append("The archives' `model-config.yaml` and workflow spec (handlers/archive.py) and "
             "config.properties, as the describe API reports them:\n")
    L.append("| model | workers | batch size | max batch delay ms |")
    L.append("|---|---:|---:|---:|")
    for k, v in settings.items():
        if isinstance(v, dict) and "workers" in v:
            L.append(f"| {k} | {v['workers']} | {v['batchSize']} | {v['maxBatchDelay']} |")
    ch = settings["changes_over_archive_defaults"]
    L.append(f"\nTorch threads per worker: {settings.get('torch_threads_per_worker')}; every process of "
             "the benchmark (raw, Flask, TorchServe) runs with OMP_WAIT_POLICY=PASSIVE. The handler runs "
             "`torch.inference_mode` with channels_last. Changed on top of the archive defaults for this "
             f"run: workflow {ch['workflow'] or 'none'}, model-config {ch['model-config'] or 'none'}, "
             f"environment {ch['env'] or 'none'}. Why the workflow timeout: TorchServe 0.12's "
             "workflow executor enqueues a node's job before it attaches the future that receives the "
             "answer, so a node that answers in between (a fast function node on a busy machine) has "
             "its answer dropped and the request waits `timeout-ms` before the node is retried.\n")
    if tuning:
        L.append(f"## Tuning: what each change did (TorchServe at c=8; sweep of {tuning['date']}, "
                 f"`python -m bench.serving --tune`)\n")
        L.append("| variant | b0 img/s | b2 img/s | ensemble img/s | img/CPU-s b0 / b2 / ensemble "
                 "| p50 / p99 ms b0 | b2 | ensemble |")
        L.append("|---|---:|---:|---:|---|---|---|---|")
        for row in tuning["rows"]:
            if "error" in row:
                L.append(f"| {row['variant']} | failed: {row['error']} | | | | | | |")
                continue
            p50, p99, pc = row.get("p50", {}), row["p99"], row.get("per_cpu", {})
            L.append(f"| {row['variant']} | {row['b0']} | {row['b2']} | {row['ensemble']} | "
                     + " / ".join(str(pc.get(t)) for t in TARGETS) + " | "
                     + " | ".join(f"{p50.get(t)} / {p99[t]}" for t in TARGETS) + " |")
        L.append("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
