"""Evaluate the checkpoints of a run and the ensemble rules on the saved test split.

    python -m training.evaluate --run runs/demo [--data PATH] [--tta] [--samples DIR] [--models b0,b2,convnext]

RUN holds one checkpoint folder per model spec (b0/, b2/, convnext/: whichever exist; an ensemble
needs two or more), or is itself one checkpoint folder. The `mean` and `weighted` rules combine
every model; `seed` is defined for two models only and is left out for other counts. Writes RUN/report.md and RUN/report.json (all side by side), and per model
RUN/NAME/report.json, confusion.png and curves.png. The data file defaults to the one recorded in
the checkpoint and must have the recorded SHA256. The temperature is fitted on the validation split
(where the per-class F1 that weights the `weighted` rule comes from too) and written, with the
split's reliability before and after, to RUN/NAME/calibration.json for this mode (plain or --tta):
the served archives apply it, and the ensemble figures here combine the calibrated members. The
ensemble's default rule is chosen on the validation split too, as the rule with the lowest NLL
(ties: accuracy), and written with every rule's figures to RUN/ensemble.json, which the Predictor,
Ray and the archives' workflow answer with. When the class names are Galaxy10's and the real sample
folder exists, the 100 real images are scored as well, through galaxy_morph.Predictor as served
("real_samples_accuracy").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch.utils.data import DataLoader

from galaxy_morph import GALAXY10_CLASSES
from galaxy_morph.calibration import ece, nll, softmax, write_calibration
from galaxy_morph.data import DataError, GalaxyH5Dataset, file_sha256, load_split
from galaxy_morph.ensemble import choose_rule, combine_models, rules_for
from galaxy_morph.files import atomic_write_json, atomic_write_text
from galaxy_morph.imaging import decode_image
from galaxy_morph.models import class_probabilities, load_checkpoint, read_meta
from galaxy_morph.predictor import ENSEMBLE, SETTINGS_FILE, Member, Predictor
from galaxy_morph.specs import ALL_SPECS
from galaxy_morph.transforms import eval_transform
from training.calibrate import calibration_entry
from survey.samples import SAMPLES_DIR, sample_files

SAMPLES = SAMPLES_DIR


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="folder with b0/, b2/, convnext/ checkpoints (any of them)")
    p.add_argument("--models", default=None, help="comma-separated subset to evaluate (default: every one found)")
    p.add_argument("--data", default=None, help="HDF5 file (default: the one in the checkpoint meta)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/90-degree rotations")
    p.add_argument("--samples", default=str(SAMPLES), help="real sample JPEGs class_{label}_{k}.jpg ('' to skip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available")
    return p.parse_args(argv)


def find_checkpoints(run: Path, models=None) -> dict[str, Path]:
    if (run / "meta.json").is_file():
        return {read_meta(run)["model"]: run}
    wanted = tuple(ALL_SPECS) if models is None else tuple(models)
    unknown = [m for m in wanted if m not in ALL_SPECS]
    if unknown:
        raise DataError(f"unknown model {unknown[0]!r}: choose from {', '.join(ALL_SPECS)}")
    found = {m: run / m for m in wanted if (run / m / "meta.json").is_file()}
    if models is not None and len(found) != len(wanted):
        missing = [m for m in wanted if m not in found]
        raise DataError(f"no checkpoint for {', '.join(missing)} in {run} (expected {run}/M/meta.json)")
    if not found:
        raise DataError(f"no checkpoint in {run}: expected {run}/M/meta.json for M in {', '.join(ALL_SPECS)}")
    return found


@torch.no_grad()
def log_probs(model, batches, device, tta=False) -> np.ndarray:
    """Log of the (TTA-averaged) softmax, float64 rows; softmax(logp / T) is temperature scaling."""
    model.to(device).eval()
    out = [class_probabilities(model, x.to(device), tta).clamp_min(1e-12).log().double().cpu()
           for x in batches]
    return torch.cat(out).numpy()


def predict_split(model, spec, data, indices, device, tta, batch_size, workers):
    ds = GalaxyH5Dataset(data, indices, eval_transform(spec))
    dl = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    labels = ds.labels[ds.indices]
    return log_probs(model, (x for x, _ in dl), device, tta), labels


def scores(y, pred, class_names) -> dict:
    k = len(class_names)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    return {
        "accuracy": float(np.mean(y == pred)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, n in enumerate(class_names)},
        "macro": {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean())},
        "confusion_matrix": confusion_matrix(y, pred, labels=range(k)).tolist(),
    }


def ensemble_probs(rule, probs: dict, f1: dict | None = None) -> np.ndarray:
    """Row by row, the rule's distribution over {model: (n, classes) probabilities}."""
    names = list(probs)
    return np.array([combine_models(rule, dict(zip(names, rows)), f1)["probabilities"]
                     for rows in zip(*(probs[n] for n in names))])


