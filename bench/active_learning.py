"""Active learning on synthetic galaxies: does labelling the galaxies the model is least sure of save labels?

    python -m bench.active_learning [--pool 3000] [--test 1000] [--start 100]
           [--budgets 100,200,300,400,600,800] [--strategies random,entropy,margin,bald]
           [--seeds 0,1,2] [--size 48] [--steps 250] [--passes 20] [--jobs 2]
           [--markdown docs/active_learning.md] [--plot docs/active_learning.png] [--quick]

The simulated loop of Walmsley et al. 2020 (MNRAS 491, 1554), with the known classes as the oracle:
a model is trained on a small labelled start set; each round it scores the unlabelled pool with an
acquisition function (labelling.acquisition: random, entropy, margin, BALD over MC-dropout passes),
the top-scoring batch is "labelled" (its true classes revealed), the model is retrained from scratch
and its accuracy on one fixed held-out set is recorded, up to the largest budget.

Data come from simulation.synthetic.render_galaxy, rendered at --render-size (256, as the real
cutouts) and area-downsampled to --size. Seeds: image i of the pool is drawn from the stream
(1000, i), of the held-out set from (3000, i), of the start set of seed s from (2000 + s, i); the
shipped demo models were trained on seed 0. Classes are balanced and shuffled, as the generator's
default. Rendered arrays are cached in --data (runs/active_learning/data.npz) and reused while the
sizes match.

The model is a small CNN (four 3x3 conv + batch-norm + ReLU stages, the first with stride 2, global
average pooling, dropout, linear head) trained from scratch each round with the same recipe at every budget: --steps AdamW
steps of --batch-size with a one-cycle schedule, random flips and 90-degree rotations. The model at
the start set is the same for every strategy of one seed (same data, same init). A seed changes
the start set, the weight init and batch order, and the random acquisition; the pool and the held-out
set stay fixed. BALD keeps batch norm in eval mode and only the dropout layer in train mode.

Raw per-seed, per-round accuracies and the acquired pool indices go to --results (JSON). The printed
markdown has accuracy mean +- std over seeds per budget, and Walmsley's measure: how many labels each
strategy needs (linear interpolation on the mean curve) to reach the accuracy random reaches at the
largest budget, and the saving relative to random. --markdown writes that block into a page between
two marker comments (the rest of the page is kept), --plot draws accuracy against labels;
--from-results JSON rebuilds both from a saved results file without running the loop.

About 500 lines in one file: the experiment's config, data, model, loop and CLI are used nowhere
else and read in order; the report (table, plot) is bench/active_learning_report.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from galaxy_morph.files import atomic_path
from galaxy_morph.specs import GALAXY10_CLASSES
from bench.active_learning_report import (MARK_BEGIN, MARK_END, labels_to_reach, markdown, plot,  # noqa: F401
                                          summarise, write_markdown)
from labelling.acquisition import bald, entropy, margin, random_scores, rank

NUM_CLASSES = len(GALAXY10_CLASSES)
STRATEGIES = ("random", "entropy", "margin", "bald")
POOL_SEED, START_SEED, TEST_SEED = 1000, 2000, 3000  # the demo models' synthetic data used seed 0
DATA_VERSION = 1
RUNS = Path("runs/active_learning")


@dataclass
class Config:
    pool: int = 3000
    test: int = 1000
    start: int = 100
    budgets: tuple = (100, 200, 300, 400, 600, 800)
    strategies: tuple = STRATEGIES
    seeds: tuple = (0, 1, 2)
    size: int = 48
    render_size: int = 256
    width: int = 16
    dropout: float = 0.5
    steps: int = 250
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    passes: int = 20
    table: tuple = (100, 200, 400, 800)

    def check(self):
        b = list(self.budgets)
        if b[0] != self.start:
            raise ValueError(f"the first budget must be the start set size {self.start}, got {b[0]}")
        if any(y <= x for x, y in zip(b, b[1:])):
            raise ValueError(f"budgets must increase, got {b}")
        if b[-1] - self.start > self.pool:
            raise ValueError(f"the largest budget {b[-1]} needs more than the pool of {self.pool}")
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}: choose from {', '.join(STRATEGIES)}")
        if self.passes < 2 and "bald" in self.strategies:
            raise ValueError("BALD needs at least 2 MC-dropout passes")
        if self.start < 2:
            raise ValueError("the start set needs at least 2 galaxies (batch norm)")
        return self


QUICK = dict(pool=48, test=30, start=10, budgets=(10, 20, 30), seeds=(0,), size=16, render_size=32, width=8,
             steps=12, batch_size=16, passes=5, table=(10, 20, 30))


# ---------------------------------------------------------------------------------------------- data

def balanced_labels(n: int, seed: int) -> np.ndarray:
    """n class indices, as balanced as n allows, shuffled by a stream of seed (as the generator's)."""
    return np.random.default_rng([seed, 0x6A1A]).permutation(np.arange(n) % NUM_CLASSES)


def _render_block(job):
    from PIL import Image

    from simulation.synthetic import render_galaxy

    seed, first, labels, render_size, size = job
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for k, c in enumerate(labels):
        img = render_galaxy(int(c), np.random.default_rng([seed, first + k]), render_size)
        if size != render_size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BOX))
        out[k] = img
    return out


