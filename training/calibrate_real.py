"""Calibrate a run where the service answers: temperatures fitted on real labelled galaxies.

    python -m training.calibrate_real --run checkpoints/demo --samples samples/galaxy10_decals \
        [--folds 5] [--markdown docs/calibration_real.md]
    python -m training.calibrate_real --run RUN --data labelled.h5 --on "your labels"

A temperature fitted on synthetic validation galaxies does not hold on real ones (the demo B0:
mean confidence 0.84 at accuracy 0.53 on the 100 real samples). This fits, on labelled galaxies of
the served domain, for each answering mode (plain and --tta):
- each model's temperature (minimum NLL), written under "served" in RUN/M/calibration.json, which
  galaxy_morph.Predictor, the handler and the archives then answer with;
- each ensemble rule's temperature on the calibrated members' combination, and the default rule
  (the lowest cross-validated NLL), written to RUN/ensemble.json.
The same galaxies cannot also measure the fit, so the figures are k-fold cross-validated (folds
stratified by class; fit on k-1, measure the held-out fold, pooled over the folds), beside the
figures of the temperatures served before. Rebuild the archives afterwards (make serve does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from galaxy_morph.calibration import fit_temperature, mode, nll, reliability, softmax, write_calibration
from galaxy_morph.data import DataError, file_sha256
from galaxy_morph.ensemble import choose_rule, rules_for
from galaxy_morph.files import atomic_write_json, atomic_write_text
from galaxy_morph.predictor import SETTINGS_FILE, Member, read_settings, run_members
from training.evaluate import ensemble_probs, load_samples

BINS = 10  # the reliability bins the figures use (100 galaxies fill 15 thinly)


def raw_probabilities(run: Path, images, tta: bool, device="cpu") -> tuple[dict, dict, dict]:
    """Each member's uncalibrated probabilities {m: (n, classes)}, the temperature it answers with
    today and its per-class validation F1."""
    probs, served, f1 = {}, {}, {}
    for m in run_members(run):
        member = Member(run / m, device, tta)
        served[m], member.temperature = member.temperature, 1.0
        p = [member.probabilities(member.inputs(images[i:i + 32]))[0].cpu().numpy() for i in range(0, len(images), 32)]
        probs[m], f1[m] = np.concatenate(p).astype(np.float64), member.f1
    return probs, served, f1


def figures(p: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": float(np.mean(p.argmax(1) == y)), "mean_confidence": float(p.max(1).mean()),
            "ece": reliability(p, y, BINS)["ece"], "nll": nll(p, y), "n": int(len(y))}


def folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Held-out index sets of a class-stratified k-fold split."""
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(k, int(np.bincount(y).max())))
    return [test for _, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)]


def fit(probs: dict, f1: dict, y: np.ndarray, train: np.ndarray, rules) -> tuple[dict, dict]:
    """Temperatures of the members and of each rule's calibrated combination, on the `train` rows."""
    logp = {m: np.log(np.clip(p, 1e-12, None)) for m, p in probs.items()}
    t_members = {m: fit_temperature(lp[train], y[train]) for m, lp in logp.items()}
    cal = {m: softmax(logp[m], t_members[m]) for m in probs}
    t_rules = {r: fit_temperature(np.log(np.clip(ensemble_probs(r, cal, f1), 1e-12, None))[train], y[train])
               for r in rules}
    return t_members, t_rules


def apply(probs: dict, f1: dict, t_members: dict, t_rules: dict) -> dict:
    """{member or rule: calibrated probabilities} of every row."""
    cal = {m: softmax(np.log(np.clip(p, 1e-12, None)), t_members[m]) for m, p in probs.items()}
    out = dict(cal)
    for r, t in t_rules.items():
        out[r] = softmax(np.log(np.clip(ensemble_probs(r, cal, f1), 1e-12, None)), t)
    return out


def calibrate_mode(run: Path, images, y: np.ndarray, tta: bool, k: int, device="cpu") -> dict:
    """Fits on every row, cross-validated figures and the figures as served before, for one mode."""
    probs, served, f1 = raw_probabilities(run, images, tta, device)
    rules = [r for r in rules_for(list(probs)) if r != "weighted" or all(f1.values())] if len(probs) > 1 else []
    before = apply(probs, f1, served, dict.fromkeys(rules, 1.0))
    pooled = {k_: np.zeros_like(next(iter(probs.values()))) for k_ in list(probs) + rules}
    for test in folds(y, k):
        train = np.setdiff1d(np.arange(len(y)), test)
        for name, p in apply(probs, f1, *fit(probs, f1, y, train, rules)).items():
            pooled[name][test] = p[test]
    t_members, t_rules = fit(probs, f1, y, np.arange(len(y)), rules)
    after = apply(probs, f1, t_members, t_rules)
    return {"temperatures": {**t_members, **t_rules}, "members": list(probs), "rules": rules,
            "before": {n: figures(p, y) for n, p in before.items()},
            "cv": {n: figures(p, y) for n, p in pooled.items()},
            "in_sample": {n: figures(p, y) for n, p in after.items()},
            "reliability_cv": {n: reliability(p, y, BINS) for n, p in pooled.items()}}


