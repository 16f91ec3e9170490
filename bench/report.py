"""The serving bench's figures: medians of the raw rounds, the summary and its ratios, the goals,
and docs/benchmarks.md (write_md).

Used by bench.serving; not a script.
"""
from __future__ import annotations

import contextlib
import statistics

from bench.common import CONCURRENCY, TARGETS

# Goals of issue 29 on this machine, for each target at c=8: TorchServe against a user's own script
# on PyTorch eager and on the served runtime, and against the servers a user would pick instead.
OVER_RAW_BYTES_TORCH = 1.0
OVER_RAW_BYTES = 0.7
OVER_BEST_PEER = 1.0
P99_OVER_P50 = 3.0
PSS_LIMIT_MB = 3000
# The servers TorchServe is compared with (results keys "<peer>_c<concurrency>"), and their names.
PEERS = ("ray_serve", "fastapi", "flask")
SERVER_NAMES = {"torchserve": "TorchServe", "ray_serve": "Ray Serve", "fastapi": "FastAPI + uvicorn",
                "flask": "Flask (seed)"}


def collect_raw(results: dict, raws: list[dict], tag: str = "") -> None:
    """Medians over the raw rounds into results[t]: raw{tag}_img_s (model-only), raw_bytes{tag}_img_s,
    images per CPU-second, ms per image of each stage, img/s per torch thread count. `tag` "_torch":
    the PyTorch eager rounds measured beside the served runtime's; a mode the rounds lack is skipped."""
    for t in TARGETS:
        if "model" in raws[0]:
            m = [r["model"][t] for r in raws]
            results[t].update({
                f"raw{tag}_runs": [round(x["img_s"], 1) for x in m], f"raw{tag}_threads": [x["threads"] for x in m],
                f"raw{tag}_img_s": statistics.median(x["img_s"] for x in m),
                f"raw{tag}_per_cpu": statistics.median(x["per_cpu"] for x in m)})
        if "bytes" in raws[0]:
            b = [r["bytes"][t] for r in raws]
            results[t].update({
                f"raw_bytes{tag}_runs": [round(x["img_s"], 1) for x in b],
                f"raw_bytes{tag}_threads": [x["threads"] for x in b],
                f"raw_bytes{tag}_img_s": statistics.median(x["img_s"] for x in b),
                f"raw_bytes{tag}_per_cpu": statistics.median(x["per_cpu"] for x in b),
                f"raw_bytes{tag}_stage_ms": {s: round(statistics.median(x.get(f"{s}_ms", 0.0) for x in b), 2)
                                             for s in ("decode", "transform", "forward")},
                f"raw_bytes{tag}_by_threads": {th: statistics.median(x["by_threads"][th] for x in b
                                                                     if th in x["by_threads"])
                                               for th in b[0]["by_threads"]}})


def ratio(a, b, digits: int = 2):
    """a / b rounded, None when either is missing or b is 0."""
    return round(a / b, digits) if a is not None and b else None


def server_detail(r: dict, key: str) -> dict:
    """{"c1": {img_s, p50_ms, p99_ms, cpu_s_per_img, errors}, ...} of one server for one target."""
    out = {}
    for c in CONCURRENCY:
        x = r.get(f"{key}_c{c}")
        if x is None:
            continue
        cpu_ms = x.get("cpu_ms_per_img")
        out[f"c{c}"] = {"img_s": round(x["img_s"], 1), "p50_ms": x["p50_ms"], "p99_ms": x["p99_ms"],
                        "cpu_s_per_img": round(cpu_ms / 1000, 5) if cpu_ms is not None else None,
                        "img_per_cpu_s": x.get("img_per_cpu_s"),
                        "errors": sum(v for k, v in x["statuses"].items() if k != "200")}
    return out


def best_peer(r: dict) -> str | None:
    """The peer with the most img/s at c=8 for one target (None when none was measured)."""
    measured = [p for p in PEERS if f"{p}_c8" in r]
    return max(measured, key=lambda p: r[f"{p}_c8"]["img_s"]) if measured else None