def render_set(n: int, seed: int, render_size: int, size: int, workers: int = 1):
    """(images (n, size, size, 3) uint8, labels (n,)): image i from the stream (seed, i)."""
    labels = balanced_labels(n, seed)
    chunk = 100
    jobs = [(seed, a, labels[a:a + chunk], render_size, size) for a in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), _single_thread) as pool:
            blocks = pool.map(_render_block, jobs)
    else:
        blocks = [_render_block(j) for j in jobs]
    return np.concatenate(blocks), labels


def _data_key(cfg: Config) -> dict:
    return {"version": DATA_VERSION, "pool": cfg.pool, "test": cfg.test, "start": cfg.start,
            "size": cfg.size, "render_size": cfg.render_size}


def load_or_render(cfg: Config, path, workers: int = 1, log=print) -> dict:
    """The pool, held-out and per-seed start sets as arrays, from the cache at `path` when it holds
    the same sizes and every seed asked for; otherwise rendered and cached there."""
    path = Path(path)
    key = _data_key(cfg)
    if path.exists():
        with np.load(path) as z:
            cached = json.loads(str(z["key"]))
            cached_seeds = [int(s) for s in z["start_seeds"]]
            if {k: cached.get(k) for k in key} == key and set(cfg.seeds) <= set(cached_seeds):
                data = {k: z[k] for k in z.files if k != "key"}
                log(f"data: {path} (cached)")
                return data
    t0 = time.perf_counter()
    pool_x, pool_y = render_set(cfg.pool, POOL_SEED, cfg.render_size, cfg.size, workers)
    test_x, test_y = render_set(cfg.test, TEST_SEED, cfg.render_size, cfg.size, workers)
    starts = [render_set(cfg.start, START_SEED + s, cfg.render_size, cfg.size, workers) for s in cfg.seeds]
    data = {"pool_x": pool_x, "pool_y": pool_y, "test_x": test_x, "test_y": test_y,
            "start_x": np.stack([s[0] for s in starts]), "start_y": np.stack([s[1] for s in starts]),
            "start_seeds": np.asarray(cfg.seeds, np.int64)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz"
        np.savez(f, key=json.dumps(key), **data)
    log(f"data: rendered {cfg.pool + cfg.test + cfg.start * len(cfg.seeds)} galaxies in "
        f"{time.perf_counter() - t0:.0f} s -> {path}")
    return data


class Prepared:
    """The arrays as normalised float tensors (N, 3, H, W): per-channel mean and std of the pool."""

    def __init__(self, data: dict):
        pool = torch.from_numpy(np.ascontiguousarray(data["pool_x"])).permute(0, 3, 1, 2).float() / 255
        self.mean = pool.mean((0, 2, 3), keepdim=True)
        self.std = pool.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
        self.pool_x = self._norm(data["pool_x"])
        self.pool_y = torch.from_numpy(np.asarray(data["pool_y"], np.int64))
        self.test_x = self._norm(data["test_x"])
        self.test_y = torch.from_numpy(np.asarray(data["test_y"], np.int64))
        seeds = [int(s) for s in data["start_seeds"]]
        self.start = {s: (self._norm(data["start_x"][i]), torch.from_numpy(np.asarray(data["start_y"][i], np.int64)))
                      for i, s in enumerate(seeds)}

    def _norm(self, x):
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255
        return ((t - self.mean) / self.std).contiguous()


# --------------------------------------------------------------------------------------------- model

class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU stages (width, 2w, 4w, 4w channels): the first with stride 2, 2x2
    max-pools between the others (48 px -> 24, 12, 6, 3), global average pooling, then dropout and
    a linear head: the only dropout, so MC dropout can run the conv features once and the head many
    times. The stride-2 stem makes training four times faster on a CPU than a stride-1 one."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16, dropout: float = 0.5):
        super().__init__()
        layers, c_in = [], 3
        chans = (width, 2 * width, 4 * width, 4 * width)
        for i, c in enumerate(chans):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random element of the 8 flips and 90-degree rotations for each image of x (N, C, H, W)."""
    m = (torch.rand(x.shape[0], 3, generator=g) < 0.5)[:, :, None, None, None]
    x = torch.where(m[:, 0], x.flip(-1), x)
    x = torch.where(m[:, 1], x.flip(-2), x)
    return torch.where(m[:, 2], x.transpose(-1, -2), x)


def train_model(x: torch.Tensor, y: torch.Tensor, seed: int, cfg: Config) -> SmallCNN:
    """A SmallCNN trained from scratch on (x, y): cfg.steps AdamW steps, one-cycle learning rate."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SmallCNN(NUM_CLASSES, cfg.width, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    n = len(x)
    bs = max(2, min(cfg.batch_size, n))
    order, pos = torch.randperm(n, generator=g), 0
    model.train()
    for _ in range(cfg.steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs]
        pos += bs
        loss = F.cross_entropy(model(augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def features(model: SmallCNN, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def probabilities(model: SmallCNN, x: torch.Tensor) -> np.ndarray:
    """Softmax (n, classes) of the deterministic model (dropout off, batch norm in eval)."""
    model.eval()
    return model.head(features(model, x)).softmax(-1).double().numpy()


@torch.no_grad()
def mc_dropout_samples(model: SmallCNN, x: torch.Tensor, passes: int) -> np.ndarray:
    """(passes, n, classes) softmaxes with dropout on: batch norm stays in eval mode and only the
    dropout layers are switched to train mode. The conv features hold no dropout, so they are computed
    once and each pass draws a fresh dropout mask in the head (the same as running the whole model)."""
    if any(isinstance(m, nn.Dropout) for m in model.features.modules()):
        raise ValueError("dropout inside the features: the passes would have to run the whole model")
    f = features(model, x)
    dropouts = [m for m in model.head.modules() if isinstance(m, nn.Dropout)]
    if not dropouts or all(m.p == 0 for m in dropouts):
        raise ValueError("the head has no dropout: MC-dropout passes would all be equal")
    model.eval()
    for m in dropouts:
        m.train()
    try:
        out = torch.stack([model.head(f).softmax(-1) for _ in range(passes)])
    finally:
        model.eval()
    return out.double().numpy()


@torch.no_grad()
def accuracy(model: SmallCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.from_numpy(probabilities(model, x)).argmax(-1) == y).float().mean())


# ---------------------------------------------------------------------------------------------- loop

def init_seed(seed: int, labels: int) -> int:
    """The training seed of a round: the same for every strategy at a given seed and budget."""
    return 100_003 * seed + labels


def acquisition_scores(strategy: str, model: SmallCNN, x: torch.Tensor, passes: int, seed: int) -> np.ndarray:
    """Scores (n,) of the unlabelled galaxies x, higher = label first."""
    if strategy == "random":
        return random_scores(len(x), seed)
    if strategy == "bald":
        torch.manual_seed(seed)  # the dropout masks
        return bald(mc_dropout_samples(model, x, passes))
    p = probabilities(model, x)
    if strategy == "entropy":
        return entropy(p)
    if strategy == "margin":
        return margin(p)
    raise ValueError(f"unknown strategy {strategy!r}")


def start_round(prep: Prepared, seed: int, cfg: Config):
    """(state_dict, accuracy) of the model trained on seed's start set: shared by all strategies."""
    x, y = prep.start[seed]
    model = train_model(x, y, init_seed(seed, len(x)), cfg)
    return model.state_dict(), accuracy(model, prep.test_x, prep.test_y)


def run_strategy(prep: Prepared, strategy: str, seed: int, cfg: Config, start=None) -> list[dict]:
    """The loop for one strategy and seed: [{labels, accuracy, acquired, acquired_classes, seconds}]
    per budget; `acquired` holds the pool indices labelled in that round, best first."""
    sx, sy = prep.start[seed]
    if start is None:
        start = start_round(prep, seed, cfg)
    state, acc = start
    model = SmallCNN(NUM_CLASSES, cfg.width, cfg.dropout)
    model.load_state_dict(state)
    model.eval()
    rounds = [{"labels": len(sx), "accuracy": acc, "acquired": [], "acquired_classes": [0] * NUM_CLASSES}]
    acquired = np.empty(0, np.int64)
    n_pool = len(prep.pool_x)
    for r, budget in enumerate(cfg.budgets[1:], 1):
        t0 = time.perf_counter()
        k = budget - len(sx) - len(acquired)
        unlabelled = np.setdiff1d(np.arange(n_pool), acquired)
        scores = acquisition_scores(strategy, model, prep.pool_x[unlabelled], cfg.passes, 7919 * seed + r)
        pick = unlabelled[rank(scores, k)]
        acquired = np.concatenate([acquired, pick])
        x = torch.cat([sx, prep.pool_x[acquired]])
        y = torch.cat([sy, prep.pool_y[acquired]])
        model = train_model(x, y, init_seed(seed, budget), cfg)
        rounds.append({"labels": int(len(x)), "accuracy": accuracy(model, prep.test_x, prep.test_y),
                       "acquired": pick.tolist(),
                       "acquired_classes": np.bincount(prep.pool_y[pick].numpy(), minlength=NUM_CLASSES).tolist(),
                       "seconds": round(time.perf_counter() - t0, 2)})
    return rounds


_WORKER: dict = {}


def _single_thread(*init):
    torch.set_num_threads(1)
    if init:
        data_path, cfg = init
        with np.load(data_path) as z:
            _WORKER["prep"] = Prepared({k: z[k] for k in z.files if k != "key"})
        _WORKER["cfg"] = cfg


def _start_job(seed):
    return seed, start_round(_WORKER["prep"], seed, _WORKER["cfg"])


def _strategy_job(job):
    strategy, seed, start = job
    t0 = time.perf_counter()
    rounds = run_strategy(_WORKER["prep"], strategy, seed, _WORKER["cfg"], start)
    return strategy, seed, rounds, time.perf_counter() - t0


def run_all(cfg: Config, data: dict, data_path=None, jobs: int = 1, log=print) -> dict:
    """{strategy: {seed: rounds}} for every strategy and seed; in `jobs` processes (each with one
    thread) when jobs > 1, which read the data from data_path."""
    results = {s: {} for s in cfg.strategies}
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs, _single_thread, (str(data_path), cfg)) as pool:
            starts = dict(pool.map(_start_job, cfg.seeds))
            log("start models: " + ", ".join(f"seed {s} {a:.3f}" for s, (_, a) in starts.items()))
            work = [(st, s, starts[s]) for s in cfg.seeds for st in cfg.strategies]
            for strategy, seed, rounds, sec in pool.imap_unordered(_strategy_job, work):
                results[strategy][seed] = rounds
                log(f"{strategy} seed {seed}: " + " ".join(f"{r['accuracy']:.3f}" for r in rounds) + f" ({sec:.0f} s)")
    else:
        prep = Prepared(data)
        for seed in cfg.seeds:
            start = start_round(prep, seed, cfg)
            for strategy in cfg.strategies:
                t0 = time.perf_counter()
                results[strategy][seed] = run_strategy(prep, strategy, seed, cfg, start)
                log(f"{strategy} seed {seed}: " + " ".join(f"{r['accuracy']:.3f}" for r in results[strategy][seed])
                    + f" ({time.perf_counter() - t0:.0f} s)")
    return {st: {s: results[st][s] for s in cfg.seeds} for st in cfg.strategies}


# ---------------------------------------------------------------------------------------------- CLI

def _ints(s: str) -> tuple:
    return tuple(int(v) for v in s.split(",") if v.strip())


def parse_args(argv=None):
    d = Config()
    p = argparse.ArgumentParser(prog="python -m bench.active_learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny configuration (the test's): seconds")
    p.add_argument("--pool", type=int, default=d.pool, help="unlabelled pool size")
    p.add_argument("--test", type=int, default=d.test, help="fixed held-out set size")
    p.add_argument("--start", type=int, default=d.start, help="labelled start set size per seed")
    p.add_argument("--budgets", type=_ints, default=d.budgets, help="labels after each round, from --start")
    p.add_argument("--strategies", type=lambda s: tuple(s.split(",")), default=d.strategies)
    p.add_argument("--seeds", type=_ints, default=d.seeds)
    p.add_argument("--size", type=int, default=d.size, help="model input side in pixels")
    p.add_argument("--render-size", type=int, default=d.render_size, help="rendered side, area-downsampled")
    p.add_argument("--width", type=int, default=d.width, help="channels of the first conv stage")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per training (every round)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--passes", type=int, default=d.passes, help="MC-dropout passes for BALD")
    p.add_argument("--table", type=_ints, default=d.table, help="budgets shown in the table")
    p.add_argument("--jobs", type=int, default=1, help="processes, one thread each (seed x strategy runs)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: --jobs)")
    p.add_argument("--data", default=str(RUNS / "data.npz"), help="cache of the rendered arrays")
    p.add_argument("--results", default=str(RUNS / "results.json"), help="raw per-seed per-round results")
    p.add_argument("--markdown", default=None, help="page to write the results block into")
    p.add_argument("--plot", default=None, help="PNG of accuracy against labels")
    p.add_argument("--from-results", default=None, metavar="JSON",
                   help="no loop: rebuild the table, markdown and plot from a saved --results file")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: getattr(args, k) for k in fields})
    try:
        cfg.check()
    except ValueError as e:
        p.error(str(e))
    return args, cfg


