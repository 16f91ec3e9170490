"""Train one model (b0, b2, convnext) on a Galaxy10-schema HDF5 file; defaults are the seed's (galaxy_morph.specs).

    python -m training.train --model b0 --data data/synthetic.h5 --out runs/b0 [--epochs 30] [--resume]
    python -m training.train --model convnext --data PATH --out DIR --pretrained --recipe strong
    torchrun --nproc_per_node 2 -m training.train --model b2 --data data/Galaxy10_DECals.h5 --out runs/b2

--pretrained starts from the library's ImageNet weights (galaxy_morph.models.imagenet_state_dict:
torchvision's weights API, timm's pretrained weights, with their caches); without network and
without cached weights it stops before anything is written. --recipe strong adds warm-up + a longer
cosine, an EMA of the weights, scale/translation jitter and mixup/cutmix (training/recipes.py).
--gpu-augment moves the augmentation onto the training device (uint8 batches, DeviceAugment).

DIR (--out) ends up holding the best checkpoint by validation accuracy (model.pt + meta.json), the
split (split.json, reused by evaluation and archives), history.csv/json, and last.pt for --resume.
Under torchrun every process trains on its shard (DistributedDataParallel); only rank 0 writes.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler

from galaxy_morph.answers import DEFAULT_VERSION
from galaxy_morph.files import atomic_path, atomic_write_json
from galaxy_morph.data import (DataError, GalaxyH5Dataset, file_sha256, inspect_h5, load_split,
                               make_split, save_split)
from galaxy_morph.models import PretrainedUnavailable, build_model, save_checkpoint
from galaxy_morph.specs import ALL_SPECS, get_spec
from galaxy_morph.transforms import DeviceAugment, eval_transform, train_transform, uint8_transform
from training.loop import (default_workers, head, make_ema, make_loader, mixer, rank, run_epoch, unwrap,
                           warmup_cosine, world)
from training.recipes import RECIPES, SWITCHES, get_recipe

VERSION = DEFAULT_VERSION
SPLIT_FILE = "split.json"
LAST_FILE = "last.pt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(ALL_SPECS), help="architecture spec")
    p.add_argument("--data", required=True, help="Galaxy10-schema HDF5 file")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: the spec's cosine T_max (seed recipe), twice that (strong)")
    p.add_argument("--batch-size", type=int, default=None, help="per process; default: the spec's")
    p.add_argument("--lr", type=float, default=None, help="default: the spec's")
    p.add_argument("--t-max", type=int, default=None,
                   help="cosine schedule length in epochs; default: the spec's (seed), --epochs (strong)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help=f"continue from DIR/{LAST_FILE}")
    p.add_argument("--limit-train", type=int, default=None, help="train on a random subset of N rows")
    p.add_argument("--weights", default=None, help="local state-dict file to start from")
    p.add_argument("--pretrained", action="store_true",
                   help="start from the library's ImageNet weights (cache, else download)")
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES), help="training recipe (training/recipes.py)")
    p.add_argument("--without", default="", help=f"comma-separated recipe switches to turn off, for "
                                                 f"ablations: {', '.join(SWITCHES)}")
    p.add_argument("--gpu-augment", action="store_true",
                   help="augment uint8 batches on the training device instead of in the DataLoader")
    p.add_argument("--split", default=None, help="split JSON to use (default: DIR/split.json or a new one)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--version", default=VERSION, help="model version string recorded in meta.json")
    p.add_argument("--input-size", type=int, default=None,
                   help="resize and crop to N px instead of the spec's (quick experiments on CPU); "
                        "recorded in the checkpoint's spec, so evaluation and serving follow it")
    args = p.parse_args(argv)
    if args.input_size is not None and not 16 <= args.input_size <= 1024:
        p.error(f"--input-size {args.input_size}: choose 16 to 1024 px")
    return args


def log(*a):
    if rank() == 0:
        print(*a, file=sys.stderr, flush=True)


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_split(args, info, sha):
    """Load --split, or DIR/split.json made for the same data, or make a new one. Writes nothing."""
    candidates = [Path(args.split)] if args.split else [Path(args.out) / SPLIT_FILE]
    for path in candidates:
        if not path.is_file():
            if args.split:
                raise DataError(f"split file not found: {path}")
            continue
        split, meta = load_split(path)
        if meta.get("data_sha256") != sha:
            if args.split:
                raise DataError(f"{path} was made for another data file (sha256 differs)")
            log(f"{path} was made for another data file: making a new split")
            continue
        if max(int(s.max(initial=-1)) for s in split.values()) >= info["n"]:
            raise DataError(f"{path} refers to rows beyond the {info['n']} in the data")
        return split, False
    split = make_split(info["labels"], info["ra"], info["dec"], seed=args.seed,
                       class_names=info["class_names"])
    return split, True


def write_history(out, history):
    atomic_write_json(out / "history.json", history)
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def train(args) -> dict:
    """Run the whole training; returns {"best_val_acc", "best_epoch", "out"}. Raises DataError."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if args.device is None else args.device.startswith("cuda")
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if want_cuda:
        device = torch.device(f"cuda:{local_rank}" if distributed else (args.device or "cuda"))
        if device.index is None:  # set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        # Share the cores between the processes (OMP_NUM_THREADS wins: on a busy machine one
        # thread per process is faster than threads that wait for each other).
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world()))
    cuda = device.type == "cuda"

    # Everything is checked before anything is written.
    spec = get_spec(args.model)
    if args.input_size:
        spec = dataclasses.replace(spec, resize=args.input_size, crop=args.input_size)
    out = Path(args.out)
    info = inspect_h5(args.data)
    sha = file_sha256(args.data)
    class_names = info["class_names"]
    split, new_split = resolve_split(args, info, sha)
    recipe = get_recipe(args.recipe, [w.strip() for w in args.without.split(",") if w.strip()])
    if args.weights is not None and args.pretrained:
        raise ValueError("choose one of --weights FILE and --pretrained")
    epochs = args.epochs or round(spec.t_max * recipe.epochs_per_t_max)
    per_batch_schedule = recipe.warmup_epochs > 0
    hp = {
        "model": spec.name, "epochs": epochs, "batch_size": args.batch_size or spec.batch_size,
        "lr": args.lr or spec.lr, "weight_decay": spec.weight_decay,
        # a recipe longer than the spec's T_max decays over its whole run, warm-up or not
        "t_max": args.t_max or (epochs if per_batch_schedule or recipe.epochs_per_t_max != 1 else spec.t_max),
        "label_smoothing": spec.label_smoothing, "seed": args.seed, "limit_train": args.limit_train,
        "input_size": args.input_size,
        "weights": args.weights, "pretrained": bool(args.pretrained), "recipe": recipe.name,
        "recipe_settings": recipe.to_dict(), "gpu_augment": bool(args.gpu_augment),
        "world_size": world(), "device": device.type, "amp": "bf16" if cuda else None,
    }
    resume_state = None
    if args.resume:
        last = out / LAST_FILE
        if not last.is_file():
            raise DataError(f"--resume: nothing to resume, {last} does not exist")
        resume_state = torch.load(last, map_location="cpu", weights_only=False)
        if resume_state["data_sha256"] != sha:
            raise DataError(f"--resume: {last} was trained on another data file (sha256 differs)")
        if resume_state["hparams"]["model"] != spec.name:
            raise DataError(f"--resume: {last} is a {resume_state['hparams']['model']} run, not {spec.name}")
        if resume_state["hparams"].get("input_size") != args.input_size:
            raise DataError(f"--resume: {last} was trained with --input-size "
                            f"{resume_state['hparams'].get('input_size')}, not {args.input_size}")
        was = resume_state["hparams"].get("recipe", "seed")
        if was != recipe.name:
            raise DataError(f"--resume: {last} was trained with --recipe {was}, not {recipe.name}")
    seed_all(args.seed)
    # ImageNet weights are fetched (or refused, offline) here, before anything is written; a
    # resumed run takes its weights from last.pt instead.
    model = build_model(spec, num_classes=len(class_names), weights=args.weights,
                        pretrained=args.pretrained and resume_state is None)
    if args.weights is None:
        # The libraries' default head init gives logits of std ~5 (a first loss of ~6 for 10
        # classes) and costs a from-scratch run its first epoch; a zero head starts at chance.
        nn.init.zeros_(head(model).weight)
        nn.init.zeros_(head(model).bias)

    train_idx = split["train"]
    if args.limit_train:
        train_idx = np.sort(np.random.default_rng(args.seed).permutation(train_idx)[:args.limit_train])
    if dist.is_initialized():
        dist.barrier()  # every process has read any existing split before rank 0 overwrites it
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        if new_split or not (out / SPLIT_FILE).is_file() or args.split:
            save_split(out / SPLIT_FILE, split, data_sha256=sha, n=info["n"], seed=args.seed,
                       fractions=[0.8, 0.1, 0.1], class_names=class_names)
    log(f"{spec.name}: {len(class_names)} classes, train {len(train_idx)} / val {len(split['val'])} "
        f"/ test {len(split['test'])} rows, {epochs} epochs on {device.type} x{world()}, recipe {recipe.name}"
        f"{', ImageNet weights' if args.pretrained else ''}{', device-side augmentation' if args.gpu_augment else ''}")

    workers = default_workers(cuda) if args.workers is None else args.workers
    if args.gpu_augment:
        train_tf, augment = uint8_transform(spec), DeviceAugment(spec, recipe.scale_jitter, recipe.translate).to(device)
    else:
        train_tf, augment = train_transform(spec, recipe.scale_jitter, recipe.translate), None
    train_ds = GalaxyH5Dataset(args.data, train_idx, train_tf)
    val_ds = GalaxyH5Dataset(args.data, split["val"][rank()::world()], eval_transform(spec))
    gen = torch.Generator()
    if dist.is_initialized():
        sampler = DistributedSampler(train_ds, shuffle=True, seed=args.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_ds, generator=gen)
    # BatchNorm fails on a batch of one: drop a last batch that small.
    bs = hp["batch_size"]
    train_dl = make_loader(train_ds, bs, sampler, workers, cuda, drop_last=len(train_ds) % bs == 1)
    val_dl = make_loader(val_ds, bs * 2, None, workers, cuda)

    model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if per_batch_schedule:
        steps = len(train_dl)
        warmup = round(min(recipe.warmup_epochs, hp["t_max"] / 10) * steps)
        scheduler = warmup_cosine(optimizer, warmup, hp["t_max"] * steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp["t_max"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    ema = make_ema(model, recipe.ema_decay) if recipe.ema_decay else None
    mix = mixer(recipe, len(class_names))

    start, best, best_epoch, history, updates = 0, -1.0, 0, [], 0
    if resume_state:
        unwrap(model).load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(resume_state["ema"]["module"])
            updates = resume_state["ema"]["updates"]
        start, best, best_epoch = resume_state["epoch"], resume_state["best_val_acc"], resume_state["best_epoch"]
        history = resume_state["history"]
        log(f"resuming after epoch {start} (best val acc {best:.4f} at epoch {best_epoch})")

    for epoch in range(start, epochs):
        # Seeding per epoch makes a resumed run draw the same shuffles and augmentations.
        seed_all(args.seed + 1000 * epoch + rank())
        gen.manual_seed(args.seed + epoch)
        if dist.is_initialized():
            sampler.set_epoch(epoch)
        t0 = time.time()
        lr = optimizer.param_groups[0]["lr"]
        tr_loss, tr_acc, updates = run_epoch(model, train_dl, loss_fn, device, cuda, optimizer,
                                             desc=f"{spec.name} epoch {epoch + 1}/{epochs}", augment=augment,
                                             mix=mix, batch_scheduler=scheduler if per_batch_schedule else None,
                                             ema=ema, updates=updates)
        # The EMA weights, where there are some, are the ones validated, saved and exported.
        evaluated = ema.module if ema is not None else model
        va_loss, va_acc, _ = run_epoch(evaluated, val_dl, loss_fn, device, cuda, desc="val")
        if not per_batch_schedule:
            scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": round(tr_loss, 5), "train_acc": round(tr_acc, 5),
               "val_loss": round(va_loss, 5), "val_acc": round(va_acc, 5), "lr": lr,
               "seconds": round(time.time() - t0, 2)}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | "
            f"val loss {va_loss:.4f} acc {va_acc:.4f} | {row['seconds']:.1f}s")
        if rank() != 0:
            continue
        if va_acc > best:
            best, best_epoch = va_acc, epoch + 1
            save_checkpoint(out, evaluated, spec, class_names, version=args.version,
                            data={"path": str(args.data), "sha256": sha, "n": info["n"]},
                            split_file=SPLIT_FILE, hparams=hp,
                            metrics={k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
                            epoch=epoch + 1)
        write_history(out, history)
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_val_acc": best,
                 "best_epoch": best_epoch, "history": history, "hparams": hp, "data_sha256": sha,
                 "ema": {"module": ema.module.state_dict(), "updates": updates, "decay": ema.decay}
                 if ema is not None else None}
        with atomic_path(out / LAST_FILE) as tmp:
            torch.save(state, tmp)
    if dist.is_initialized():
        dist.barrier()
    log(f"best val acc {best:.4f} at epoch {best_epoch}; checkpoint in {out}")
    return {"best_val_acc": best, "best_epoch": best_epoch, "out": str(out)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (DataError, FileNotFoundError, ValueError, PretrainedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