def summarise(results: dict, memory: dict, flask_rss: int, runtime: str = "torch",
              peers_pss: dict | None = None) -> dict:
    """Per target: the raw rates (model-only and from bytes, on the served `runtime` and on PyTorch
    eager), the peers, served at c=8, and the ratios the goals judge (served at c=8 over
    raw-from-bytes and over the best peer), wall clock and per CPU-second."""
    out = {}
    for t in TARGETS:
        r = results[t]
        c1, c8, f8 = r["served_c1"], r["served_c8"], r["flask_c8"]
        flask_best = max((r["flask_c1"], f8), key=lambda x: x["img_s"])
        torch_bytes = r.get("raw_bytes_torch_img_s")
        top = best_peer(r)
        per = {"runtime": runtime, "raw_img_s": round(r["raw_img_s"], 1),
               "raw_bytes_img_s": round(r["raw_bytes_img_s"], 1),
               "raw_bytes_torch_img_s": round(torch_bytes, 1) if torch_bytes is not None else None,
               "flask_img_s": round(flask_best["img_s"], 1),
               "served_img_s": round(c8["img_s"], 1), "served_c1_img_s": round(c1["img_s"], 1),
               "p50_ms": c8["p50_ms"], "p95_ms": c8["p95_ms"], "p99_ms": c8["p99_ms"],
               "p99_over_p50": ratio(c8["p99_ms"], c8["p50_ms"]),
               "served_over_raw_bytes": ratio(c8["img_s"], r["raw_bytes_img_s"]),
               "served_over_raw_bytes_torch": ratio(c8["img_s"], torch_bytes),
               "served_over_raw": ratio(c8["img_s"], r["raw_img_s"]),
               "raw_bytes_over_raw": ratio(r["raw_bytes_img_s"], r["raw_img_s"]),
               "raw_bytes_over_raw_bytes_torch": ratio(r["raw_bytes_img_s"], torch_bytes),
               "served_over_flask_c8": ratio(c8["img_s"], f8["img_s"]),
               "peers": {p: round(r[f"{p}_c8"]["img_s"], 1) for p in PEERS if f"{p}_c8" in r},
               "best_peer": top,
               "served_over_best_peer": ratio(c8["img_s"], r[f"{top}_c8"]["img_s"]) if top else None,
               "served_over_best_peer_per_cpu": (ratio(c8["img_per_cpu_s"], r[f"{top}_c8"]["img_per_cpu_s"])
                                                 if top else None),
               "peers_detail": {p: server_detail(r, p) for p in PEERS if f"{p}_c8" in r},
               "served_detail": server_detail(r, "served"),
               "served_errors": sum(v for x in (c1, c8) for k, v in x["statuses"].items() if k != "200"),
               # images per CPU-second the server (or this process, for raw) spent: robust to
               # other processes sharing the cores, which the wall-clock figures are not
               "raw_img_per_cpu_s": round(r["raw_per_cpu"], 2),
               "raw_bytes_img_per_cpu_s": round(r["raw_bytes_per_cpu"], 2),
               "raw_bytes_torch_img_per_cpu_s": (round(r["raw_bytes_torch_per_cpu"], 2)
                                                 if "raw_bytes_torch_per_cpu" in r else None),
               "flask_img_per_cpu_s_c8": f8["img_per_cpu_s"],
               "served_img_per_cpu_s_c8": c8["img_per_cpu_s"],
               "raw_bytes_stage_ms": r["raw_bytes_stage_ms"],
               "served_cpu_ms_per_img_c8": c8.get("cpu_ms_per_img"),
               "served_java_cpu_ms_per_img_c8": c8.get("first_proc_cpu_ms_per_img"),
               "client_cpu_ms_per_img_c8": c8.get("client_cpu_ms_per_img")}
        per["served_over_raw_bytes_per_cpu"] = ratio(per["served_img_per_cpu_s_c8"], per["raw_bytes_img_per_cpu_s"])
        per["served_over_raw_bytes_torch_per_cpu"] = ratio(per["served_img_per_cpu_s_c8"],
                                                           per["raw_bytes_torch_img_per_cpu_s"])
        per["served_over_flask_per_cpu_c8"] = ratio(per["served_img_per_cpu_s_c8"], per["flask_img_per_cpu_s_c8"])
        out[t] = per
    out["memory"] = {"torchserve_rss_mb": dict(memory["rss"]), "torchserve_pss_mb": dict(memory["pss"]),
                     "flask_baseline_rss_mb": flask_rss, "peers_pss_mb": dict(peers_pss or {})}
    return out


