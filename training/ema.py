"""Exponential moving average of a model's weights (the `strong` recipe's EMA; see training/recipes.py).

    ema = EMA(model, decay=0.999)
    ... after every optimiser step: ema.update(model)
    evaluate / save ema.module

The effective decay is warmed up as min(decay, (1 + n) / (10 + n)) over the n updates (as timm's
ModelEmaV3), so that a short run is not dominated by its random initial weights. Floating-point
buffers (BatchNorm running statistics) are averaged too; integer buffers are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0
        self._pairs = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module):
        if self._pairs is None:
            own, cur = self.module.state_dict(), _unwrap(model).state_dict()
            floats = [k for k, v in own.items() if v.dtype.is_floating_point]
            others = [k for k, v in own.items() if not v.dtype.is_floating_point]
            self._pairs = ([own[k] for k in floats], [cur[k] for k in floats],
                           [own[k] for k in others], [cur[k] for k in others])
        self.updates += 1
        ema_f, cur_f, ema_i, cur_i = self._pairs
        torch._foreach_lerp_(ema_f, cur_f, 1.0 - self.current_decay())
        for e, c in zip(ema_i, cur_i):
            e.copy_(c)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict):
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
        self._pairs = None