def write(run: Path, results: dict, on: str, source: dict, k: int) -> str | None:
    """The members' served fits; for an ensemble, the rules' fits and the default rule (the plain
    mode's cross-validated NLL)."""
    settings = read_settings(run)
    for tta, r in results.items():
        for m in r["members"]:
            write_calibration(run / m, tta, {"temperature": r["temperatures"][m], "on": on, "n": source["n"],
                                             "fitted_on": source, "cv": r["cv"][m], "before": r["before"][m],
                                             "reliability_cv": r["reliability_cv"][m]}, served=True)
        for rule in r["rules"]:
            settings.setdefault("calibration", {}).setdefault(rule, {})[mode(tta)] = {
                "temperature": r["temperatures"][rule], "on": on, "n": source["n"], "cv": r["cv"][rule],
                "before": r["before"][rule]}
    plain = results[False]
    if not plain["rules"]:
        return None
    chosen = choose_rule({rule: plain["cv"][rule] for rule in plain["rules"]})
    settings.update(default_rule=chosen, rule_models=plain["members"],
                    chosen_by={rule: plain["cv"][rule] for rule in plain["rules"]},
                    chosen_on={**source, "on": on, "tta": False,
                               "how": f"the lowest {k}-fold cross-validated NLL of the calibrated combination "
                                      "(training.calibrate_real)"})
    atomic_write_json(run / SETTINGS_FILE, settings)
    return chosen


def markdown(run: Path, results: dict, on: str, n: int, chosen: str | None) -> str:
    lines = [f"Run `{run}`, calibrated on {n} {on} galaxies; ECE over {BINS} bins. Before: the temperatures "
             "served until now. CV: fitted on the other folds, measured on the held-out one, pooled. Served: "
             "fitted on all of them and measured on the same (what the archives now answer)."
             + (f" Default rule: **`{chosen}`** (the lowest CV NLL)." if chosen else ""), ""]
    for tta, r in results.items():
        lines += [f"### {'TTA (8 dihedral views)' if tta else 'Plain'}", "",
                  "| | T | accuracy | mean confidence: before → CV (served) | ECE: before → CV (served) "
                  "| NLL: before → CV (served) |", "|---|---|---|---|---|---|"]
        for name in r["members"] + r["rules"]:
            b, c, a = r["before"][name], r["cv"][name], r["in_sample"][name]
            label = f"`{name}` rule" if name in r["rules"] else name
            lines.append(f"| {label} | {r['temperatures'][name]:.2f} | {a['accuracy']:.2f} "
                         f"| {b['mean_confidence']:.2f} → {c['mean_confidence']:.2f} ({a['mean_confidence']:.2f}) "
                         f"| {b['ece']:.3f} → {c['ece']:.3f} ({a['ece']:.3f}) | {b['nll']:.3f} → {c['nll']:.3f} "
                         f"({a['nll']:.3f}) |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="folder of class_K_N.jpg real galaxies")
    src.add_argument("--data", help="Galaxy10-schema HDF5 of labelled galaxies")
    ap.add_argument("--on", default="real", help='what the galaxies are: "real" (default) or "your labels"')
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-tta", action="store_true", help="calibrate the plain mode only")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    run = Path(args.run)
    try:
        if len(run_members(run)) < 1:
            raise DataError(f"no checkpoint in {run}")
        if args.samples:
            images, y = load_samples(args.samples)
            source = {"samples": str(args.samples)}
        else:
            import h5py

            with h5py.File(args.data, "r") as f:
                images, y = list(f["images"][:]), np.asarray(f["ans"][:])
            source = {"data": str(args.data), "data_sha256": file_sha256(args.data)}
        if len(y) < 2 * args.folds:
            raise DataError(f"{len(y)} labelled galaxies are too few for {args.folds}-fold cross-validation")
        source.update(n=int(len(y)), labels=np.bincount(y, minlength=10).tolist())
        results = {tta: calibrate_mode(run, images, y, tta, args.folds, args.device)
                   for tta in ((False,) if args.no_tta else (False, True))}
        chosen = write(run, results, args.on, source, args.folds)
    except (DataError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(run, results, args.on, source["n"], chosen)
    print(text)
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
