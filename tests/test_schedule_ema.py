"""The library-backed EMA (timm's ModelEmaV3, training.loop.make_ema) and per-batch schedule (torch's
SequentialLR, training.loop.warmup_cosine) against the rules they replaced, computed here by hand:
the EMA decay min(decay, (1 + n) / (10 + n)) at the n-th update, floating-point state averaged and
integer buffers copied; the lr (i + 1) / W during the warm-up, a cosine to zero at T, zero after."""
import copy
import io
import math

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from training import loop


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def old_decay(decay, n):
    return min(decay, (1 + n) / (10 + n))


def old_ema(initial, snapshots, decay):
    """The replaced EMA applied by hand, in float64: e <- d e + (1 - d) m at the n-th update."""
    ema = {k: v.double() if v.dtype.is_floating_point else v.clone() for k, v in initial.items()}
    for n, state in enumerate(snapshots, start=1):
        d = old_decay(decay, n)
        for k, v in state.items():
            ema[k] = d * ema[k] + (1 - d) * v.double() if v.dtype.is_floating_point else v.clone()
    return ema


def assert_state_close(got, want):
    assert list(got) == list(want)
    for k, v in want.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(got[k].double(), v, rtol=1e-6, atol=1e-6), k
        else:
            assert torch.equal(got[k], v), k


@pytest.mark.parametrize("decay", [0.999, 0.4])  # 0.4: the warm-up reaches the decay at n = 5
def test_ema_decay_is_the_old_warmed_up_decay(decay):
    ema = loop.make_ema(tiny_model(), decay)
    assert isinstance(ema, ModelEmaV3)
    for n in [*range(1, 200), 1000, 8990, 8991, 10**5]:
        assert ema.get_decay(n) == pytest.approx(old_decay(decay, n), rel=1e-12, abs=1e-12), n


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: the model is its `.module`."""
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class Snapshots:
    """A batch_scheduler for run_epoch: records the weights after each optimiser step (before the EMA update)."""
    def __init__(self, model):
        self.model, self.states = model, []

    def step(self):
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


@pytest.mark.parametrize("decay", [0.999, 0.4])
def test_ema_through_run_epoch_matches_the_old_rule(decay):
    model = tiny_model()
    wrapped = Wrapped(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema = loop.make_ema(wrapped, decay)
    # The EMA holds a copy of the unwrapped model, frozen.
    assert list(ema.module.state_dict()) == list(initial)
    assert not any(p.requires_grad for p in ema.module.parameters())
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(7)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    rec = Snapshots(model)
    loss, acc, updates = loop.run_epoch(wrapped, loader[:3], nn.CrossEntropyLoss(), torch.device("cpu"), False,
                                         opt, batch_scheduler=rec, ema=ema)
    assert updates == 3
    # A second epoch goes on counting (as a resumed run does from the saved count).
    _, _, updates = loop.run_epoch(wrapped, loader[3:], nn.CrossEntropyLoss(), torch.device("cpu"), False,
                                    opt, batch_scheduler=rec, ema=ema, updates=updates)
    assert updates == 7 and len(rec.states) == 7
    got = ema.module.state_dict()
    assert_state_close(got, old_ema(initial, rec.states, decay))
    # BatchNorm's statistics were averaged, its integer step count copied, and the EMA is not the model.
    assert int(got["1.num_batches_tracked"]) == 7
    assert not torch.allclose(got["1.running_mean"], model.state_dict()["1.running_mean"])
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])


def test_ema_resumes_from_its_saved_state():
    model = tiny_model()
    ema = loop.make_ema(model, 0.9)
    states = []
    for n in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        states.append(copy.deepcopy(model.state_dict()))
        ema.update(model, step=n)
        if n == 3:  # what train.py writes to last.pt
            saved = {"module": copy.deepcopy(ema.module.state_dict()), "updates": n, "decay": ema.decay}
    resumed = loop.make_ema(tiny_model(), 0.9)
    resumed.module.load_state_dict(saved["module"])
    for n, state in enumerate(states[3:], start=saved["updates"] + 1):
        model.load_state_dict(state)
        resumed.update(model, step=n)
    assert_state_close(resumed.module.state_dict(), {k: v.double() if v.dtype.is_floating_point else v
                                                     for k, v in ema.module.state_dict().items()})


def old_lr(base, i, warmup, total):
    """The replaced LambdaLR's factor at step i, times the base lr."""
    if i < warmup:
        return base * (i + 1) / warmup
    progress = (i - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def sgd(lr):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


@pytest.mark.parametrize("warmup,total", [(0, 4), (1, 5), (2, 3), (4, 12), (3, 30), (0, 1), (12, 1200)])
def test_warmup_cosine_lr_per_step_is_the_old_formula(warmup, total):
    base = 3e-4
    opt = sgd(base)
    got = lrs(loop.warmup_cosine(opt, warmup, total), opt, total + 5)  # past the end too: zero
    want = [old_lr(base, i, warmup, total) for i in range(total + 5)]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert got[total:] == [0.0] * 5


def test_warmup_cosine_resumes_from_its_state_dict():
    base, warmup, total, cut = 1e-3, 5, 40, 17
    opt = sgd(base)
    sched = loop.warmup_cosine(opt, warmup, total)
    first = lrs(sched, opt, cut)
    buf = io.BytesIO()  # as train.py saves and loads last.pt
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    # train.py's order: a fresh scheduler, then the optimizer's state, then the scheduler's.
    opt2 = sgd(base)
    sched2 = loop.warmup_cosine(opt2, warmup, total)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    rest = lrs(sched2, opt2, total + 3 - cut)
    assert first + rest == pytest.approx([old_lr(base, i, warmup, total) for i in range(total + 3)],
                                         rel=1e-6, abs=1e-12)
