"""Raw in-process rates: the checkpoints in this process, model-only and from the same JPEG bytes.

classify_bytes is what a user's own script does with image bytes without a server (the rate the
serving goals judge TorchServe against); raw_throughput times it and the model-only limit per
target, with the forward on PyTorch eager or on ONNX Runtime (load_members' runtime, the
exported RUN/M/model.onnx that the CPU archives serve). Used by bench.serving and bench.handler;
not a script.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

from bench.common import SAMPLES, TARGETS
from galaxy_morph.specs import PAIR


class OnnxLogits:
    """An exported member on ONNX Runtime, called like the torch model: batch -> logits."""

    def __init__(self, ckpt_dir: Path):
        from galaxy_morph.run_files import ONNX_FILE
        from galaxy_morph.runtimes import OnnxModel

        self.session = OnnxModel(ckpt_dir / ONNX_FILE)

    def __call__(self, x):
        return self.session.features_and_logits(x)[1]


def load_members(run: Path, runtime: str = "torch") -> dict:
    """{"b0": (model, eval transform), "b2": ...}: the checkpoints as the handler loads them;
    runtime "onnx": the model is RUN/M/model.onnx on ONNX Runtime (exported and checked on the
    sample JPEGs first when missing, as the archive builder does)."""
    import torch

    from galaxy_morph.models import load_checkpoint

    members = {}
    for name in PAIR:
        ckpt = load_checkpoint(run / name)
        if runtime == "onnx":
            from galaxy_morph.runtimes import ensure_onnx

            ensure_onnx(run / name, SAMPLES)
            members[name] = (OnnxLogits(run / name), ckpt.transform)
        else:
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


TARGET_MEMBERS = {**{m: (m,) for m in PAIR}, "ensemble": PAIR}


def raw_throughput(members: dict, payloads: list[bytes], seconds: float, batch: int = 8,
                   threads=(1, None), targets=TARGETS, modes=("model", "bytes")) -> dict:
    """Images/s in this process, batches of `batch`, two ways, for each target:

      "model": pre-transformed tensors into the model(s): the physical limit;
      "bytes": the sample JPEG bytes through classify_bytes (decode + transform + forward).

    Measured with each torch thread count in `threads` (None = torch's default, one per core; an
    ONNX Runtime session keeps the count it was made with: measure it with (None,)), in `modes`.
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
    out = {mode: {} for mode in modes}
    try:
        for th in threads:
            torch.set_num_threads(th or default)
            for mode in modes:
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