def load_samples(folder) -> tuple[list, np.ndarray]:
    files = sample_files(folder)
    # Decoded exactly as the server decodes an upload.
    images = [decode_image(p.read_bytes()) for p, _ in files]
    return images, np.array([label for _, label in files])


def plot_confusion(cm, class_names, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cm)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(cm)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, style in (("train", "-o"), ("val", "--o")):
        a1.plot(ep, [h[f"{key}_loss"] for h in history], style, ms=3, label=key)
        a2.plot(ep, [h[f"{key}_acc"] for h in history], style, ms=3, label=key)
    a1.set(xlabel="epoch", ylabel="loss")
    a2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    a1.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path, obj):
    atomic_write_json(path, obj, indent=2)


def evaluate(run, data=None, tta=False, samples=str(SAMPLES), batch_size=64, workers=0, device=None,
             models=None) -> dict:
    """Evaluate everything, then write the reports; raises DataError before writing anything."""
    run = Path(run)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpts = find_checkpoints(run, models)
    sha_cache = {}
    reports, preds, calibrations = {}, {}, {}
    for name, folder in ckpts.items():
        ckpt = load_checkpoint(folder)
        model, meta, spec = ckpt.model, ckpt.meta, ckpt.spec
        path = data or meta["data"]["path"]
        if not Path(path).is_file():
            raise DataError(f"data file not found: {path} (pass --data)")
        sha = sha_cache.setdefault(str(path), file_sha256(path))
        if sha != meta["data"]["sha256"]:
            raise DataError(f"{path} is not the file {name} was trained on: sha256 {sha[:12]}... "
                            f"!= {meta['data']['sha256'][:12]}...")
        split, _ = load_split(folder / meta.get("split_file", "split.json"))
        print(f"{name}: predicting {len(split['val'])} val + {len(split['test'])} test rows"
              f"{' x8 (TTA)' if tta else ''} on {device}", file=sys.stderr, flush=True)
        val = predict_split(model, spec, path, split["val"], device, tta, batch_size, workers)
        test = predict_split(model, spec, path, split["test"], device, tta, batch_size, workers)
        preds[name] = {"val": val, "test": test, "split": split}

        names = meta["class_names"]
        val_scores = scores(val[1], val[0].argmax(1), names)
        calibrations[name] = calibration_entry(*val, sha)
        t = calibrations[name]["temperature"]
        logp, y = test
        r = {"model": name, "version": meta.get("version"), "checkpoint": str(folder),
             "data": {"path": str(path), "sha256": sha}, "tta": tta, "class_names": names,
             "n_test": int(len(y)), "n_val": int(len(val[1])),
             **scores(y, logp.argmax(1), names),
             "val_accuracy": val_scores["accuracy"],
             "val_per_class_f1": [val_scores["per_class"][n]["f1"] for n in names],
             "temperature": t,
             "ece": {"uncalibrated": ece(softmax(logp), y), "calibrated": ece(softmax(logp, t), y)},
             "epoch": meta.get("epoch"), "hparams": meta.get("hparams")}
        reports[name] = r

    ensemble, settings = {}, None
    if len(reports) >= 2:
        first = next(iter(reports))
        same = all(r["class_names"] == reports[first]["class_names"]
                   and all(np.array_equal(preds[n]["split"][k], preds[first]["split"][k]) for k in ("val", "test"))
                   for n, r in reports.items())
        if not same:
            print(f"warning: {', '.join(reports)} differ in classes or split: no ensemble", file=sys.stderr)
        else:
            # Each member calibrated, as the served models answer the workflow.
            f1 = {n: r["val_per_class_f1"] for n, r in reports.items()}
            figures = {}
            for part in ("val", "test"):
                probs = {n: softmax(preds[n][part][0], r["temperature"]) for n, r in reports.items()}
                y = preds[first][part][1]
                for rule in rules_for(list(reports)):
                    p = ensemble_probs(rule, probs, f1)
                    figures.setdefault(part, {})[rule] = {"nll": nll(p, y), "accuracy": float(np.mean(p.argmax(1) == y)),
                                                          "ece": ece(p, y)}
                    if part == "test":
                        ensemble[rule] = {**scores(y, p.argmax(1), reports[first]["class_names"]), "ece": ece(p, y),
                                          "nll": nll(p, y), "models": list(reports)}
            chosen = choose_rule(figures["val"])
            settings = {"default_rule": chosen, "rule_models": list(reports),
                        "chosen_on": {"split": "val", "n": int(len(preds[first]["val"][1])), "tta": tta,
                                      "data_sha256": reports[first]["data"]["sha256"],
                                      "how": "the lowest NLL of the calibrated members' combination, ties by accuracy"},
                        "validation": figures["val"], "test": figures["test"], "chosen_by": figures["val"]}
            for r in reports.values():
                r["ensemble"] = {rule: {"accuracy": e["accuracy"], "macro_f1": e["macro"]["f1"], "nll": e["nll"]}
                                 for rule, e in ensemble.items()}
                r["ensemble_default_rule"] = chosen

    # Everything is computed: now write.
    single = (run / "meta.json").is_file()
    for name, r in reports.items():
        folder = ckpts[name]
        plot_confusion(r["confusion_matrix"], r["class_names"],
                       f"{name} test confusion (accuracy {r['accuracy']:.3f})", folder / "confusion.png")
        hist = folder / "history.json"
        if hist.is_file():
            plot_curves(json.loads(hist.read_text()), f"{name} training curves", folder / "curves.png")
        r["figures"] = {"confusion": "confusion.png", "curves": "curves.png" if hist.is_file() else None}
        write_calibration(folder, tta, calibrations[name])
    if settings and not (run / "meta.json").is_file():
        atomic_write_json(run / SETTINGS_FILE, settings)
    real = None
    if samples and Path(samples).is_dir() and all(r["class_names"] == list(GALAXY10_CLASSES) for r in reports.values()):
        real = score_samples(ckpts, reports, samples, device, tta, settings["default_rule"] if settings else None)
    for name, r in reports.items():
        write_json(ckpts[name] / "report.json", r)
    shown = settings["default_rule"] if settings else None
    if shown:
        plot_confusion(ensemble[shown]["confusion_matrix"], next(iter(reports.values()))["class_names"],
                       f"ensemble ({shown} rule) test confusion (accuracy {ensemble[shown]['accuracy']:.3f})",
                       run / "confusion_ensemble.png")
    top = {"run": str(run), "tta": tta, "models": reports, "ensemble": ensemble, "ensemble_settings": settings,
           "accuracy": {**{n: r["accuracy"] for n, r in reports.items()},
                        **{f"ensemble_{k}": e["accuracy"] for k, e in ensemble.items()}}}
    if real:
        top["real_samples_accuracy"] = real
    if not single:
        write_json(run / "report.json", top)
    atomic_write_text(run / "report.md", markdown(top))
    return top