def judge(summary: dict, p99_over_p50: float = P99_OVER_P50, pss_limit_mb: float = PSS_LIMIT_MB) -> list[dict]:
    """The issue's goals against a summary, for each target at c=8: served >= 1.0x raw-from-bytes on
    PyTorch eager and >= 0.7x raw-from-bytes on the served runtime, TorchServe >= the best peer
    (wall clock, and per CPU-second for reference), p99 <= 3x p50; and the TorchServe stack's PSS
    under 3000 MB. One dict per goal."""
    rows = []
    for t in TARGETS:
        s = summary[t]
        both = " (b0+b2)" if t == "ensemble" else ""
        for need, key, what in (
                (OVER_RAW_BYTES_TORCH, "served_over_raw_bytes_torch", "raw-from-bytes on PyTorch eager"),
                (OVER_RAW_BYTES, "served_over_raw_bytes", f"raw-from-bytes on {s.get('runtime', 'torch')}"),
                (OVER_BEST_PEER, "served_over_best_peer", "the best peer")):
            v, pc = s.get(key), s.get(f"{key}_per_cpu")
            row = {"goal": f"{t} served c=8 >= {need}x {what}{both}", "target": t, "need": need,
                   "value": v, "met": v is not None and v >= need, "per_cpu_value": pc,
                   "per_cpu_met": pc is not None and pc >= need}
            if key == "served_over_best_peer":
                row["peer"] = s.get("best_peer")
            rows.append(row)
    for t in TARGETS:
        v = summary[t].get("p99_over_p50")
        rows.append({"goal": f"{t}: p99 <= {p99_over_p50:g}x p50 at c=8", "target": t, "need": p99_over_p50,
                     "value": v, "met": v is not None and v <= p99_over_p50})
    pss = summary["memory"]["torchserve_pss_mb"].get("total")
    rows.append({"goal": f"TorchServe stack PSS < {pss_limit_mb:g} MB", "target": None, "need": pss_limit_mb,
                 "value": pss, "unit": "MB", "met": pss is not None and pss < pss_limit_mb})
    return rows


def goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def workflow_facts() -> dict:
    """Read from the handlers, so that the notes say what the served code does today."""
    facts = {}
    with contextlib.suppress(Exception):
        from torchserve_ops import archive

        facts["workflow_models"] = archive.WORKFLOW_MODELS
        facts["model_config"] = archive.MODEL_CONFIG
    return facts


