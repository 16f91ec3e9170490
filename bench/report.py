"""The serving bench's figures: medians of the raw rounds, the summary and its ratios, the goals,
and docs/benchmarks.md (write_md).

Used by bench.serving; not a script.
"""
from __future__ import annotations

import contextlib
import statistics

from bench.common import TARGETS

# Goals of issue 10 on this machine: served at c=8 against raw-from-bytes in this process.
GOALS = {"b0": 0.85, "b2": 0.85, "ensemble": 0.7}
P99_OVER_P50 = 3.0


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
             "(bench.raw.classify_bytes): what a user's own script does without a server. For the "
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