def sample_predictor(ckpts: dict, device, tta=False, rule=None, temperatures: dict | None = None,
                     f1: dict | None = None) -> Predictor:
    """The checkpoints answering as served (one model, or their ensemble with `rule`); `temperatures`
    {name: T} and `f1` {name: per-class validation F1} stand in for calibration files and reports
    not written yet."""
    members = {}
    for name, folder in ckpts.items():
        members[name] = m = Member(folder, device, tta)
        if temperatures:
            m.temperature, m.calibrated = temperatures[name], True
        if f1:
            m.f1 = f1[name]
    return Predictor(members, ENSEMBLE if len(members) > 1 else next(iter(members)), rule)


def sample_probabilities(predictor: Predictor, folder):
    """Each member's served (calibrated) probabilities over the real sample JPEGs and their labels:
    ({name: (n, classes)}, y); (None, labels) when the folder holds none."""
    images, y = load_samples(folder)
    if not len(y):
        return None, y
    answers = predictor.answer_batch(images)
    names = predictor.class_names
    probs = {m: np.array([[(a[m] if predictor.workflow else a)["probabilities"][c] for c in names] for a in answers])
             for m in predictor.members}
    return probs, y


def score_samples(ckpts, reports, folder, device, tta=False, rule=None) -> dict:
    """Accuracy of each model and of the ensemble (its default rule) on the real sample JPEGs,
    answered as served."""
    predictor = sample_predictor(ckpts, device, tta, rule, {n: r["temperature"] for n, r in reports.items()},
                                 {n: r.get("val_per_class_f1") for n, r in reports.items()})
    probs, y = sample_probabilities(predictor, folder)
    if probs is None:
        return None
    real = {name: float(np.mean(p.argmax(1) == y)) for name, p in probs.items()}
    if len(probs) >= 2:
        f1 = {m: member.f1 for m, member in predictor.members.items()}
        real["ensemble"] = float(np.mean(ensemble_probs(predictor.rule, probs, f1).argmax(1) == y))
        real["ensemble_rule"] = predictor.rule
    real["n"] = int(len(y))
    for name, r in reports.items():
        r["real_samples_accuracy"] = real[name]
    return real


