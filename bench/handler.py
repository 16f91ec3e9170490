"""The handler without the server: GalaxyHandler.handle() in this process against raw from bytes.

    python -m bench.handler [--run checkpoints/demo] [--rounds 3] [--threads 1]

Splits `make bench`'s "server's share" in two: what the project's handler adds (its preprocess,
inference and JSON answers, driven by a TorchServe Context as the worker builds one) and what
TorchServe itself adds (frontend, HTTP, the frontend-to-worker protocol). Per model, batches of 8 of
the sample JPEGs, wall and CPU ms per image, rounds alternating handler and raw; --threads as one
TorchServe worker runs (1) or as raw at its best.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench.common

import torch  # noqa: E402
import ts  # noqa: E402
from ts.context import Context, RequestProcessor  # noqa: E402
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # noqa: E402

from bench.common import sample_payloads  # noqa: E402
from bench.raw import OnnxLogits, classify_bytes  # noqa: E402
from galaxy_morph.answers import DEFAULT_VERSION  # noqa: E402
from torchserve_ops.archive import model_config_for  # noqa: E402
from handlers.galaxy_handler import GalaxyHandler  # noqa: E402

METRICS_YAML = str(Path(ts.__file__).parent / "configs" / "metrics.yaml")
BATCH = 8


def context(model_dir: Path, name: str, n: int, yaml_config: dict | None = None, metrics=None) -> Context:
    """A TorchServe Context for a batch of n requests, as the worker builds one (the worker keeps
    one metrics cache for its life: pass it in)."""
    ctx = Context(name, str(model_dir), {"model": {"modelName": name, "modelVersion": DEFAULT_VERSION}}, BATCH,
                  None, ts.__version__, metrics=metrics or MetricsCacheYamlImpl(METRICS_YAML),
                  model_yaml_config=yaml_config or {})
    ctx.request_processor = [RequestProcessor({}) for _ in range(n)]
    ctx.request_ids = {i: f"req-{i}" for i in range(n)}
    return ctx


def compare(model_dir: Path, spec: str, payloads: list[bytes], rounds: int, runtime: str | None = None) -> dict:
    """{"handler": [(wall ms, cpu ms) per image, per round], "raw": [...]}; `runtime` over the
    archive's (onnx: the checkpoint's export, made first if missing)."""
    name = f"galaxy-{spec}"
    config = model_config_for(spec, spec, runtime=runtime)
    if config["handler"]["runtime"] == "onnx":
        from galaxy_morph.runtimes import ensure_onnx

        ensure_onnx(model_dir)
    handler = GalaxyHandler()
    handler.initialize(context(model_dir, name, 1, config))
    model = handler.member.model if handler.member.runtime == "torch" else OnnxLogits(model_dir)
    batches = [payloads[i:i + BATCH] for i in range(0, len(payloads) - BATCH + 1, BATCH)]
    metrics = MetricsCacheYamlImpl(METRICS_YAML)

    def handle(batch):
        rows = [{"body": p} for p in batch]
        return handler.handle(rows, context(model_dir, name, len(rows), metrics=metrics))

    def raw(batch):
        return classify_bytes(batch, {spec: (model, handler.member.transform)})

    out = {"handler": [], "raw": []}
    for f in (handle, raw):
        f(batches[0])  # warm-up
    for _ in range(rounds):
        for key, f in (("handler", handle), ("raw", raw)):
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                f(b)
            n = len(batches) * BATCH
            out[key].append((1000 * (time.perf_counter() - t0) / n, 1000 * (time.process_time() - c0) / n))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="checkpoints/demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a TorchServe worker: 1)")
    ap.add_argument("--models", default="b0,b2")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    payloads = sample_payloads()
    print("| model | handler.handle() ms/img (wall / CPU), per round | raw from bytes ms/img | "
          "handler / raw (median CPU) |\n|---|---|---|---:|")
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = compare(Path(args.run) / spec, spec, payloads, args.rounds)
        cell = lambda v: ", ".join(f"{w:.1f} / {c:.1f}" for w, c in v)  # noqa: E731
        med = lambda v: sorted(c for _, c in v)[len(v) // 2]  # noqa: E731
        print(f"| {spec} | {cell(r['handler'])} | {cell(r['raw'])} | {med(r['handler']) / med(r['raw']):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
