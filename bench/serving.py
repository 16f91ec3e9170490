"""Serving benchmark: raw in-process (model-only and from bytes) vs the servers a user would pick
(Flask, FastAPI, Ray Serve) vs TorchServe, and `make predict` on Ray, one run, one table.

    make bench                         # = python -m bench.serving
    python -m bench.serving --seconds 4 --tune      # shorter runs, plus the tuning sweep
    python -m bench.serving --ray-images 0          # without the Ray run
    python -m bench.serving --seconds 2 --ray-images 0 --peers none   # a short run: Flask and TorchServe only

Every server serves the same checkpoints on the runtime the CPU archives serve with (ONNX Runtime,
torchserve_ops.archive.DEVICE_CONFIG; RUN/M/model.onnx is exported and checked first if missing).
For b0, b2 and the ensemble, measured in the same run on this machine:
  raw model-only   the same checkpoints in this process on the served runtime, eval transform already
                   applied, batched (the physical limit);
  raw from bytes   the same JPEG bytes the clients send, decoded (galaxy_morph.imaging.decode_image),
                   eval-transformed and run in batches in this process (classify_bytes) on the served
                   runtime: what a user's own script does without a server; the ensemble decodes once
                   and runs both models (the workflow's work). Also on PyTorch eager
                   (raw_bytes_torch_img_s): the script without the exported model. The goals judge
                   the server against both;
  flask            bench/flask_baseline.py, one Flask process that answers each request on its own
                   with galaxy_morph.Predictor (the seed's architecture);
  fastapi,         bench/peers.py: FastAPI + uvicorn with an asyncio batcher, and Ray Serve with
  ray_serve        @serve.batch on a local Ray, each serving Predictor.from_run from the same bytes
                   (--peers picks them);
  served           TorchServe (torchserve_ops/server.py, token auth on, free ports) with the galaxy-b0/b2
                   handlers and the galaxy-ensemble workflow;
  ray              `make predict`'s command (prediction.ray_predict, local Ray) on --ray-images
                   copies of the samples, against raw from bytes on PyTorch eager measured right after it.
Every server is measured at each of bench.common.CONCURRENCY (1, 8, 64 clients). Clients send the
100 real sample JPEGs (samples/galaxy10_decals) one image per request, each measurement runs for
--seconds. Checkpoints come from checkpoints/demo (what make serve serves) or runs/demo, else
random-init ones in a temporary folder (speed does not depend on the weights). Besides wall-clock
images/s, each measurement counts the CPU seconds the server processes used, so that images per
CPU-second can be compared even when other processes share the cores, and the stages of raw from
bytes (decode, transform, forward) are timed, so that the server's share of the time can be read
off. Every process runs with OMP_WAIT_POLICY=PASSIVE (see below). Writes docs/benchmarks.md and
docs/benchmarks.json (about 10 minutes on 2 cores); with --tune (about 7 minutes more), also
measures TorchServe variants (batch size and delay, threads, workers), each next to raw from bytes;
a run without --tune keeps the last sweep in the files, a run with --ray-images 0 the last Ray
figures.

The pieces live in bench.common (paths, targets, machine, sample JPEGs, checkpoints), bench.raw (raw
rates, classify_bytes), bench.load (the HTTP load generator), bench.servers (Flask and TorchServe
under test), bench.peers (FastAPI and Ray Serve under test), bench.ray_rate (make predict on Ray)
and bench.report (summary, goals, benchmarks.md); this module holds the run: what is served, the
tuning variants and main().
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

# bench.common first: it sets OMP_WAIT_POLICY=PASSIVE before anything loads torch
from bench.common import CONCURRENCY, DOCS, TARGETS, checkpoints, log, machine_info, sample_payloads
from bench.load import fmt_result, load_test, ok_answer
from bench.raw import load_members, raw_throughput
from bench.ray_rate import marginal_rate, ray_predict_rate
from bench.peers import PEERS, peer_server, pss_mb
from bench.report import collect_raw, judge, ratio, summarise, write_md
from bench.servers import build_store, flask_server, measure_served, served_memory, served_runtime, torchserve

# What the benchmark serves with on top of the archive defaults (torchserve_ops/archive.py: on a CPU
# two workers per model with batches of up to 4 and a 3 ms delay, workflow node timeouts with
# retries): nothing, so the table is what `make serve` runs.
CHOSEN_WORKFLOW = {}
CHOSEN_MODEL = {}
# The handler's default forward threads (cores / workers per model), with OMP_WAIT_POLICY=PASSIVE
# (set in bench.common, inherited): spinning OpenMP threads were 10-50x slower on this shared machine.
CHOSEN_ENV = {}
CHOSEN_LABEL = ("archive defaults: 2 workers per model, batch 4 / 3 ms, cores / workers forward threads, "
                "passive OpenMP waiting")
ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1}
ONE_WORKER_WF = {"min-workers": 1, "max-workers": 1}

# What TorchServe offers through configuration (torchserve_ops.archive.build_all(model_config=...,
# workflow_models=...) and the workers' environment), each measured at c=8 next to raw-from-bytes.
TUNING = [
    # (label, env for the workers, model-config overrides, workflow overrides)
    ("1 worker per model, batch 8 / 10 ms, all cores' threads (the default before the sweeps)", {},
     {**ONE_WORKER, "batchSize": 8, "maxBatchDelay": 10}, {**ONE_WORKER_WF, "batch-size": 8, "max-batch-delay": 10}),
    ("1 worker per model, batch 4, all cores' threads", {}, {**ONE_WORKER}, {**ONE_WORKER_WF}),
    ("2 workers, batch 8", {}, {"batchSize": 8}, {"batch-size": 8}),
    ("2 workers, batch 2", {}, {"batchSize": 2}, {"batch-size": 2}),
    ("2 workers, batch 4, max delay 10 ms (the delay until this sweep)", {}, {"maxBatchDelay": 10},
     {"max-batch-delay": 10}),
    ("3 workers per model, batch 4, 1 thread each", {}, {"minWorkers": 3, "maxWorkers": 3},
     {"min-workers": 3, "max-workers": 3}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    ap.add_argument("--tune", action="store_true",
                    help="also measure TorchServe variants at c=8 (about 1 min per variant)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"peers to measure beside Flask and TorchServe: a comma list of {', '.join(PEERS)}, "
                         "or none")
    ap.add_argument("--ray-images", type=int, default=600,
                    help="images (copies of the samples) for make predict on Ray; 0: skip Ray")
    ap.add_argument("--ray-model", default="ensemble", choices=TARGETS, help="model for the Ray run")
    ap.add_argument("--out", default=str(DOCS), help="folder for benchmarks.md/json")
    args = ap.parse_args(argv)
    peers = [] if args.peers.strip().lower() == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)} or none")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    info = machine_info()
    payloads = sample_payloads()
    runtime = served_runtime()
    results = {t: {} for t in TARGETS}
    raws, raws_torch = [], []
    previous = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((out_dir / "benchmarks.json").read_text())
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as tmp:
        tmp = Path(tmp)
        run, source = checkpoints(tmp)
        info["checkpoints"] = source
        log(f"checkpoints: {source}; {len(payloads)} sample JPEGs; {args.seconds:g} s per measurement; "
            f"served runtime {runtime}")
        members = load_members(run, runtime)  # exports RUN/M/model.onnx first if needed
        members_torch = members if runtime == "torch" else load_members(run)

        def raw_round(when):
            r = raw_throughput(members, payloads, args.seconds / 3,
                               threads=(1, None) if runtime == "torch" else (None,))
            raws.append(r)
            rounds = [(runtime, r)]
            if runtime != "torch":
                rt = raw_throughput(members_torch, payloads, args.seconds / 3, modes=("bytes",))
                raws_torch.append(rt)
                rounds.append(("torch", rt))
            for rt_name, rr in rounds:
                for mode in rr:
                    log(f"raw {mode:5s} {rt_name:5s} ({when}): " + ", ".join(
                        f"{t} {rr[mode][t]['img_s']:.1f} ({rr[mode][t]['threads']} threads)" for t in TARGETS)
                        + " img/s")

        raw_round("first")
        log("Flask baseline ...")
        with flask_server(run, tmp / "flask.log", runtime) as (url, proc):
            flask = psutil.Process(proc.pid)
            measure_peer("flask", lambda t: f"{url}/predict/{t}", lambda: [flask], payloads, args.seconds, results)
            flask_rss = round(flask.memory_info().rss / 2 ** 20)
            peers_pss = {"flask": pss_mb([flask])["total"]}
        peer_startup = {}
        for peer in peers:
            log(f"{peer} ...")
            t0 = time.time()
            try:
                with peer_server(peer, run, tmp / f"{peer}.log", runtime) as (url, procs):
                    peer_startup[peer] = round(time.time() - t0)
                    measure_peer(peer, lambda t: f"{url}/predictions/{t}", procs, payloads, args.seconds, results)
                    peers_pss[peer] = pss_mb(procs())["total"]
            except Exception as e:  # a peer that does not start is a result too, not the end of the run
                log(f"  {peer} failed: {e}")
                peer_startup[peer] = f"failed: {str(e)[:200]}"
        info["peer_startup_s"] = peer_startup
        raw_round("between the peers and TorchServe")

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
        if raws_torch:
            collect_raw(results, raws_torch, tag="_torch")
        else:  # served on torch: the same rounds
            collect_raw(results, [{"bytes": r["bytes"]} for r in raws], tag="_torch")

        ray = previous.get("ray")
        if args.ray_images > 0:
            log(f"make predict on Ray: {args.ray_images} images, {args.ray_model} ...")
            small = ray_predict_rate(payloads, tmp, max(1, args.ray_images // 4), args.ray_model)
            ray = ray_predict_rate(payloads, tmp, args.ray_images, args.ray_model)
            ray["small"] = {k: small[k] for k in ("images", "rows", "rc", "wall_s")}
            ray["img_s_marginal"] = marginal_rate(small, ray)
            ray["date"] = info["date"]
            # make predict runs PyTorch eager: against raw from bytes on torch
            r = raw_throughput(members_torch, payloads, args.seconds / 3, targets=(args.ray_model,))
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
    summary = summarise(results, memory, flask_rss, runtime, peers_pss)
    goals = judge(summary)
    (out_dir / "benchmarks.json").write_text(json.dumps(
        {**summary, "goals": goals, "ray": ray, "machine": info, "settings": settings, "tuning": tuning,
         "detail": {t: {k: v for k, v in results[t].items()} for t in TARGETS}}, indent=1) + "\n")
    write_md(out_dir / "benchmarks.md", results, summary, goals, ray, info, memory, flask_rss, settings,
             startup_s, tuning, args)
    log(f"wrote {out_dir / 'benchmarks.md'} and benchmarks.json in {info['bench_wall_s']} s")
    print((out_dir / "benchmarks.md").read_text().split("\n## Memory")[0])
    return 0


def measure_peer(peer: str, url_of, procs, payloads, seconds, results) -> None:
    """One server other than TorchServe at each target and concurrency, into results[t]["<peer>_c<c>"]."""
    for t in TARGETS:
        for c in CONCURRENCY:
            r = load_test(url_of(t), payloads, c, seconds, check=ok_answer, server_procs=procs)
            results[t][f"{peer}_c{c}"] = r
            log(f"  {peer:9s} {t:8s} c={c}: {fmt_result(r)}")


def served_settings(server) -> dict:
    """What the running TorchServe says about each model: workers, batch size, delay."""
    ts = server.client()
    out = {}
    for m in ts.list_models():
        d = ts.describe(m["modelName"], customized=False)[0]
        out[m["modelName"]] = {"workers": len(d.get("workers", [])), "batchSize": d.get("batchSize"),
                               "maxBatchDelay": d.get("maxBatchDelay")}
    workers = max(v["workers"] for v in out.values())
    out["torch_threads_per_worker"] = (CHOSEN_ENV.get("OMP_NUM_THREADS")
                                       or f"the handler's default, cores / workers per model: "
                                          f"{os.cpu_count()} / {workers} = {max(1, os.cpu_count() // workers)}")
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


if __name__ == "__main__":
    sys.exit(main())
