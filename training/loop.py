"""The training step and its parts, shared by training.train and bench.training: loaders, one
optimiser step, an epoch, the EMA of the weights (timm's ModelEmaV3), the warm-up cosine schedule
(torch's schedulers) and mixup/cutmix.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.recipes import Recipe


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def make_loader(ds, batch_size, sampler, workers, cuda, drop_last=False):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=cuda, drop_last=drop_last, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def step(model, x, y, loss_fn, optimizer=None, cuda=False):
    """Forward (bf16 autocast and channels_last on CUDA), and a parameter update when an optimizer is given."""
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logits, loss


def head(model):
    """The final Linear layer (torchvision: classifier[-1], timm: classifier)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def default_workers(cuda):
    # On a small CPU box the workers would only steal cores from the model.
    return max(1, min(14, (os.cpu_count() or 1) // world() - 1)) if cuda else 0


def run_epoch(model, loader, loss_fn, device, cuda, optimizer=None, desc="", augment=None, mix=None,
              batch_scheduler=None, ema=None, updates=0):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy) over all processes
    and the number of optimiser steps taken so far (`updates` plus this pass's).

    `augment` turns a device batch into the model input (DeviceAugment), `mix` mixes a training
    batch and its labels (mixup/cutmix: soft targets, accuracy against their top class),
    `batch_scheduler` steps after every batch and `ema` (make_ema) is updated after every optimiser
    step with the step's number, which its decay warm-up needs.
    """
    training = optimizer is not None
    model.train(training)
    if augment is not None:
        augment.train(training)
    totals = torch.zeros(3, dtype=torch.float64)
    bar = tqdm(loader, desc=desc, leave=False, disable=rank() != 0 or not training, file=sys.stderr)
    with torch.set_grad_enabled(training):
        for x, y in bar:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x)
            target = y
            if training and mix is not None:
                x, target = mix(x, y)
                y = target.argmax(1)
            logits, loss = step(model, x, target, loss_fn, optimizer, cuda)
            if training:
                updates += 1
                if batch_scheduler is not None:
                    batch_scheduler.step()
                if ema is not None:
                    ema.update(unwrap(model), step=updates)
            n = y.numel()
            totals += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
    if dist.is_initialized():
        dist.all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2]), updates


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


def make_ema(model: nn.Module, decay: float) -> ModelEmaV3:
    """timm's EMA of the (unwrapped) model's weights; call `ema.update(unwrap(model), step=n)` after the
    n-th optimiser step (n = 1, 2, ...) and evaluate / save `ema.module`.

    The decay is warmed up as min(decay, (1 + n) / (10 + n)): timm's warm-up is
    1 - (1 + s / warmup_gamma) ** -warmup_power with s = step - update_after_step - 1, which with
    gamma 9, power 1 and update_after_step -2 is s / (s + 9) at s = n + 1, i.e. (1 + n) / (10 + n).
    Floating-point tensors of the state dict (parameters, BatchNorm statistics) are averaged,
    integer buffers copied.
    """
    ema = ModelEmaV3(unwrap(model), decay=decay, use_warmup=True, warmup_gamma=9.0, warmup_power=1.0,
                     update_after_step=-2)
    ema.module.requires_grad_(False)
    return ema


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """Per-batch schedule: linear warm-up to the base lr, then cosine decay to zero at total_steps.

    Step i (0-based) runs at base * (i + 1) / warmup_steps for i < warmup_steps, then at
    base * (1 + cos(pi * (i - warmup_steps) / (total_steps - warmup_steps))) / 2, and at zero from
    total_steps on: torch's LinearLR, CosineAnnealingLR and a zero LambdaLR in a SequentialLR.
    """
    cosine_steps = max(1, total_steps - warmup_steps)
    phases, milestones = [], []
    if warmup_steps > 0:
        phases.append(LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0,
                               total_iters=max(1, warmup_steps - 1)))
        milestones.append(warmup_steps)
    phases.append(CosineAnnealingLR(optimizer, T_max=cosine_steps, eta_min=0.0))
    milestones.append(warmup_steps + cosine_steps)
    phases.append(LambdaLR(optimizer, lambda _: 0.0))
    return SequentialLR(optimizer, phases, milestones)


def mixer(recipe: Recipe, num_classes: int):
    """mixup or cutmix (one of the two per batch) from torchvision.transforms.v2, or None."""
    if not (recipe.mixup_alpha or recipe.cutmix_alpha):
        return None
    from torchvision.transforms import v2

    return v2.RandomChoice([kind(alpha=alpha, num_classes=num_classes) for kind, alpha in
                            ((v2.MixUp, recipe.mixup_alpha), (v2.CutMix, recipe.cutmix_alpha)) if alpha])