def write_md(path, results, summary, goals, ray, info, memory, flask_rss, settings, startup_s, tuning,
             args) -> None:
    L = []
    runtime = summary[TARGETS[0]].get("runtime", "torch")
    peers = [p for p in PEERS if any(f"{p}_c8" in results[t] for t in TARGETS)]
    L.append("# Serving benchmark\n")
    L.append(f"Generated by `make bench` (`python -m bench.serving --seconds {args.seconds:g}"
             f"{' --tune' if args.tune else ''}`) on {info['date']}; do not edit by hand.\n")
    L.append("One image per request (the 100 real sample JPEGs, 256x256), each measurement "
             f"{args.seconds:g} s after one warm-up request per client. img/s = answered requests / wall "
             "time; latency is per request as the client saw it. Every server serves the same "
             f"checkpoints with the forward on **{runtime}** (the CPU archives' runtime). The raw rates "
             "run in this process with the same checkpoints, batches of 8, median of three rounds "
             "(before the servers, between the peers and TorchServe, after TorchServe):\n")
    L.append(f"- **raw model-only** (`raw_img_s`): eval transform already applied, tensors straight into "
             f"the model on {runtime}: the physical limit;")
    L.append(f"- **raw from bytes** (`raw_bytes_img_s`): the same JPEG bytes the clients send, "
             "`galaxy_morph.imaging.decode_image` + the spec's eval transform + one batched forward "
             f"on {runtime} (bench.raw.classify_bytes): what a user's own script does without a server. "
             "For the ensemble: each image decoded once, then both models' transforms and forwards "
             "(the workflow's work);")
    L.append("- **raw from bytes, PyTorch eager** (`raw_bytes_torch_img_s`): the same with the torch "
             "models (`torch.inference_mode`, channels_last, the better of 1 and 2 torch threads): "
             "what the script does without the exported model.\n")
    L.append("**Served** = TorchServe with the project's handlers and workflow as `make serve` builds "
             "them, token auth on. The **peers** are what a user would run instead, each serving "
             f"`Predictor.from_run(RUN, model, runtime=\"{runtime}\")` from the same bytes "
             "(bench/peers.py, bench/flask_baseline.py): **Ray Serve** (local Ray, one replica per "
             "model, `@serve.batch` of up to 8 / 10 ms), **FastAPI + uvicorn** (one process, an asyncio "
             "batcher of up to 8 / 10 ms per model), **Flask** (the seed's architecture: one process, "
             "one image per forward). Other programs share these 2 cores (the load average is below): "
             "ratios measured side by side in one run mean more than absolute rates, which move "
             "between runs.\n")

    def c8(t, key):
        x = results[t].get(f"{key}_c8")
        return f"{x['img_s']:.1f}" if x else ""

    L.append("| model | raw model-only | raw from bytes | raw from bytes, PyTorch eager | "
             + " | ".join(f"{SERVER_NAMES[p]} c=8" for p in peers) + " | served c=1 | served c=8 "
             "| **served / raw bytes, PyTorch** | **served / raw bytes** | **served / best peer** | "
             "served c=8 p50 / p95 / p99 ms | p99 / p50 |")
    L.append("|---|---:|---:|---:|" + "---:|" * len(peers) + "---:|---:|---:|---:|---:|---|---:|")
    for t in TARGETS:
        r, s = results[t], summary[t]
        c1, c8_ = r["served_c1"], r["served_c8"]
        torch_bytes = s.get("raw_bytes_torch_img_s")
        L.append(f"| {t}{' (b0+b2)' if t == 'ensemble' else ''} | {r['raw_img_s']:.1f} | "
                 f"{r['raw_bytes_img_s']:.1f} | {torch_bytes if torch_bytes is not None else ''} | "
                 + "".join(f"{c8(t, p)} | " for p in peers)
                 + f"{c1['img_s']:.1f} | {c8_['img_s']:.1f} | **{s.get('served_over_raw_bytes_torch')}** | "
                 f"**{s['served_over_raw_bytes']}** | **{s.get('served_over_best_peer')}** "
                 f"({SERVER_NAMES.get(s.get('best_peer'), '')}) | "
                 f"{c8_['p50_ms']} / {c8_['p95_ms']} / {c8_['p99_ms']} | {s['p99_over_p50']} |")
    L.append("")
    L.append("Raw rounds, img/s (torch threads of the best): " + "; ".join(
        f"{t} model-only {results[t]['raw_runs']} ({results[t]['raw_threads']}), from bytes "
        f"{results[t]['raw_bytes_runs']} ({results[t]['raw_bytes_threads']})"
        + (f", from bytes on PyTorch eager {results[t]['raw_bytes_torch_runs']} "
           f"({results[t]['raw_bytes_torch_threads']})" if "raw_bytes_torch_runs" in results[t] else "")
        for t in TARGETS) + ".")
    errs = {f"{t} {k}": v["statuses"] for t in TARGETS for k, v in results[t].items()
            if isinstance(v, dict) and "statuses" in v and any(code != "200" for code in v["statuses"])}
    L.append(f"Requests without a 200 answer: {errs or 'none'}.\n")

    L.append("## Goals\n")
    L.append("| goal | wall clock | | per CPU-second | |")
    L.append("|---|---|---|---|---|")
    for g in goals:
        unit = " MB" if g.get("unit") == "MB" else "x"
        name = g["goal"] + (f"; best peer: {SERVER_NAMES.get(g['peer'], g['peer'])}" if g.get("peer") else "")
        if "per_cpu_value" in g:
            L.append(f"| {name} | {g['value']}{unit} | {goal(g['met'])} | {g['per_cpu_value']}x | "
                     f"{goal(g['per_cpu_met'])} |")
        elif g.get("unit") == "MB":
            L.append(f"| {g['goal']} | PSS {g['value']} MB | {goal(g['met'])} | "
                     f"(RSS {memory['rss']['total']} MB) | |")
        else:
            L.append(f"| {g['goal']} | {g['value']}{unit} | {goal(g['met'])} | | |")
    L.append("")

    L.append("## TorchServe against the peers\n")
    L.append("Each server at concurrency " + ", ".join(str(c) for c in CONCURRENCY) + "; CPU ms per "
             "image counts all the server's processes (TorchServe: the Java frontend and every Python "
             "worker; Ray Serve: the driver, raylet, GCS, Serve's controller and proxy and the "
             "replicas), not the load generator. / TorchServe = the server's img/s over TorchServe's "
             "at the same concurrency.\n")
    L.append("| model | server | c | img/s | p50 ms | p99 ms | CPU ms / img | / TorchServe |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    ahead = []
    for t in TARGETS:
        for key in ("served", *peers):
            for c in CONCURRENCY:
                x, ts = results[t].get(f"{key}_c{c}"), results[t].get(f"served_c{c}")
                if x is None:
                    continue
                over = ratio(x["img_s"], ts["img_s"]) if ts else None
                name = SERVER_NAMES["torchserve" if key == "served" else key]
                L.append(f"| {t} | {name} | {c} | {x['img_s']:.1f} | {x['p50_ms']} | {x['p99_ms']} | "
                         f"{x.get('cpu_ms_per_img')} | {over if key != 'served' else ''} |")
                if key != "served" and over is not None and over > 1:
                    ahead.append(f"{name} on {t} at c={c}: {over}x ({x['img_s'] - ts['img_s']:+.1f} img/s)")
    L.append("")
    L.append("Where a peer serves more images per second than TorchServe: "
             + ("; ".join(ahead) if ahead else "nowhere") + ".\n")

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
                 "handlers/galaxy_handler.py, read-only here): `pre` reads the image header to check it "
                 "and sends the bytes base64 in JSON to every model node, each of which decodes them (as "
                 "many decodes as members); `ensemble` parses the members' answers; the Java frontend routes "
                 "every request through 4 nodes (4 worker round trips instead of 1).\n")
        e, b0 = summary.get("ensemble") or {}, summary.get("b0") or {}
        java_e, java_b0 = e.get("served_java_cpu_ms_per_img_c8"), b0.get("served_java_cpu_ms_per_img_c8")
        peer = e.get("best_peer")
        peer_cpu = (((e.get("peers_detail") or {}).get(peer) or {}).get("c8") or {}).get("cpu_s_per_img")
        if java_e and java_b0 and peer_cpu:
            L.append(f"In CPU ms per image at c=8: the frontend spends {java_b0} on b0 (one worker round trip) "
                     f"and {java_e} on the workflow (four), about {(java_e - java_b0) / 3:.2f} per extra node "
                     f"call; the served ensemble costs {e['served_cpu_ms_per_img_c8']} in all, "
                     f"{SERVER_NAMES.get(peer, peer)} {1000 * peer_cpu:.2f}, which decodes each image once and "
                     f"runs both models in one process without a frontend between them.\n")

    if ray:
        L.append("## make predict on Ray against raw from bytes\n")
        L.append(f"`make predict`'s command (`{ray['command']}`; local Ray started and stopped by the "
                 f"command, its default actor pool) on {ray['images']} copies of the sample JPEGs, "
                 f"measured {ray.get('date')}; raw from bytes on PyTorch eager (what make predict runs) "
                 "for the same model measured right after, in this process. End to end counts Ray's "
                 "start and stop; marginal = the extra images of "
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
    L.append("Every TorchServe worker is its own Python process. No worker that answers on onnx imports "
             "torch (this torch build holds about 270 MB of private memory per process after its import, "
             "its CUDA libraries included): TorchServe's worker imports it only for its message codec, "
             "which torchserve_ops.worker defers to first use, and the handler answers with numpy and ONNX "
             "Runtime; a worker loads torch on its first explanation (Grad-CAM) or MC-dropout request. "
             "Each model has its workers (two on a CPU), and the workflow has its own: its copies of both "
             "models (`galaxy-ensemble__b0`, `__b2`) and one per function node. RSS counts the shared "
             "library pages once per process; PSS divides them among the processes that share them, so "
             "the PSS total is what the stack really holds.\n")
    L.append("| process | RSS | PSS |")
    L.append("|---|---:|---:|")
    for k in memory["rss"]:
        if k != "total":
            L.append(f"| {k} | {memory['rss'][k]} | {memory['pss'].get(k)} |")
    rss, pss = memory["rss"]["total"], memory["pss"]["total"]
    L.append(f"| **TorchServe total** | **{rss}** | **{pss}** |")
    peers_pss = summary["memory"].get("peers_pss_mb") or {}
    L.append(f"| Flask baseline (one process: b0, b2, the ensemble's b0 + b2) | {flask_rss} | "
             f"{peers_pss.get('flask', '')} |")
    if "fastapi" in peers_pss:
        L.append(f"| FastAPI + uvicorn (one process, the same models) | | {peers_pss['fastapi']} |")
    if "ray_serve" in peers_pss:
        L.append(f"| Ray Serve (driver, Ray's own processes, 3 replicas) | | {peers_pss['ray_serve']} |")
    L.append("")
    L.append("## Machine\n")
    L.append(f"- CPU: {info['cpu']}, {info['cores']} cores; RAM {info['ram_gb']} GB")
    L.append(f"- Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
             f"TorchServe {info['torchserve']}, Flask {info['flask']}, FastAPI {info.get('fastapi')}, "
             f"uvicorn {info.get('uvicorn')}, Ray {info.get('ray')}")
    L.append(f"- Checkpoints: {info['checkpoints']}")
    L.append(f"- Load average at start {info['load_avg_start']}, at end {info['load_avg_end']}: other "
             "processes share these cores, so compare columns of one run, not runs")
    L.append(f"- TorchServe start until every worker READY and the workflow registered: {startup_s:.0f} s; "
             f"whole bench {info['bench_wall_s']} s")
    if info.get("peer_startup_s"):
        L.append("- Peers' start until they answer (Ray Serve: until its three routes are up): "
                 + ", ".join(f"{SERVER_NAMES[p]} {v} s" if isinstance(v, (int, float)) else f"{SERVER_NAMES[p]}: {v}"
                             for p, v in info["peer_startup_s"].items()))
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
    L.append(f"\nForward threads per worker: {settings.get('torch_threads_per_worker')}; every process of "
             "the benchmark (raw, the peers, TorchServe, Ray) runs with OMP_WAIT_POLICY=PASSIVE. On onnx a "
             "worker never imports torch; on torch the handler runs `torch.inference_mode` with channels_last. "
             "Changed on top of the archive defaults for "
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

