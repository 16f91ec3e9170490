"""Demo models: b0 and b2 trained briefly on CPU on synthetic galaxies, evaluated, scored on real samples.

    python -m galaxy_morph.synthetic --out data/synthetic.h5     # make demo-data
    python -m training.demo --data data/synthetic.h5 --out runs/demo [--force]   # make demo-models

Writes runs/demo/b0/, runs/demo/b2/ (checkpoint, split, history, report.json) and runs/demo/report.md
+ report.json. Training is skipped when both checkpoints already exist (--force retrains). Fails
(exit 1) when b0 misses MIN_B0_ACCURACY on the held-out synthetic test split: that is the proof
that learning works. The models never see a real galaxy; their score on the 100 real samples in
samples/galaxy10_decals/ is recorded as "real_samples_accuracy".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from galaxy_morph.data import DataError
from training import evaluate as ev
from training import train as tr

MIN_B0_ACCURACY = 0.80
# Minutes on 2 CPU cores instead of the seed's 30 epochs on a GPU: a short cosine schedule
# (t_max = epochs) and a higher learning rate than the spec's. From random init B0 needs ~500
# steps to pass 80 % (validation 0.81 after 3 epochs of the 4,800 rows, 0.91 after 4); B2 at 224 px
# costs ~3x more per image on CPU, so it gets a small subset for one epoch: it exercises the
# two-model path and is not expected to be good.
DEMO = {
    "b0": {"epochs": 4, "limit_train": None, "batch_size": 32, "lr": 1e-3},
    "b2": {"epochs": 1, "limit_train": 640, "batch_size": 16, "lr": 1e-3},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synthetic.h5")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--force", action="store_true", help="retrain even if both checkpoints exist")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if "OMP_NUM_THREADS" not in os.environ:
        # On a small shared CPU box, threads that wait for each other at every op are several
        # times slower than one thread (seen: 1 step/s with one thread, 10-20 s/step with two).
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    t0 = time.time()
    try:
        trained = False
        split = None
        for name in ev.MODELS:
            if (out / name / "model.pt").is_file() and not args.force:
                print(f"demo: {out / name} already holds a checkpoint (--force retrains)", file=sys.stderr)
            else:
                cfg = DEMO[name]
                targs = tr.parse_args([
                    "--model", name, "--data", args.data, "--out", str(out / name), "--seed", str(args.seed),
                    "--epochs", str(cfg["epochs"]), "--t-max", str(cfg["epochs"]), "--lr", str(cfg["lr"]),
                    "--batch-size", str(cfg["batch_size"]), "--device", "cpu",
                    *(["--limit-train", str(cfg["limit_train"])] if cfg["limit_train"] else []),
                    *(["--split", str(split)] if split else [])])
                t = time.time()
                tr.train(targs)
                trained = True
                print(f"demo: {name} trained in {time.time() - t:.0f}s", file=sys.stderr)
            split = out / name / tr.SPLIT_FILE  # both models share one split
        report = out / "report.json"
        if not trained and report.is_file():
            top = json.loads(report.read_text())
        else:
            top = ev.evaluate(out, device="cpu")
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc = top["accuracy"]
    print(f"demo done in {time.time() - t0:.0f}s: synthetic test accuracy "
          + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    if top.get("real_samples_accuracy"):
        print("real samples accuracy: " + ", ".join(
            f"{k} {v:.2f}" for k, v in top["real_samples_accuracy"].items() if k != "n"))
    print(f"report: {out / 'report.md'}")
    if acc["b0"] < MIN_B0_ACCURACY:
        print(f"FAILED: b0 reached {acc['b0']:.3f} test accuracy on synthetic data, below the "
              f"required {MIN_B0_ACCURACY:.2f}: training does not work as it should", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
