"""Recipe ablation: `seed`, `strong`, `augmented`, and `augmented` without each switch, on one protocol.

    python -m training.ablate --data data/synthetic.h5 --model b0 --epochs 6 --limit-train 2000 \
        --out runs/ablate [--variants seed,strong,augmented-no-ema] [--device cuda] [--input-size 64]

Every variant trains with training.train on the same split, rows, epochs and schedule length
(--t-max = --epochs) and seed, and is evaluated by training.evaluate on the held-out test split and
the 100 real samples, once as trained and once with dihedral TTA (TTA is the recipe's evaluation
switch, so it is measured on every variant instead of trained without). A variant whose checkpoint
exists is not trained again. Writes OUT/ablation.json and OUT/ablation.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from galaxy_morph.specs import get_spec
from training import evaluate as ev
from training import train as tr
from training.recipes import SWITCHES

VARIANTS = ("seed", "strong", "augmented", *(f"augmented-no-{s}" for s in SWITCHES))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="Galaxy10-schema HDF5 file")
    p.add_argument("--model", default="b0")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--limit-train", type=int, default=None, help="train on N rows of the split's training part")
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--input-size", type=int, default=None,
                   help="train and evaluate at N px instead of the spec's: a cheaper protocol for CPU")
    p.add_argument("--lr", type=float, default=None, help="default: the spec's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the spec's")
    return p.parse_args(argv)


def recipe_args(variant: str) -> list[str]:
    name, *without = variant.split("-no-")
    return ["--recipe", name, *(["--without", ",".join(without)] if without else [])]


def run_variant(variant: str, args, split: Path | None) -> dict:
    run = Path(args.out) / variant
    ckpt = run / args.model
    t0, trained = time.time(), False
    if (ckpt / "model.pt").is_file():  # trained before: only if on this protocol
        hp = json.loads((ckpt / "meta.json").read_text())["hparams"]
        spec = get_spec(args.model)
        wanted = {"epochs": args.epochs, "limit_train": args.limit_train, "seed": args.seed,
                  "input_size": args.input_size, "lr": args.lr or spec.lr,
                  "batch_size": args.batch_size or spec.batch_size}
        found = {k: hp.get(k) for k in wanted}
        if found != wanted:
            raise SystemExit(f"error: {ckpt} was trained with {found}, not {wanted}: choose another --out")
    else:
        optional = {"--limit-train": args.limit_train, "--input-size": args.input_size, "--lr": args.lr,
                    "--batch-size": args.batch_size, "--device": args.device, "--split": split}
        tr.train(tr.parse_args([
            "--model", args.model, "--data", args.data, "--out", str(ckpt), "--seed", str(args.seed),
            "--epochs", str(args.epochs), "--t-max", str(args.epochs), *recipe_args(variant),
            *(a for flag, v in optional.items() if v for a in (flag, str(v)))]))
        trained = True
    row = {"variant": variant, "train_s": round(time.time() - t0) if trained else None, "epochs": args.epochs}
    for tta in (False, True):
        top = ev.evaluate(run, tta=tta, device=args.device, models=[args.model])
        key = "tta" if tta else "plain"
        row[f"test_{key}"] = top["accuracy"][args.model]
        row[f"real_{key}"] = (top.get("real_samples_accuracy") or {}).get(args.model)
    meta = json.loads((ckpt / "meta.json").read_text())
    row["recipe_settings"] = meta["hparams"].get("recipe_settings")
    return row


def write_md(path: Path, rows: list[dict], args) -> None:
    size = f" at {args.input_size} px" if args.input_size else ""
    lines = [f"# Recipe ablation: {args.model}{size}, {args.epochs} epochs, "
             f"{args.limit_train or 'all'} training rows of `{args.data}`", "",
             "Test = the held-out synthetic test split; real = the 100 real Galaxy10 DECaLS samples "
             "(about +-5 points is noise there). `python -m training.ablate` wrote this.", "",
             "| variant | test | test (TTA) | real | real (TTA) | train s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["test_plain"], r["test_tta"], r["real_plain"], r["real_tta"]]
        lines.append(f"| {r['variant']} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                     + f" | {'-' if r['train_s'] is None else r['train_s']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, split = [], None
    for v in variants:
        rows.append(run_variant(v, args, split))
        split = split or out / v / args.model / tr.SPLIT_FILE  # every later variant: the same split
        (out / "ablation.json").write_text(json.dumps(rows, indent=2))
        write_md(out / "ablation.md", rows, args)
        print(f"ablation: {v}: test {rows[-1]['test_plain']:.3f} (TTA {rows[-1]['test_tta']:.3f}), "
              f"real {rows[-1]['real_plain']} (TTA {rows[-1]['real_tta']})", file=sys.stderr, flush=True)
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
