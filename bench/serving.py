"""Serving benchmark: raw in-process (model-only and from bytes) vs the seed's Flask endpoint vs
TorchServe, and `make predict` on Ray, one run, one table.

    make bench                         # = python -m bench.serving
    python -m bench.serving --seconds 4 --tune      # shorter runs, plus the tuning sweep
    python -m bench.serving --ray-images 0          # without the Ray run

For b0, b2 and the ensemble, measured in the same run on this machine:
  raw model-only   the same checkpoints in this process, eval transform already applied, batched,
                   torch.inference_mode (the physical limit);
  raw from bytes   the same JPEG bytes the clients send, decoded (galaxy_morph.imaging.decode_image),
                   eval-transformed and run in batches in this process (classify_bytes): what a
                   user's own script does without a server; the ensemble decodes once and runs both
                   models (the workflow's work). The goals judge the server against this one;
  flask            bench/flask_baseline.py, one Flask process that decodes, transforms and runs the
                   model(s) per request (the seed's architecture), at concurrency 1 and 8;
  served           TorchServe (torchserve_ops/server.py, token auth on, free ports) with the galaxy-b0/b2
                   handlers and the galaxy-ensemble workflow, at concurrency 1 and 8;
  ray              `make predict`'s command (prediction.ray_predict, local Ray) on --ray-images
                   copies of the samples, against raw from bytes measured right after it.
Clients send the 100 real sample JPEGs (samples/galaxy10_decals) one image per request, each
measurement runs for --seconds. Checkpoints come from checkpoints/demo (what make serve serves)
or runs/demo, else random-init ones in a temporary folder (speed does not depend on the weights). Besides wall-clock images/s,
each measurement counts the CPU seconds the server processes used, so that images per CPU-second
can be compared even when other processes share the cores, and the stages of raw from bytes
(decode, transform, forward) are timed, so that the server's share of the time can be read off.
Every process runs with OMP_WAIT_POLICY=PASSIVE (see below). Writes docs/benchmarks.md and
docs/benchmarks.json (about 5 minutes on 2 cores); with --tune (about 7 minutes more), also measures
TorchServe variants (batch size and delay, threads, workers), each next to raw from bytes; a run
without --tune keeps the last sweep in the files, a run with --ray-images 0 the last Ray figures.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
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
    for demo in (REPO / "checkpoints" / "demo", REPO / "runs" / "demo"):  # what make serve serves
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
# Raw in-process: model-only, and from the same JPEG bytes


def load_members(run: Path) -> dict:
    """{"b0": (model, eval transform), "b2": ...}: the checkpoints as the handler loads them."""
    import torch

    from galaxy_morph.models import load_checkpoint

    members = {}
    for name in ("b0", "b2"):
        ckpt = load_checkpoint(run / name)
        members[name] = (ckpt.model.to(memory_format=torch.channels_last).eval(), ckpt.transform)
    return members


def classify_bytes(payloads, members: dict, timings: dict | None = None) -> dict:
    """What a user's own script does with a batch of image bytes, without a server: decode each
    image once (galaxy_morph.imaging.decode_image, the handler's), then per model its eval
    transform, one batched channels_last forward and softmax, as the handler runs it.

    `members` {name: (model, transform)}: one entry for B0 or B2, both for the ensemble (the
    workflow's work: one image, both models). Returns {name: probabilities (list per image)};
    adds the seconds spent to `timings` ("decode", "transform", "forward")."""
    import torch

    from galaxy_morph.imaging import decode_image

    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    images = [decode_image(p) for p in payloads]
    t1 = time.perf_counter()
    timings["decode"] = timings.get("decode", 0.0) + t1 - t0
    out = {}
    for name, (model, transform) in members.items():
        t1 = time.perf_counter()
        x = torch.stack([transform(im) for im in images]).contiguous(memory_format=torch.channels_last)
        t2 = time.perf_counter()
        with torch.inference_mode():
            out[name] = torch.softmax(model(x).float(), 1).tolist()
        t3 = time.perf_counter()
        timings["transform"] = timings.get("transform", 0.0) + t2 - t1
        timings["forward"] = timings.get("forward", 0.0) + t3 - t2
    return out


TARGET_MEMBERS = {"b0": ("b0",), "b2": ("b2",), "ensemble": ("b0", "b2")}


def raw_throughput(members: dict, payloads: list[bytes], seconds: float, batch: int = 8,
                   threads=(1, None), targets=TARGETS) -> dict:
    """Images/s in this process, batches of `batch`, two ways, for each target:

      "model": pre-transformed tensors into the model(s): the physical limit;
      "bytes": the sample JPEG bytes through classify_bytes (decode + transform + forward).

    Measured with each torch thread count in `threads` (None = torch's default, one per core).
    Returns {mode: {target: {"img_s" (the best thread count), "threads", "per_cpu",
    "by_threads" {n: img/s}, and for "bytes" the ms per image of decode, transform, forward}}}.
    """
    import torch

    from galaxy_morph.imaging import decode_image

    n_batches = max(1, len(payloads) // batch)
    byte_batches = [payloads[i * batch:(i + 1) * batch] for i in range(n_batches)]
    images = [decode_image(p) for p in payloads[:4 * batch]]
    tensors = {n: [torch.stack([tf(im) for im in images[i:i + batch]]).contiguous(memory_format=torch.channels_last)
                   for i in range(0, len(images) - batch + 1, batch)]
               for n, (_, tf) in members.items()}

    def run_for(mode, names) -> dict:
        sub = {n: members[n] for n in names}
        timings: dict = {}

        def step(k):
            if mode == "bytes":
                classify_bytes(byte_batches[k % len(byte_batches)], sub, timings)
            else:
                with torch.inference_mode():
                    for n in names:
                        torch.softmax(sub[n][0](tensors[n][k % len(tensors[n])]), 1)

        step(0)  # warm-up
        timings.clear()
        done, k, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
        while True:
            step(k)
            done += batch
            k += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and done >= 2 * batch:
                r = {"img_s": done / elapsed, "per_cpu": done / max(1e-9, time.process_time() - c0)}
                r.update({f"{s}_ms": 1000 * v / done for s, v in timings.items()})
                return r

    default = torch.get_num_threads()
    out = {"model": {}, "bytes": {}}
    try:
        for th in threads:
            torch.set_num_threads(th or default)
            for mode in ("model", "bytes"):
                for t in targets:
                    r = run_for(mode, TARGET_MEMBERS[t])
                    cur = out[mode].setdefault(t, {"img_s": 0.0, "per_cpu": 0.0, "by_threads": {}})
                    cur["by_threads"][th or default] = round(r["img_s"], 1)
                    cur["per_cpu"] = max(cur["per_cpu"], r["per_cpu"])
                    if r["img_s"] > cur["img_s"]:
                        cur.update({k: v for k, v in r.items() if k != "per_cpu"}, threads=th or default)
    finally:
        torch.set_num_threads(default)
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


# ---------------------------------------------------------------------------------------------
# Servers


@contextlib.contextmanager
def flask_server(run: Path, log: Path):
    from torchserve_ops.server import free_port
    from torchserve_ops.client import wait_for

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
    from torchserve_ops.archive import build_all

    with contextlib.redirect_stdout(sys.stderr):
        build_all(run, store, model_config=model_config, workflow_models=workflow_models)
    return store


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


# ---------------------------------------------------------------------------------------------
# make predict (Ray Data, no server) on the same images


def ray_predict_rate(payloads: list[bytes], tmp: Path, n_images: int, model: str = "ensemble",
                     shard_size: int = 150, extra_args=(), timeout: float = 900) -> dict:
    """`make predict`'s command (python -m prediction.ray_predict, its defaults: local Ray
    started and stopped by the command, model actors as it sizes them) on `n_images` copies of
    the sample JPEGs in a folder. Returns the wall time and the end-to-end rate (Ray's start
    included); main() runs it twice (N/4 and N images) for the marginal rate without the start.
    (The shards' own times cannot give it: Ray Data hands every shard to the actor at once and they
    all finish together at the end.)"""
    folder = tmp / "ray-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n_images):
        (folder / f"{i:06d}.jpg").write_bytes(payloads[i % len(payloads)])
    out = tmp / "ray-predict.csv"
    for stale in (out, out.with_name(out.name + ".parts")):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "prediction.ray_predict", "--input", str(folder), "--out", str(out),
           "--model", model, "--shard-size", str(shard_size), "--quiet", *extra_args]
    shard_times = []
    t0 = time.perf_counter()
    with open(tmp / "ray-predict.log", "ab") as err:
        # unbuffered, so that each "shard ..." line arrives when the shard is written
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("shard "):
                    shard_times.append(time.perf_counter() - t0)
            rc = proc.wait()
        finally:
            timer.cancel()
    wall = time.perf_counter() - t0
    rows = max(0, len(out.read_text().splitlines()) - 1) if out.is_file() else 0
    cmdline = "python -m prediction.ray_predict " + " ".join(
        a if a not in (str(folder), str(out)) else ("DIR" if a == str(folder) else "OUT.csv") for a in cmd[3:])
    return {"model": model, "images": n_images, "rows": rows, "rc": rc, "wall_s": round(wall, 1),
            "img_s_end_to_end": round(rows / wall, 1) if wall else None,
            "first_shard_s": round(shard_times[0], 1) if shard_times else None,
            "shards": len(shard_times), "shard_size": shard_size, "command": cmdline}


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


# What the benchmark serves with on top of the archive defaults (torchserve_ops/archive.py: batches of
# up to 8 images, 10 ms delay, one worker per model, workflow nodes timeout-ms 5000 x 3 attempts
# against TorchServe 0.12's lost-answer race): nothing, so the table is what `make serve` runs.
CHOSEN_WORKFLOW = {}
CHOSEN_MODEL = {}
# Torch's default threads (one per core) in every worker, with OMP_WAIT_POLICY=PASSIVE (set above,
# inherited): spinning OpenMP threads were 10-50x slower on this shared machine.
CHOSEN_ENV = {}
CHOSEN_LABEL = ("archive defaults: 1 worker per model, batch 8 / 10 ms, torch default threads (2), "
                "passive OpenMP waiting")

# What TorchServe offers through configuration (torchserve_ops.archive.build_all(model_config=...,
# workflow_models=...) and the workers' environment), each measured at c=8 next to raw-from-bytes.
TUNING = [
    # (label, env for the workers, model-config overrides, workflow overrides)
    ("batch 8, max delay 2 ms", {}, {"maxBatchDelay": 2}, {"max-batch-delay": 2}),
    ("batch 8, max delay 50 ms", {}, {"maxBatchDelay": 50}, {"max-batch-delay": 50}),
    ("batch 4, max delay 10 ms", {}, {"batchSize": 4}, {"batch-size": 4}),
    ("batch 16, max delay 20 ms", {}, {"batchSize": 16, "maxBatchDelay": 20},
     {"batch-size": 16, "max-batch-delay": 20}),
    ("1 torch thread per worker (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}, {}, {}),
    ("2 workers per model, 1 torch thread each", {"OMP_NUM_THREADS": "1"},
     {"minWorkers": 2, "maxWorkers": 2}, {"min-workers": 2, "max-workers": 2}),
]

# Goals of issue 10 on this machine: served at c=8 against raw-from-bytes in this process.
GOALS = {"b0": 0.85, "b2": 0.85, "ensemble": 0.7}
P99_OVER_P50 = 3.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    ap.add_argument("--tune", action="store_true",
                    help="also measure TorchServe variants at c=8 (about 1 min per variant)")
    ap.add_argument("--ray-images", type=int, default=600,
                    help="images (copies of the samples) for make predict on Ray; 0: skip Ray")
    ap.add_argument("--ray-model", default="ensemble", choices=TARGETS, help="model for the Ray run")
    ap.add_argument("--out", default=str(DOCS), help="folder for benchmarks.md/json")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    info = machine_info()
    payloads = sample_payloads()
    results = {t: {} for t in TARGETS}
    raws = []
    previous = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((out_dir / "benchmarks.json").read_text())
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as tmp:
        tmp = Path(tmp)
        run, source = checkpoints(tmp)
        info["checkpoints"] = source
        log(f"checkpoints: {source}; {len(payloads)} sample JPEGs; {args.seconds:g} s per measurement")
        members = load_members(run)

        def raw_round(when):
            r = raw_throughput(members, payloads, args.seconds / 3)
            raws.append(r)
            for mode in ("model", "bytes"):
                log(f"raw {mode:5s} ({when}): " + ", ".join(
                    f"{t} {r[mode][t]['img_s']:.1f} ({r[mode][t]['threads']} threads)" for t in TARGETS) + " img/s")

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
        collect_raw(results, raws)

        ray = previous.get("ray")
        if args.ray_images > 0:
            log(f"make predict on Ray: {args.ray_images} images, {args.ray_model} ...")
            small = ray_predict_rate(payloads, tmp, max(1, args.ray_images // 4), args.ray_model)
            ray = ray_predict_rate(payloads, tmp, args.ray_images, args.ray_model)
            ray["small"] = {k: small[k] for k in ("images", "rows", "rc", "wall_s")}
            ray["img_s_marginal"] = marginal_rate(small, ray)
            ray["date"] = info["date"]
            r = raw_throughput(members, payloads, args.seconds / 3, targets=(args.ray_model,))
            ray["raw_bytes_img_s"] = round(r["bytes"][args.ray_model]["img_s"], 1)
            ray["raw_bytes_by_threads"] = r["bytes"][args.ray_model]["by_threads"]
            log(f"  ray: {ray}")

        tuning = None
        if args.tune:
            tuning = {"date": info["date"], "seconds": args.seconds,
                      "rows": run_tuning(run, members, tmp, payloads, args.seconds, served, results)}
    if tuning is None:  # keep the last sweep (it takes long), marked with its date
        tuning = previous.get("tuning")

    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["bench_wall_s"] = round(time.time() - t_start)
    settings["changes_over_archive_defaults"] = {"workflow": CHOSEN_WORKFLOW, "model-config": CHOSEN_MODEL,
                                                 "env": CHOSEN_ENV}
    summary = summarise(results, memory, flask_rss)
    goals = judge(summary)
    (out_dir / "benchmarks.json").write_text(json.dumps(
        {**summary, "goals": goals, "ray": ray, "machine": info, "settings": settings, "tuning": tuning,
         "detail": {t: {k: v for k, v in results[t].items()} for t in TARGETS}}, indent=1) + "\n")
    write_md(out_dir / "benchmarks.md", results, summary, goals, ray, info, memory, flask_rss, settings,
             startup_s, tuning, args)
    log(f"wrote {out_dir / 'benchmarks.md'} and benchmarks.json in {info['bench_wall_s']} s")
    print((out_dir / "benchmarks.md").read_text().split("\n## Memory")[0])
    return 0


def collect_raw(results: dict, raws: list[dict]) -> None:
    """Medians over the raw rounds into results[t]: raw_img_s (model-only), raw_bytes_img_s,
    images per CPU-second, ms per image of each stage, img/s per torch thread count."""
    for t in TARGETS:
        m, b = [r["model"][t] for r in raws], [r["bytes"][t] for r in raws]
        results[t].update({
            "raw_runs": [round(x["img_s"], 1) for x in m], "raw_threads": [x["threads"] for x in m],
            "raw_bytes_runs": [round(x["img_s"], 1) for x in b],
            "raw_bytes_threads": [x["threads"] for x in b],
            "raw_img_s": statistics.median(x["img_s"] for x in m),
            "raw_bytes_img_s": statistics.median(x["img_s"] for x in b),
            "raw_per_cpu": statistics.median(x["per_cpu"] for x in m),
            "raw_bytes_per_cpu": statistics.median(x["per_cpu"] for x in b),
            "raw_bytes_stage_ms": {s: round(statistics.median(x.get(f"{s}_ms", 0.0) for x in b), 2)
                                   for s in ("decode", "transform", "forward")},
            "raw_bytes_by_threads": {th: statistics.median(x["by_threads"][th] for x in b if th in x["by_threads"])
                                     for th in b[0]["by_threads"]}})


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


def run_tuning(run, members, tmp, payloads, seconds, chosen, results) -> list[dict]:
    """Each TUNING variant at c=8, with raw-from-bytes measured right before it (side by side)."""
    def row(label, res, raw_bytes):
        return {"variant": label, **{t: round(res[(t, 8)]["img_s"], 1) for t in TARGETS},
                "raw_bytes": raw_bytes,
                "over_raw_bytes": {t: ratio(res[(t, 8)]["img_s"], raw_bytes[t]) for t in TARGETS},
                "per_cpu": {t: res[(t, 8)]["img_per_cpu_s"] for t in TARGETS},
                "p50": {t: res[(t, 8)]["p50_ms"] for t in TARGETS},
                "p99": {t: res[(t, 8)]["p99_ms"] for t in TARGETS}}

    rows = [row(CHOSEN_LABEL + " (the table above)", chosen,
                {t: round(results[t]["raw_bytes_img_s"], 1) for t in TARGETS})]
    for i, (label, env, mc, wf) in enumerate(TUNING):
        log(f"tuning: {label} ...")
        r = raw_throughput(members, payloads, seconds / 3, threads=(None,))
        raw_bytes = {t: round(r["bytes"][t]["img_s"], 1) for t in TARGETS}
        store = build_store(run, tmp / f"store{i}", {**CHOSEN_MODEL, **mc}, {**CHOSEN_WORKFLOW, **wf})
        try:
            with torchserve(store, tmp / f"ts{i}", {**CHOSEN_ENV, **env}) as server:
                res = measure_served(server, payloads, seconds, concurrencies=(8,))
        except Exception as e:  # a variant that does not start is a result too
            rows.append({"variant": label, "error": str(e)[:200]})
            continue
        finally:
            shutil.rmtree(tmp / f"store{i}", ignore_errors=True)
        rows.append(row(label, res, raw_bytes))
    return rows


def marginal_rate(small: dict, big: dict):
    """Images/s of the extra images of the bigger run: (rows big - rows small) / (wall big - wall
    small), which leaves out what both pay once (Ray's start and stop, loading the models)."""
    dn, dt_ = big["rows"] - small["rows"], big["wall_s"] - small["wall_s"]
    return round(dn / dt_, 1) if dn > 0 and dt_ > 0 else None


def ratio(a, b, digits: int = 2):
    """a / b rounded, None when either is missing or b is 0."""
    return round(a / b, digits) if a is not None and b else None


def summarise(results: dict, memory: dict, flask_rss: int) -> dict:
    """Per target: the raw rates (model-only and from bytes), Flask, served at c=8, and the ratios
    the goals judge (served at c=8 over raw-from-bytes), wall clock and per CPU-second."""
    out = {}
    for t in TARGETS:
        r = results[t]
        c1, c8, f8 = r["served_c1"], r["served_c8"], r["flask_c8"]
        flask_best = max((r["flask_c1"], f8), key=lambda x: x["img_s"])
        per = {"raw_img_s": round(r["raw_img_s"], 1), "raw_bytes_img_s": round(r["raw_bytes_img_s"], 1),
               "flask_img_s": round(flask_best["img_s"], 1),
               "served_img_s": round(c8["img_s"], 1), "served_c1_img_s": round(c1["img_s"], 1),
               "p50_ms": c8["p50_ms"], "p95_ms": c8["p95_ms"], "p99_ms": c8["p99_ms"],
               "p99_over_p50": ratio(c8["p99_ms"], c8["p50_ms"]),
               "served_over_raw_bytes": ratio(c8["img_s"], r["raw_bytes_img_s"]),
               "served_over_raw": ratio(c8["img_s"], r["raw_img_s"]),
               "raw_bytes_over_raw": ratio(r["raw_bytes_img_s"], r["raw_img_s"]),
               "served_over_flask_c8": ratio(c8["img_s"], f8["img_s"]),
               "served_errors": sum(v for x in (c1, c8) for k, v in x["statuses"].items() if k != "200"),
               # images per CPU-second the server (or this process, for raw) spent: robust to
               # other processes sharing the cores, which the wall-clock figures are not
               "raw_img_per_cpu_s": round(r["raw_per_cpu"], 2),
               "raw_bytes_img_per_cpu_s": round(r["raw_bytes_per_cpu"], 2),
               "flask_img_per_cpu_s_c8": f8["img_per_cpu_s"],
               "served_img_per_cpu_s_c8": c8["img_per_cpu_s"],
               "raw_bytes_stage_ms": r["raw_bytes_stage_ms"],
               "served_cpu_ms_per_img_c8": c8.get("cpu_ms_per_img"),
               "served_java_cpu_ms_per_img_c8": c8.get("first_proc_cpu_ms_per_img"),
               "client_cpu_ms_per_img_c8": c8.get("client_cpu_ms_per_img")}
        per["served_over_raw_bytes_per_cpu"] = ratio(per["served_img_per_cpu_s_c8"], per["raw_bytes_img_per_cpu_s"])
        per["served_over_flask_per_cpu_c8"] = ratio(per["served_img_per_cpu_s_c8"], per["flask_img_per_cpu_s_c8"])
        out[t] = per
    out["memory"] = {"torchserve_rss_mb": memory["rss"], "torchserve_pss_mb": memory["pss"],
                     "flask_baseline_rss_mb": flask_rss}
    return out


def judge(summary: dict, goals: dict = GOALS, p99_over_p50: float = P99_OVER_P50) -> list[dict]:
    """The issue's goals against a summary: served at c=8 >= need x raw-from-bytes (wall clock,
    and per CPU-second for reference), p99 <= 3x p50 at c=8. One dict per goal."""
    rows = []
    for t, need in goals.items():
        s = summary[t]
        v, pc = s.get("served_over_raw_bytes"), s.get("served_over_raw_bytes_per_cpu")
        rows.append({"goal": f"{t} served c=8 >= {need}x raw-from-bytes" + (" (b0+b2)" if t == "ensemble" else ""),
                     "target": t, "need": need, "value": v, "met": v is not None and v >= need,
                     "per_cpu_value": pc, "per_cpu_met": pc is not None and pc >= need})
    for t in goals:
        v = summary[t].get("p99_over_p50")
        rows.append({"goal": f"{t}: p99 <= {p99_over_p50:g}x p50 at c=8", "target": t, "need": p99_over_p50,
                     "value": v, "met": v is not None and v <= p99_over_p50})
    return rows


def goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def workflow_facts() -> dict:
    """Read from the handlers, so that the notes say what the served code does today."""
    facts = {}
    with contextlib.suppress(Exception):
        from handlers import workflow as wf

        facts["race_guard_ms"] = round(1000 * wf.RACE_GUARD_S, 1)
    with contextlib.suppress(Exception):
        from torchserve_ops import archive

        facts["workflow_models"] = archive.WORKFLOW_MODELS
        facts["model_config"] = archive.MODEL_CONFIG
    return facts


def write_md(path, results, summary, goals, ray, info, memory, flask_rss, settings, startup_s, tuning,
             args) -> None:
    L = []
    L.append("# Serving benchmark\n")
    L.append(f"Generated by `make bench` (`python -m bench.serving --seconds {args.seconds:g}"
             f"{' --tune' if args.tune else ''}`) on {info['date']}; do not edit by hand.\n")
    L.append("One image per request (the 100 real sample JPEGs, 256x256), each measurement "
             f"{args.seconds:g} s after one warm-up request per client. img/s = answered requests / wall "
             "time; latency is per request as the client saw it. Two raw rates, both in this process "
             "with the same checkpoints, batches of 8, `torch.inference_mode`, channels_last, the better "
             "of 1 and 2 torch threads, median of three rounds (before Flask, between, after TorchServe):\n")
    L.append("- **raw model-only** (`raw_img_s`): eval transform already applied, tensors straight into "
             "the model: the physical limit;")
    L.append("- **raw from bytes** (`raw_bytes_img_s`): the same JPEG bytes the clients send, "
             "`galaxy_morph.imaging.decode_image` + the spec's eval transform + one batched forward "
             "(bench.serving.classify_bytes): what a user's own script does without a server. For the "
             "ensemble: each image decoded once, then both models' transforms and forwards (the "
             "workflow's work).\n")
    L.append("**Flask** = the seed's architecture (bench/flask_baseline.py: one process, decode + "
             "transform + model per request). **Served** = TorchServe with the project's handlers and "
             "workflow as `make serve` builds them, token auth on. The goals judge served at c=8 "
             "against raw from bytes. Other programs share these 2 cores (the load average is below): "
             "ratios measured side by side in one run mean more than absolute rates, which move "
             "between runs.\n")
    L.append("| model | raw model-only | raw from bytes | Flask c=8 | served c=1 | served c=8 "
             "| **served / raw-from-bytes** | served / model-only | served / Flask | "
             "served c=8 p50 / p95 / p99 ms | p99 / p50 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for t in TARGETS:
        r, s = results[t], summary[t]
        c1, c8, f8 = r["served_c1"], r["served_c8"], r["flask_c8"]
        L.append(f"| {t}{' (b0+b2)' if t == 'ensemble' else ''} | {r['raw_img_s']:.1f} | "
                 f"{r['raw_bytes_img_s']:.1f} | {f8['img_s']:.1f} | {c1['img_s']:.1f} | {c8['img_s']:.1f} | "
                 f"**{s['served_over_raw_bytes']}** | {s['served_over_raw']} | {s['served_over_flask_c8']} | "
                 f"{c8['p50_ms']} / {c8['p95_ms']} / {c8['p99_ms']} | {s['p99_over_p50']} |")
    L.append("")
    L.append("Raw rounds, img/s (torch threads of the best): " + "; ".join(
        f"{t} model-only {results[t]['raw_runs']} ({results[t]['raw_threads']}), from bytes "
        f"{results[t]['raw_bytes_runs']} ({results[t]['raw_bytes_threads']})" for t in TARGETS) + ".")
    errs = {f"{t} {k}": v["statuses"] for t in TARGETS for k, v in results[t].items()
            if isinstance(v, dict) and "statuses" in v and any(code != "200" for code in v["statuses"])}
    L.append(f"Requests without a 200 answer: {errs or 'none'}.\n")

    L.append("## Goals\n")
    L.append("| goal | wall clock | | per CPU-second | |")
    L.append("|---|---|---|---|---|")
    for g in goals:
        if "per_cpu_value" in g:
            L.append(f"| {g['goal']} | {g['value']}x | {goal(g['met'])} | {g['per_cpu_value']}x | "
                     f"{goal(g['per_cpu_met'])} |")
        else:
            L.append(f"| {g['goal']} | {g['value']}x | {goal(g['met'])} | | |")
    for t in TARGETS:
        s_ = summary[t]
        L.append(f"| {t}: TorchServe ahead of Flask at c=8 | {s_['served_over_flask_c8']}x | "
                 f"{goal((s_['served_over_flask_c8'] or 0) > 1)} | {s_['served_over_flask_per_cpu_c8']}x | "
                 f"{goal((s_['served_over_flask_per_cpu_c8'] or 0) > 1)} |")
    rss, pss = memory["rss"]["total"], memory["pss"]["total"]
    L.append(f"| served stack < 3 GB | RSS {rss} MB | {goal(rss < 3072)} | PSS {pss} MB | "
             f"{goal(pss < 3072)} (PSS) |")
    L.append("")

    L.append("## Where the time goes (ms per image)\n")
    L.append("In this process, raw from bytes, at its best thread count: wall ms per image of each stage "
             "(they add up to 1000 / raw-from-bytes img/s). Served at c=8: wall ms per image "
             "(1000 / img/s); what it costs beyond raw from bytes is the server (Java frontend, the "
             "HTTP and frontend-to-worker hops, batching delay, JSON answers, and for the workflow its "
             "extra nodes). CPU ms per image: all TorchServe processes (Java frontend + Python "
             "workers) and, separately, this process's load generator, which shares the same 2 cores "
             "with the server (raw from bytes has no client to feed).\n")
    L.append("| model | decode | transform | forward | raw from bytes | served c=8 | server's share "
             "| raw from bytes CPU ms | served CPU ms: all / Java | load generator CPU ms |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for t in TARGETS:
        s_ = summary[t]
        st = s_["raw_bytes_stage_ms"]
        raw_ms = 1000 / s_["raw_bytes_img_s"] if s_["raw_bytes_img_s"] else None
        srv_ms = 1000 / s_["served_img_s"] if s_["served_img_s"] else None
        share = f"{srv_ms - raw_ms:.1f}" if raw_ms and srv_ms else ""
        raw_cpu = f"{1000 / s_['raw_bytes_img_per_cpu_s']:.1f}" if s_["raw_bytes_img_per_cpu_s"] else ""
        L.append(f"| {t} | {st['decode']} | {st['transform']} | {st['forward']} | "
                 f"{raw_ms:.1f} | {srv_ms:.1f} | {share} | {raw_cpu} | "
                 f"{s_['served_cpu_ms_per_img_c8']} / {s_['served_java_cpu_ms_per_img_c8']} | "
                 f"{s_['client_cpu_ms_per_img_c8']} |")
    L.append("")
    facts = workflow_facts()
    if facts:
        L.append("What the served ensemble does per image that raw from bytes does not (handlers/workflow.py, "
                 "handlers/galaxy_handler.py, read-only here): `pre` decodes the image to check it and "
                 "sends it base64 in JSON to every model node; each model handler decodes it again "
                 f"(3 decodes instead of 1, about {2 * summary['ensemble']['raw_bytes_stage_ms']['decode']:.1f} "
                 "ms more per image at the decode rate above); `ensemble` parses both answers; the Java "
                 "frontend routes every request through 4 nodes (4 worker round trips instead of 1); "
                 f"each function node sleeps {facts.get('race_guard_ms')} ms per batch before it answers "
                 "(RACE_GUARD_S, against TorchServe 0.12's lost-answer race), so a request's path carries "
                 f"{2 * (facts.get('race_guard_ms') or 0):g} ms of sleeping that no CPU work fills when "
                 "fewer than a full batch of requests are in flight.\n")

    if ray:
        L.append("## make predict on Ray against raw from bytes\n")
        L.append(f"`make predict`'s command (`{ray['command']}`; local Ray started and stopped by the "
                 f"command, its default actor pool) on {ray['images']} copies of the sample JPEGs, "
                 f"measured {ray.get('date')}; raw from bytes for the same model measured right after, in "
                 "this process. End to end counts Ray's start and stop; marginal = the extra images of "
                 f"this run over a run of {(ray.get('small') or {}).get('images')} images / the extra "
                 "wall time: Ray's rate without its start.\n")
        L.append("| model | images | rows written | wall s | end to end img/s | marginal img/s | "
                 "raw from bytes img/s (by torch threads) | marginal / raw from bytes | end to end / raw from bytes |")
        L.append("|---|---:|---:|---:|---:|---:|---|---:|---:|")
        L.append(f"| {ray['model']} | {ray['images']} | {ray['rows']} | {ray['wall_s']} | "
                 f"{ray['img_s_end_to_end']} | {ray.get('img_s_marginal')} | {ray['raw_bytes_img_s']} "
                 f"({ray.get('raw_bytes_by_threads')}) | {ratio(ray.get('img_s_marginal'), ray['raw_bytes_img_s']) or ''} | "
                 f"{ratio(ray['img_s_end_to_end'], ray['raw_bytes_img_s'])} |")
        L.append(f"\nThe first of {ray['shards']} shards was written {ray['first_shard_s']} s after the "
                 f"command started, of {ray['wall_s']} s (Ray Data hands every shard to the model actor "
                 f"at once, so they finish together). Exit status {ray['rc']}; the run of "
                 f"{(ray.get('small') or {}).get('images')} images took {(ray.get('small') or {}).get('wall_s')} s.\n")

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
             "processes share these cores, so compare columns of one run, not runs")
    L.append(f"- TorchServe start until every worker READY and the workflow registered: {startup_s:.0f} s; "
             f"whole bench {info['bench_wall_s']} s")
    L.append("")
    L.append("## TorchServe settings measured\n")
    L.append("The archives' `model-config.yaml` and workflow spec (torchserve_ops/archive.py) and "
             "config.properties, as the describe API reports them:\n")
    L.append("| model | workers | batch size | max batch delay ms |")
    L.append("|---|---:|---:|---:|")
    for k, v in settings.items():
        if isinstance(v, dict) and "workers" in v:
            L.append(f"| {k} | {v['workers']} | {v['batchSize']} | {v['maxBatchDelay']} |")
    ch = settings["changes_over_archive_defaults"]
    L.append(f"\nTorch threads per worker: {settings.get('torch_threads_per_worker')}; every process of "
             "the benchmark (raw, Flask, TorchServe, Ray) runs with OMP_WAIT_POLICY=PASSIVE. The handler "
             "runs `torch.inference_mode` with channels_last. Changed on top of the archive defaults for "
             f"this run: workflow {ch['workflow'] or 'none'}, model-config {ch['model-config'] or 'none'}, "
             f"environment {ch['env'] or 'none'}.\n")
    if tuning:
        L.append(f"## Tuning: what each change did (TorchServe at c=8; sweep of {tuning['date']}, "
                 f"`python -m bench.serving --tune`)\n")
        if tuning["rows"] and "raw_bytes" in tuning["rows"][0]:
            L.append("Raw from bytes measured in this process right before each variant; served / raw "
                     "from bytes is the goals' ratio.\n")
            L.append("| variant | b0 img/s (/ raw bytes) | b2 img/s (/ raw bytes) | ensemble img/s (/ raw bytes) "
                     "| img/CPU-s b0 / b2 / ensemble | p50 / p99 ms b0 | b2 | ensemble |")
        else:
            L.append("| variant | b0 img/s | b2 img/s | ensemble img/s | img/CPU-s b0 / b2 / ensemble "
                     "| p50 / p99 ms b0 | b2 | ensemble |")
        L.append("|---|---:|---:|---:|---|---|---|---|")
        for row in tuning["rows"]:
            if "error" in row:
                L.append(f"| {row['variant']} | failed: {row['error']} | | | | | | |")
                continue
            p50, p99, pc = row.get("p50", {}), row["p99"], row.get("per_cpu", {})
            over = row.get("over_raw_bytes")
            cells = [f"{row[t]} ({over[t]}x)" if over else f"{row[t]}" for t in TARGETS]
            L.append(f"| {row['variant']} | " + " | ".join(cells) + " | "
                     + " / ".join(str(pc.get(t)) for t in TARGETS) + " | "
                     + " | ".join(f"{p50.get(t)} / {p99[t]}" for t in TARGETS) + " |")
        L.append("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
