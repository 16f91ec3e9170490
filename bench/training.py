"""Training throughput: the real input path vs the raw model step, per spec, recipe and augmentation place.

    python -m bench.training [--data PATH] [--device cpu|cuda] [--batch-size N] [--steps N] [--models b0,b2]
           [--recipes seed,strong,augmented] [--augment loader,device]
    # the GPU run of issue 9, all side by side:
    python -m bench.training --models b0,b2,convnext --recipes seed,strong,augmented --augment loader,device

"real input" times training steps fed by the DataLoader (HDF5 rows -> train transform, the workers
training.train would use); "raw step" times the same steps on random tensors already on the device.
ratio = real / raw should be >= 0.7, or the input path is the bottleneck. Without --data a Galaxy10-
shaped file of random 256x256 images is written to a temp dir. The epoch time is for the Galaxy10
DECaLS training split (80 % of 17,736 images) at the measured real rate. Same step as training
(bf16 autocast + channels_last on CUDA). A recipe adds its own per-step work to both columns where
it belongs: scale/translation jitter to the input path, mixup/cutmix and the EMA update to the step.
--augment device keeps the loader to decoding and resizing (uint8 tensors) and runs the flips,
rotations and crop on the device (galaxy_morph.transforms.DeviceAugment), as training.train --gpu-augment.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler

from galaxy_morph.data import GalaxyH5Dataset, create_h5, inspect_h5
from galaxy_morph.models import build_model
from galaxy_morph.specs import get_spec
from galaxy_morph.transforms import DeviceAugment, train_transform, uint8_transform
from training.recipes import get_recipe
from training.loop import default_workers, make_ema, make_loader, mixer, step

GALAXY10_TRAIN_ROWS = int(0.8 * 17736)


def random_h5(path, n, size=256, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    with create_h5(path, np.arange(n) % num_classes, size,
                   images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)):
        pass
    return path


def timed(fn, warmup, steps, cuda):
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_model(name, data, device, batch_size, steps, warmup, workers, recipe="seed", augment="loader"):
    spec, rec = get_spec(name), get_recipe(recipe)
    cuda = device.type == "cuda"
    bs = batch_size or spec.batch_size
    info = inspect_h5(data)
    k = len(info["class_names"])
    model = build_model(spec, num_classes=k).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    ema = make_ema(model, rec.ema_decay) if rec.ema_decay else None
    mix = mixer(rec, k)
    updates = 0

    def train_step(xb, yb):
        nonlocal updates
        target = yb
        if mix is not None:
            xb, target = mix(xb, yb)
        step(model, xb, target, loss_fn, opt, cuda)
        updates += 1
        if ema is not None:
            ema.update(model, step=updates)

    x = torch.randn(bs, 3, spec.crop, spec.crop, device=device)
    y = torch.randint(0, k, (bs,), device=device)
    raw = timed(lambda: train_step(x, y), warmup, steps, cuda)

    on_device = augment == "device"
    if on_device:
        tf, dev_aug = uint8_transform(spec), DeviceAugment(spec, rec.scale_jitter, rec.translate).to(device).train()
    else:
        tf, dev_aug = train_transform(spec, rec.scale_jitter, rec.translate), None
    ds = GalaxyH5Dataset(data, None, tf)
    sampler = RandomSampler(ds, replacement=True, num_samples=(warmup + steps) * bs)
    batches = iter(make_loader(ds, bs, sampler, workers, cuda))

    def real_step():
        xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        train_step(dev_aug(xb) if on_device else xb, yb)

    real = timed(real_step, warmup, steps, cuda)
    raw_rate, real_rate = steps * bs / raw, steps * bs / real
    return {"model": name, "recipe": recipe, "augment": augment, "input": f"{spec.crop}px", "batch": bs,
            "workers": workers, "raw img/s": raw_rate, "real img/s": real_rate, "ratio": real_rate / raw_rate,
            "epoch s": GALAXY10_TRAIN_ROWS / real_rate}


def fmt(key, v):
    if not isinstance(v, float):
        return str(v)
    if key == "ratio":
        return f"{v:.2f}"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="Galaxy10-schema HDF5 (default: random images in a temp file)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: each spec's batch size")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on CPU, 100 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as training)")
    p.add_argument("--models", default="b0,b2", help="comma-separated specs: b0, b2, convnext")
    p.add_argument("--recipes", default="seed", help="comma-separated: seed, strong, augmented (training/recipes.py)")
    p.add_argument("--augment", default="loader",
                   help="comma-separated: loader (PIL transforms in the DataLoader), device (DeviceAugment)")
    args = p.parse_args(argv)
    try:
        for m in args.models.split(","):
            get_spec(m)
        for r in args.recipes.split(","):
            get_recipe(r)
    except ValueError as e:
        p.error(str(e))
    if set(args.augment.split(",")) - {"loader", "device"}:
        p.error(f"--augment {args.augment!r}: choose from loader, device")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    steps = args.steps or (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    workers = default_workers(cuda) if args.workers is None else args.workers
    name = torch.cuda.get_device_name(device) if cuda else f"CPU x{os.cpu_count()} ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {steps} timed steps after {warmup} warm-up; torch {torch.__version__}"
          f"{'; bf16 autocast + channels_last' if cuda else ''}")

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            largest = max((args.batch_size or get_spec(m).batch_size) for m in args.models.split(","))
            data = random_h5(Path(tmp) / "bench.h5", n=min(2048, largest * (steps + warmup)))
        rows = [bench_model(m, data, device, args.batch_size, steps, warmup, workers, r, a)
                for m in args.models.split(",") for r in args.recipes.split(",") for a in args.augment.split(",")]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(k, v) for k, v in r.items()) + " |")
    print("ratio = real input / raw step (goal >= 0.7); epoch s = Galaxy10 DECaLS train split "
          f"({GALAXY10_TRAIN_ROWS:,} images) at the real rate")


if __name__ == "__main__":
    main()