def markdown(top) -> str:
    reports, ensemble = top["models"], top["ensemble"]
    any_r = next(iter(reports.values()))
    names = any_r["class_names"]
    lines = [f"# Evaluation of {top['run']}", "",
             f"Data `{any_r['data']['path']}` (sha256 `{any_r['data']['sha256'][:12]}`), "
             f"test split {any_r['n_test']} rows, validation {any_r['n_val']} rows; "
             f"test-time augmentation: {'8 flips/rotations' if top['tta'] else 'off'}.", "",
             "| | accuracy | macro precision | macro recall | macro F1 | ECE | ECE after T-scaling | T |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in reports.items():
        lines.append(f"| {n} | {r['accuracy']:.3f} | {r['macro']['precision']:.3f} | {r['macro']['recall']:.3f} "
                     f"| {r['macro']['f1']:.3f} | {r['ece']['uncalibrated']:.3f} | {r['ece']['calibrated']:.3f} "
                     f"| {r['temperature']:.2f} |")
    for rule, e in ensemble.items():
        lines.append(f"| ensemble `{rule}` | {e['accuracy']:.3f} | {e['macro']['precision']:.3f} "
                     f"| {e['macro']['recall']:.3f} | {e['macro']['f1']:.3f} | {e['ece']:.3f} | | |")
    settings = top.get("ensemble_settings")
    if settings:
        val = settings["validation"]
        lines += ["", f"Ensemble default rule: `{settings['default_rule']}`, the lowest NLL on the validation "
                      f"split ({settings['chosen_on']['n']} rows; RUN/ensemble.json).", "",
                  "| rule | validation NLL | validation accuracy | validation ECE | test NLL |", "|---|---|---|---|---|"]
        lines += [f"| `{r}` | {v['nll']:.3f} | {v['accuracy']:.3f} | {v['ece']:.3f} | {settings['test'][r]['nll']:.3f} |"
                  for r, v in val.items()]
    cols = {**{n: r["per_class"] for n, r in reports.items()}, **{k: e["per_class"] for k, e in ensemble.items()}}
    lines += ["", "## Per class on the test split (precision / recall / F1)", "",
              "| class | support | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for c in names:
        cells = [f"{v[c]['precision']:.2f} / {v[c]['recall']:.2f} / **{v[c]['f1']:.2f}**" for v in cols.values()]
        lines.append(f"| {c} | {any_r['per_class'][c]['support']} | " + " | ".join(cells) + " |")
    if top.get("real_samples_accuracy"):
        real = top["real_samples_accuracy"]
        shown = {k: v for k, v in real.items() if k not in ("n", "ensemble_rule")}
        lines += ["", f"## Real Galaxy10 DECaLS samples ({real['n']} images, never seen in training)", "",
                  "| " + " | ".join(shown) + " |", "|---" * len(shown) + "|",
                  "| " + " | ".join(f"{v:.2f}" for v in shown.values()) + " |"]
    single = (Path(top["run"]) / "meta.json").is_file()
    lines += ["", "## Figures", ""]
    for n, r in reports.items():
        prefix = "" if single else f"{n}/"
        lines.append(f"![{n} confusion]({prefix}confusion.png)")
        if r["figures"]["curves"]:
            lines.append(f"![{n} training curves]({prefix}curves.png)")
    if ensemble:
        lines.append("![ensemble confusion](confusion_ensemble.png)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        top = evaluate(args.run, args.data, args.tta, args.samples, args.batch_size, args.workers, args.device,
                       models)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in top["accuracy"].items():
        print(f"{k:>18s} test accuracy {v:.4f}")
    if top.get("real_samples_accuracy"):
        print("real samples:", {k: v if isinstance(v, str) else round(v, 3)
                                for k, v in top["real_samples_accuracy"].items()})
    print(f"report: {Path(args.run) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
