"""The ensemble rules side by side, answered as served, and the default rule chosen by measurement.

    python -m training.rules --run checkpoints/demo --data data/rules_synthetic.h5 --write \
        [--samples samples/galaxy10_decals] [--markdown docs/ensemble_rules.md]

Every rule's accuracy, NLL and ECE over the calibrated members' answers (galaxy_morph.Predictor,
the server's answer path), on an HDF5 file of labelled galaxies (--data: all its rows, or the
first --limit) and on the real sample JPEGs (--samples). With --write, the rule with the lowest
NLL on --data (ties: accuracy) becomes the run's default in RUN/ensemble.json, which the
Predictor, Ray and `make archive`'s workflow answer with.

training.evaluate makes the same choice on the run's own validation split; this command is for a
run whose training file is not at hand, such as the shipped demo models (their 30,000 synthetic
galaxies are not in the repository): --data is then held-out galaxies of the same domain, e.g.
`python -m simulation.synthetic --out data/rules_synthetic.h5 --n 3000 --seed 1` (another seed
than the training file's 0: other galaxies).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from galaxy_morph.calibration import ece, nll
from galaxy_morph.data import DataError, file_sha256
from galaxy_morph.ensemble import choose_rule, rules_for
from galaxy_morph.files import atomic_write_json, atomic_write_text
from galaxy_morph.predictor import ENSEMBLE, SETTINGS_FILE, Predictor, read_settings
from training.evaluate import ensemble_probs, load_samples


def member_probabilities(predictor: Predictor, images) -> dict[str, np.ndarray]:
    """Each member's served (calibrated) probabilities: {name: (n, classes)}."""
    names = predictor.class_names
    answers = predictor.answer_batch(images)
    bad = [a for a in answers if not isinstance(a, dict)]
    if bad:
        raise DataError(f"{len(bad)} images could not be read: {bad[0]}")
    return {m: np.array([[a[m]["probabilities"][c] for c in names] for a in answers]) for m in predictor.members}


def rule_figures(predictor: Predictor, images, y) -> dict:
    """{member or rule: {"accuracy", "nll", "ece", "n"}} over the images, every member and every rule."""
    probs = member_probabilities(predictor, images)
    f1 = {m: mem.f1 for m, mem in predictor.members.items()}
    rows = {**probs, **{rule: ensemble_probs(rule, probs, f1) for rule in rules_for(list(probs))
                        if rule != "weighted" or all(f1.values())}}
    y = np.asarray(y)
    return {k: {"accuracy": float(np.mean(p.argmax(1) == y)), "nll": nll(p, y), "ece": ece(p, y), "n": int(len(y))}
            for k, p in rows.items()}


def h5_rows(path: Path, limit: int | None = None) -> tuple[list, np.ndarray]:
    with h5py.File(path, "r") as f:
        n = len(f["ans"]) if limit is None else min(limit, len(f["ans"]))
        return list(f["images"][:n]), np.asarray(f["ans"][:n])


def markdown(run: Path, tables: dict[str, dict], chosen: str | None) -> str:
    lines = [f"Run `{run}`; the members answer calibrated, as served. "
             + (f"Default rule: **`{chosen}`** (the lowest NLL on the first table)." if chosen else ""), ""]
    for title, figures in tables.items():
        n = next(iter(figures.values()))["n"]
        lines += [f"### {title} ({n} galaxies)", "", "| | accuracy | NLL | ECE (15 bins) |", "|---|---|---|---|"]
        lines += [f"| {'`' + k + '` rule' if k in ('seed', 'mean', 'weighted') else k} | {v['accuracy']:.3f} "
                  f"| {v['nll']:.3f} | {v['ece']:.3f} |" for k, v in figures.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.rules", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder with two or more checkpoints")
    ap.add_argument("--data", help="HDF5 of labelled galaxies the models were not trained on")
    ap.add_argument("--limit", type=int, default=None, help="use the first N rows of --data")
    ap.add_argument("--samples", default=None, help="also the real sample JPEGs (class_K_N.jpg)")
    ap.add_argument("--write", action="store_true", help="write the rule chosen on --data to RUN/ensemble.json")
    ap.add_argument("--markdown", default=None, help="write the tables to this file")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    run = Path(args.run)
    try:
        if args.write and not args.data:
            raise DataError("--write needs --data: the rule is chosen on labelled galaxies of the training domain")
        predictor = Predictor.from_run(run, ENSEMBLE, rule="mean", device=args.device)
        tables, chosen = {}, None
        if args.data:
            images, y = h5_rows(Path(args.data), args.limit)
            tables[f"{Path(args.data).name}"] = figures = rule_figures(predictor, images, y)
            rules = {r: v for r, v in figures.items() if r in rules_for(list(predictor.members))}
            chosen = choose_rule(rules)
            if args.write:
                settings = {**read_settings(run), "default_rule": chosen, "rule_models": list(predictor.members),
                            "chosen_on": {"data": str(args.data), "data_sha256": file_sha256(args.data),
                                          "n": int(len(y)), "tta": False,
                                          "how": "the lowest NLL of the calibrated members' combination, "
                                                 "ties by accuracy (python -m training.rules)"},
                            "validation": rules, "chosen_by": rules}
                atomic_write_json(run / SETTINGS_FILE, settings)
        if args.samples:
            images, y = load_samples(args.samples)
            if not len(y):
                raise DataError(f"no class_K_N.jpg samples in {args.samples}")
            tables[f"real samples ({args.samples})"] = rule_figures(predictor, images, y)
    except (DataError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(run, tables, chosen)
    print(text)
    if args.markdown:
        atomic_write_text(args.markdown, text)
    if args.write:
        print(f"wrote {run / SETTINGS_FILE}: default rule {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
