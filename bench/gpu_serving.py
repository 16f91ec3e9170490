"""Serving on a GPU against raw on the same GPU: B0 and B2 at concurrency 1, 8 and 64.

    python -m bench.gpu_serving [--device cuda] [--seconds 10] [--out docs]     # make bench-gpu

Builds the archives with the device's serving settings (torchserve_ops.archive DEVICE_CONFIG; cuda: bf16
autocast, batches of up to 32, JPEGs decoded on the GPU), starts TorchServe (token auth on) and,
per model, measures side by side in this one run:

- raw model-only: eval-transformed batches already on the device, the handler's forward
  (galaxy_morph.models.class_probabilities with the archive's precision): the physical limit;
- raw from bytes: the sample JPEG bytes decoded and transformed the way the archive's handler does
  it (on the device for decode=device), batched forward: the handler's work without a server;
- served: `bench.load.load_test` at each concurrency, one image per request.

Writes OUT/benchmarks_gpu.json and OUT/benchmarks_gpu.md, naming the card. `--device cpu` runs the
same script with the CPU settings (tests/test_bench.py keeps it working on machines without a GPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench.common: set before torch loads

import torch  # noqa: E402

from bench.common import DOCS, checkpoints, log, sample_payloads  # noqa: E402
from bench.servers import measure_served, torchserve  # noqa: E402
from galaxy_morph.imaging import decode_image, decode_to_tensor  # noqa: E402
from galaxy_morph.models import class_probabilities, load_checkpoint  # noqa: E402
from galaxy_morph.specs import PAIR  # noqa: E402
from galaxy_morph.transforms import eval_tensor_transform  # noqa: E402
from torchserve_ops.archive import DEVICE_CONFIG, build_all, model_config_for  # noqa: E402
from handlers.galaxy_handler import PRECISIONS  # noqa: E402

CONCURRENCY = (1, 8, 64)


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores"


def raw_rates(run: Path, name: str, device_kind: str, payloads: list[bytes], seconds: float) -> dict:
    """Images/s in this process with the archive's settings for `device_kind`, two ways."""
    config = model_config_for(name, name, device_kind)
    handler, batch = config["handler"], int(config["batchSize"])
    device = torch.device("cuda" if device_kind == "cuda" else "cpu")
    dtype_name = PRECISIONS[handler["precision"]]  # a torch dtype's name, None: fp32
    dtype = getattr(torch, dtype_name) if dtype_name else None
    ckpt = load_checkpoint(run / name, map_location="cpu")
    model = ckpt.model.to(device, memory_format=torch.channels_last).eval()
    on_device, pil = eval_tensor_transform(ckpt.spec), ckpt.transform

    def preprocess(chunk):
        if handler["decode"] == "device":
            return torch.stack([on_device(decode_to_tensor(b, device=device)) for b in chunk])
        return torch.stack([pil(decode_image(b)) for b in chunk]).to(device)

    chunks = [payloads[i:i + batch] for i in range(0, len(payloads) - batch + 1, batch)] or [payloads]
    ready = [preprocess(c) for c in chunks]

    def rate(step) -> float:
        step(0)  # warm-up (cuDNN autotuning, nvJPEG handles)
        done, k, t0 = 0, 0, time.perf_counter()
        while True:
            done += len(step(k))
            k += 1
            if time.perf_counter() - t0 >= seconds and k >= 3:
                return done / (time.perf_counter() - t0)

    # .cpu() waits for the device, as the handler's answer does
    model_only = rate(lambda k: class_probabilities(model, ready[k % len(ready)], False, dtype).cpu())
    from_bytes = rate(lambda k: class_probabilities(model, preprocess(chunks[k % len(chunks)]), False,
                                                    dtype).cpu())
    return {"batch": batch, "precision": handler["precision"], "decode": handler["decode"],
            "raw_img_s": round(model_only, 1), "raw_bytes_img_s": round(from_bytes, 1)}


def write_md(path: Path, result: dict) -> None:
    lines = [f"# Serving on {result['card']}", "",
             f"{result['date']}, `python -m bench.gpu_serving --device {result['device']}`, "
             f"{result['seconds']} s per measurement, checkpoints `{result['checkpoints']}`, "
             "the 100 sample JPEGs one image per request.", "",
             "| model | settings | raw model-only img/s | raw from bytes img/s | "
             + " | ".join(f"served c={c} img/s (p50/p99 ms)" for c in result["concurrency"])
             + " | served/raw-from-bytes at c=8 |",
             "|---|---|---:|---:|" + "---:|" * len(result["concurrency"]) + "---:|"]
    for name, r in result["models"].items():
        served = [r["served"][str(c)] for c in result["concurrency"]]
        lines.append(f"| {name} | {r['precision']}, decode {r['decode']}, batch {r['batch']} | "
                     f"{r['raw_img_s']} | {r['raw_bytes_img_s']} | "
                     + " | ".join(f"{s['img_s']:.1f} ({s['p50_ms']}/{s['p99_ms']})" for s in served)
                     + f" | {r['served_over_raw_bytes_c8']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=list(DEVICE_CONFIG))
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--out", default=str(DOCS), help="folder for benchmarks_gpu.md/json")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or --device cpu to try the script", file=sys.stderr)
        return 2
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    payloads = sample_payloads()
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        run, source = checkpoints(tmp)
        result = {"card": card_name(device), "device": args.device, "seconds": args.seconds,
                  "date": dt.date.today().isoformat(), "checkpoints": source,
                  "concurrency": concurrency, "torch": torch.__version__, "models": {}}
        for name in PAIR:
            result["models"][name] = raw_rates(run, name, args.device, payloads, args.seconds)
            log(f"raw {name}: {result['models'][name]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the workers need the memory now
        store = tmp / "model_store"
        build_all(run, store, models=PAIR, device=args.device)
        with torchserve(store, tmp) as server:
            served = measure_served(server, payloads, args.seconds, concurrency, PAIR)
    for name, r in result["models"].items():
        r["served"] = {str(c): served[(name, c)] for c in concurrency}
        c8 = served.get((name, 8))
        r["served_over_raw_bytes_c8"] = (round(c8["img_s"] / r["raw_bytes_img_s"], 2)
                                         if c8 and r["raw_bytes_img_s"] else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_gpu.json").write_text(json.dumps(result, indent=2))
    write_md(out / "benchmarks_gpu.md", result)
    print((out / "benchmarks_gpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