def from_results(path) -> tuple[Config, dict]:
    """(config, {strategy: {seed: rounds}}) of a saved --results file."""
    saved = json.loads(Path(path).read_text())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    return cfg, {st: {int(s): r for s, r in by_seed.items()} for st, by_seed in saved["results"].items()}


def _report(summary, cfg, args, log):
    block = markdown(summary, cfg)
    log("")
    log(block)
    if args.markdown:
        log(f"markdown: {write_markdown(args.markdown, block)}")
    if args.plot:
        log(f"plot: {plot(summary, cfg, args.plot)}")
    return block


def main(argv=None, log=print) -> dict:
    args, cfg = parse_args(argv)
    if args.from_results:
        cfg, results = from_results(args.from_results)
        summary = summarise(results, cfg)
        _report(summary, cfg, args, log)
        return {"config": dataclasses.asdict(cfg), "results": results, "summary": summary}
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_or_render(cfg, args.data, args.workers or args.jobs, log)
    log(f"pool {cfg.pool}, held-out {cfg.test}, start {cfg.start}, {cfg.size} px; budgets "
        f"{','.join(map(str, cfg.budgets))}; seeds {','.join(map(str, cfg.seeds))}; {cfg.steps} steps per "
        f"training; torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.jobs} job(s)")
    t1 = time.perf_counter()
    results = run_all(cfg, data, args.data, args.jobs, log)
    summary = summarise(results, cfg)
    out = {"config": dataclasses.asdict(cfg), "seeds": {"pool": POOL_SEED, "test": TEST_SEED,
                                                       "start": [START_SEED + s for s in cfg.seeds]},
           "seconds": {"data": round(t1 - t0, 1), "loop": round(time.perf_counter() - t1, 1)},
           "results": {st: {str(s): r for s, r in by_seed.items()} for st, by_seed in results.items()},
           "summary": summary}
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    _report(summary, cfg, args, log)
    log(f"results: {path}; data {out['seconds']['data']} s, loop {out['seconds']['loop']} s")
    return out


if __name__ == "__main__":
    main()
