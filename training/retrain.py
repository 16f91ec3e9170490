"""From the labels given on the Review page to the next served version (`make retrain`).

    python -m training.retrain --labels runs/labels/labels.db --from checkpoints/demo [--version 1.1]
           [--mix data/Galaxy10_DECals.h5 [--mix-rows N]] [--models b0,b2] [--epochs 5] [--out DIR]
           [--store model_store] [--no-register] [--include-unsure]
    make retrain LABELS=runs/labels/labels.db FROM=checkpoints/demo [VERSION=1.1] [MIX=original.h5]

Stages, one progress line each; run it again with the same labels and finished stages are skipped:
1. export: every labelled galaxy's newest label (not "not a galaxy"; "unsure" ones only with
   --include-unsure) into OUT/labels.h5, the Galaxy10 schema (galaxy_morph.data.create_h5), each
   image resized to the original file's size (--mix) or 256 px. A galaxy's part of the split comes
   from a hash of its (source, key), so it keeps its part as labels are added: HELD_OUT of them are
   the held-out labels both versions are compared on, VAL choose the best epoch, the rest train,
   with --mix-rows random rows of --mix (the original training file) added to train.
2. fine-tune every model from FROM/M/model.pt (training.train --weights, LR_FACTOR x the spec's
   learning rate, cosine to 0 over --epochs).
3. calibrate and compare, on the held-out labels: the new version answers the galaxies the user
   labels, so its temperature is refitted there (minimum NLL; each answering mode FROM was
   calibrated in; answers then say "calibration": {"on": "your labels"}), with the ECE under FROM's
   copied temperature, after the refit and 5-fold cross-validated beside it. The out-of-distribution
   head stays FROM's, its threshold checked: when it flags more than OOD_MAX_FLAGGED of the held-out
   galaxies, it is moved to their 90th percentile, and the table says so. Fewer than MIN_REFIT
   held-out labels keep FROM's temperature and threshold (training/retrain_calibration.py). Then
   FROM's and the new models (accuracy, macro F1 over the classes present, NLL, ECE, the share
   flagged out of distribution) into OUT/retrain.md and .json and each OUT/M/report.json, which the
   new archive's model card carries ("held_out_labels").
4. archive: STORE/galaxy-M-vVERSION.mar (torchserve_ops.archive --versioned-name --no-workflow).
5. register: next to the served version on the running TorchServe, not as the default (skipped,
   with the command to run, when none is running; --no-register: always).

Nothing is promoted here. After looking at the comparison (the Model card page shows both versions):
`scripts/versions.sh promote 1.1` (or the Model card page's button) makes every retrained model's
1.1 the default and rebuilds the ensemble over it; `scripts/versions.sh rollback galaxy-b0` goes back.
VERSION defaults to FROM's version one minor step up (1.0 -> 1.1), OUT to runs/retrain/VERSION.
Exit codes: 0 done, 2 bad input (no usable labels, missing checkpoints, a mismatched OUT), 1 a stage failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from galaxy_morph.answers import DEFAULT_VERSION, served_name
from galaxy_morph.calibration import ece, nll
from galaxy_morph.data import DataError, create_h5, file_sha256, inspect_h5, save_split
from galaxy_morph.files import atomic_path, atomic_write_json, atomic_write_text, inputs_digest
from galaxy_morph.models import PretrainedUnavailable, load_checkpoint, read_meta
from galaxy_morph.predictor import Member, Predictor
from galaxy_morph.specs import ALL_SPECS, GALAXY10_CLASSES, get_spec
from labelling.store import LabelStore, StoreError
from torchserve_ops.client import TorchServeError
from training import train as tr
from training.evaluate import predict_split, scores
from training.retrain_calibration import CV_FOLDS, OOD_MAX_FLAGGED, calibrate_on_labels, held_out_rows
from training.pipeline import Progress, archives_are_current, build_archives, read_json

HELD_OUT, VAL = 0.25, 0.15  # of the labelled galaxies, by hash
MIN_LABELS = 10  # fewer and the held-out part is a handful of galaxies or none
LR_FACTOR = 0.1  # fine-tuning: a tenth of the spec's from-scratch learning rate
EPOCHS = 5
BATCH_SIZE = 16  # a few hundred labels at the spec's 64 a batch are a handful of steps an epoch
DEFAULT_SIZE = 256  # Galaxy10 DECaLS' cutouts
EXPORT, EXPORT_STAMP, REPORT = "labels.h5", "export.json", "retrain.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="the label store: an SQLite file or an SQLAlchemy URL")
    p.add_argument("--from", dest="source", required=True, help="run folder of the served checkpoints (RUN/M/model.pt)")
    p.add_argument("--version", default=None, help="the new version (default: FROM's one minor step up)")
    p.add_argument("--out", default=None, help="default: runs/retrain/VERSION")
    p.add_argument("--models", default=None, help="comma-separated (default: every model in FROM)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr-factor", type=float, default=LR_FACTOR, help="times the spec's learning rate")
    p.add_argument("--mix", default=None, help="the original training file (Galaxy10 HDF5), mixed into train")
    p.add_argument("--mix-rows", type=int, default=None,
                   help="rows of --mix added to train (default: 4 per training label, at most the file)")
    p.add_argument("--include-unsure", action="store_true", help="also train on labels marked unsure")
    p.add_argument("--store", default="model_store", help="where the archives go (the server's model store)")
    p.add_argument("--no-register", action="store_true", help="build the archives, register nothing")
    p.add_argument("--key-file", default=None, help="TorchServe's key file (default: as scripts/versions.sh)")
    p.add_argument("--management-url", default=None)
    p.add_argument("--device", default=None, help="training device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def next_version(version: str) -> str:
    """One minor step up: 1.0 -> 1.1, 2 -> 2.1, 1.9 -> 1.10."""
    parts = str(version).split(".")
    if len(parts) == 1 or not parts[-1].isdigit():
        return f"{version}.1"
    return ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])


def part_of(source: str, key: str, seed: int) -> str:
    """'test', 'val' or 'train' for a galaxy, from a hash of its identity (stable as labels grow)."""
    h = hashlib.sha256(f"{seed}\0{source}\0{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "test" if u < HELD_OUT else "val" if u < HELD_OUT + VAL else "train"


def usable_labels(store: LabelStore, include_unsure: bool) -> list[dict]:
    """The newest label of every galaxy that has a class (and is not a guess, unless asked for)."""
    return [lab for lab in store.latest_labels().values()
            if not lab["not_a_galaxy"] and (include_unsure or not lab["unsure"])]


def labels_digest(labels: list[dict], args) -> str:
    """The export's inputs: every label, the MIX file and the options that shape the split."""
    return inputs_digest([[lab["candidate_id"], lab["id"], lab["class_index"]]
                          for lab in sorted(labels, key=lambda r: r["candidate_id"])],
                         Path(args.mix) if args.mix else None, {"mix_rows": args.mix_rows, "seed": args.seed})


def candidate_image(cand: dict, size: int) -> np.ndarray:
    from galaxy_morph.imaging import decode_image, to_rgb8

    data = cand["image"] if cand["image"] is not None else Path(cand["path"]).read_bytes()
    img = to_rgb8(decode_image(bytes(data)))
    if img.size != (size, size):
        from PIL import Image

        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


def export(store: LabelStore, labels: list[dict], out: Path, args, digest: str) -> dict:
    """OUT/labels.h5 and OUT/split.json (see the module docstring); returns the stamp it writes."""
    import h5py

    mix_n, size = 0, DEFAULT_SIZE
    if args.mix:
        with h5py.File(args.mix, "r") as f:
            mix_total, size = len(f["ans"]), f["images"].shape[1]
    rows, parts, skipped = [], [], []
    for lab in sorted(labels, key=lambda r: r["candidate_id"]):
        cand = store.candidate(lab["candidate_id"])
        try:
            rows.append((candidate_image(cand, size), lab["class_index"]))
        except (OSError, ValueError) as e:  # an image that no longer decodes or a path that moved
            skipped.append(f"{cand['item_key']}: {e}")
            continue
        parts.append(part_of(cand["source"], cand["item_key"], args.seed))
    n_train = parts.count("train")
    if args.mix:
        mix_n = min(mix_total, args.mix_rows if args.mix_rows is not None else 4 * n_train)
    if parts.count("test") == 0 or n_train == 0:
        raise DataError(f"{len(parts)} usable labels make {n_train} training and {parts.count('test')} held-out "
                        "galaxies: label more galaxies on the Review page")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / EXPORT) as tmp, create_h5(tmp, np.r_[[y for _, y in rows], np.zeros(mix_n, int)], size,
                   class_names=GALAXY10_CLASSES, source="labelling.store", label_store=store.where) as f:
        for i, (img, _) in enumerate(rows):
            f["images"][i] = img
        if mix_n:
            with h5py.File(args.mix, "r") as src:
                picked = np.sort(np.random.default_rng(args.seed).choice(mix_total, mix_n, replace=False))
                for j, r in enumerate(picked):
                    f["images"][len(rows) + j] = src["images"][r]
                    f["ans"][len(rows) + j] = src["ans"][r]
    idx = {s: [i for i, p in enumerate(parts) if p == s] for s in ("train", "val", "test")}
    if not idx["val"]:  # the best epoch needs one at least, and never a held-out one
        idx["val"] = [idx["train"].pop()]
        if not idx["train"]:
            raise DataError(f"{len(parts)} usable labels leave no training galaxy: label more on the Review page")
    idx["train"] += list(range(len(rows), len(rows) + mix_n))
    sha = file_sha256(out / EXPORT)
    save_split(out / tr.SPLIT_FILE, {k: np.asarray(v, np.int64) for k, v in idx.items()},
               data_sha256=sha, n=len(rows) + mix_n, seed=args.seed, fractions=[1 - HELD_OUT - VAL, VAL, HELD_OUT],
               class_names=list(GALAXY10_CLASSES))
    stamp = {"digest": digest, "sha256": sha, "labels": store.where, "n_labels": len(rows), "mix": args.mix,
             "mix_rows": mix_n, "size": size, "skipped": skipped,
             "n": {k: len(v) for k, v in idx.items()}}
    atomic_write_json(out / EXPORT_STAMP, stamp)
    return stamp


def fine_tune(args, m: str, out: Path, state: str) -> dict:
    parent = read_meta(Path(args.source) / m)
    spec = get_spec(m)
    argv = ["--model", m, "--data", str(out / EXPORT), "--out", str(out / m), "--split", str(out / tr.SPLIT_FILE),
            "--weights", str(Path(args.source) / m / "model.pt"), "--epochs", str(args.epochs),
            "--t-max", str(args.epochs), "--lr", str(spec.lr * args.lr_factor), "--batch-size", str(args.batch_size),
            "--version", args.version,
            "--seed", str(args.seed), "--workers", "0"]
    if parent["spec"]["resize"] != spec.resize:  # FROM trained at another input size: keep it
        argv += ["--input-size", str(parent["spec"]["resize"])]
    if args.device:
        argv += ["--device", args.device]
    if state == "resume":
        argv.append("--resume")
    return tr.train(tr.parse_args(argv))  # (FROM's temperature and OOD head: stage 3 copies and refits them)


def training_state(folder: Path, sha: str, args) -> str:
    """'done', 'resume' or 'new'; DataError when the folder was fine-tuned with other settings."""
    meta, history = read_json(folder / "meta.json"), read_json(folder / "history.json") or []
    epochs = args.epochs
    if meta is not None:
        hp = meta.get("hparams") or {}
        wanted = {"epochs": epochs, "lr": get_spec(folder.name).lr * args.lr_factor, "batch_size": args.batch_size,
                  "weights": str(Path(args.source) / folder.name / "model.pt")}
        if {k: hp.get(k) for k in wanted} != wanted:
            raise DataError(f"{folder} was fine-tuned with {({k: hp.get(k) for k in wanted})}, not {wanted}: "
                            "choose another --version or --out")
    if meta is not None and meta["data"]["sha256"] == sha and len(history) >= epochs:
        return "done"
    last = folder / tr.LAST_FILE
    if last.is_file() and meta is not None and meta["data"]["sha256"] == sha:
        return "resume"
    return "new"


def held_out_scores(folder: Path, data: Path, indices) -> dict:
    """A checkpoint's answers on the held-out rows, as its archive answers them (galaxy_morph's
    answer path: calibrated, with the out-of-distribution verdict)."""
    from sklearn.metrics import f1_score

    member = Member(folder, "cpu")
    pixels, y = held_out_rows(data, indices)
    answers = Predictor({member.spec.name: member}, member.spec.name).answer_batch(list(pixels))
    p = np.array([[a["probabilities"][c] for c in member.class_names] for a in answers])
    pred = p.argmax(1)
    s = scores(y, pred, list(GALAXY10_CLASSES))
    present = sorted(set(y.tolist()))
    row = {"version": member.version, "n": int(len(y)), "accuracy": s["accuracy"],
           "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
           "nll": nll(p, y), "ece": float(ece(p, y)), "per_class": s["per_class"],
           "confusion_matrix": s["confusion_matrix"], "temperature": member.temperature}
    if member.ood is not None:
        row["ood_flagged"] = float(np.mean([not a["in_distribution"] for a in answers]))
    return row


def compare(args, models: list[str], out: Path, stamp: dict) -> dict:
    split = json.loads((out / tr.SPLIT_FILE).read_text())
    test, val = split["test"], split["val"]
    data = out / EXPORT
    result = {"labels": stamp["labels"], "from": str(args.source), "version": args.version, "export": stamp,
              "models": {}}
    for m in models:
        old = held_out_scores(Path(args.source) / m, data, test)
        calibration = calibrate_on_labels(Path(args.source) / m, out / m, data, test, stamp["labels"])
        new = held_out_scores(out / m, data, test)
        result["models"][m] = {"previous": old, "this": new, "calibration": calibration}
        ckpt = load_checkpoint(out / m)
        vlogp, vy = predict_split(ckpt.model, ckpt.spec, str(data), val, torch.device("cpu"), False, 32, 0)
        v = scores(vy, vlogp.argmax(1), list(GALAXY10_CLASSES))
        meta = read_meta(out / m)
        report = {"model": m, "version": args.version, "checkpoint": str(out / m),
                  "data": {"path": str(data), "sha256": stamp["sha256"]}, "tta": False,
                  "class_names": list(GALAXY10_CLASSES), "n": new["n"], "n_test": new["n"], "n_val": len(vy),
                  "split": "held-out human labels",
                  **{k: new[k] for k in ("accuracy", "per_class", "confusion_matrix")},
                  "macro": {"f1": new["macro_f1"]},
                  "val_accuracy": v["accuracy"],
                  "val_per_class_f1": [v["per_class"][c]["f1"] for c in GALAXY10_CLASSES],
                  "epoch": meta.get("epoch"), "hparams": meta.get("hparams"),
                  "held_out_labels": {"labels": stamp["labels"], "n": new["n"], "from": str(args.source),
                                      "n_labels": stamp["n_labels"], "mix_rows": stamp["mix_rows"],
                                      "this": {k: v for k, v in new.items() if k not in ("per_class", "confusion_matrix")},
                                      "previous": {k: v for k, v in old.items()
                                                   if k not in ("per_class", "confusion_matrix")},
                                      "calibration": result["models"][m]["calibration"]}}
        atomic_write_json(out / m / "report.json", report)
    atomic_write_json(out / REPORT, result)
    atomic_write_text(out / "retrain.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    e = result["export"]
    lines = [f"# Version {result['version']} against {result['from']} on held-out labels", "",
             f"Labels: {result['labels']}: {e['n_labels']} galaxies, {e['n']['train']} training rows "
             f"({e['mix_rows']} of them from {e['mix']})," if e["mix"] else
             f"Labels: {result['labels']}: {e['n_labels']} galaxies, {e['n']['train']} training rows,",
             f"{e['n']['val']} validation, {e['n']['test']} held out.",
             "", "| model | version | accuracy | macro F1 | NLL | ECE | flagged OOD |", "|---|---|---|---|---|---|---|"]
    for m, r in result["models"].items():
        for row in (r["previous"], r["this"]):
            ood = f"{row['ood_flagged']:.1%}" if "ood_flagged" in row else "n/a"
            lines.append(f"| {m} | {row['version']} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} "
                         f"| {row['nll']:.3f} | {row['ece']:.3f} | {ood} |")
    lines += ["", f"n = {e['n']['test']} held-out galaxies: one galaxy is {1 / max(1, e['n']['test']):.1%} of the "
              "accuracy. Promote with `scripts/versions.sh promote " + result["version"] + "`.", "",
              f"## Calibration of {result['version']} on your held-out labels", "",
              f"The temperature refitted on the held-out labels (it answers with it), against {result['from']}'s "
              f"copied one; CV: {CV_FOLDS}-fold, fitted on the other folds, measured on the held-out one.", "",
              "| model | mode | T: copied → refitted | ECE: copied → refitted (CV) | NLL: copied → refitted "
              "| mean confidence: copied → refitted | accuracy |", "|---|---|---|---|---|---|---|"]
    ood_lines = []
    for m, r in result["models"].items():
        cal = r.get("calibration") or {}
        if "kept" in cal:
            lines.append(f"| {m} | | {cal['kept']} | | | | |")
            continue
        for mode in ("plain", "tta"):
            if mode in cal:
                c, a, v = cal[mode]["copied"], cal[mode]["refitted"], cal[mode]["cv"]
                lines.append(f"| {m} | {mode} | {c['temperature']:.2f} → {cal[mode]['temperature']:.2f} "
                             f"| {c['ece']:.3f} → {a['ece']:.3f} ({v['ece']:.3f}) | {c['nll']:.3f} → {a['nll']:.3f} "
                             f"| {c['mean_confidence']:.2f} → {a['mean_confidence']:.2f} | {cal[mode]['accuracy']:.3f} |")
        o = cal.get("ood")
        if o:
            ood_lines.append(f"- {m}: the copied threshold {o['threshold_copied']:.2f} flags {o['flagged_copied']:.0%} of "
                             f"the {o['n']} held-out galaxies; " + (
                                 f"more than {OOD_MAX_FLAGGED:.0%}, so it was refitted to {o['threshold']:.2f} "
                                 f"(flags {o['flagged']:.0%})." if o["refitted"] else "kept."))
    if ood_lines:
        lines += ["", "Out-of-distribution threshold, checked on the same galaxies:", "", *ood_lines]
    return "\n".join(lines) + "\n"


def register(args, models: list[str], archives: list[str], out: Path) -> str:
    """Register each archive beside the served versions, never as a default. A version registered
    from an older build of its archive (OUT/registered.json) is registered again, unless it is the
    default; a model the server does not serve is left for the user to register."""
    from torchserve_ops.client import ServerUnavailable, locate_key_file, server_settings
    from torchserve_ops.versions import Management, VersionError

    key_file = args.key_file or str(locate_key_file())
    url = args.management_url or server_settings()["management_url"]
    later = "; ".join(f"scripts/versions.sh register {a}" for a in archives)
    try:
        mgmt = Management(url, key_file)
        served = {x["modelName"] for x in mgmt.client.list_models()}
    except (VersionError, ServerUnavailable) as e:
        return f"no TorchServe to register with ({e}); later: {later}"
    seen = read_json(out / "registered.json") or {}
    done = []
    for m, a in zip(models, archives):
        name, built = served_name(m), (Path(args.store) / a).stat().st_mtime_ns
        if name not in served:
            done.append(f"{name} is not served: scripts/versions.sh register {a} makes {args.version} its default")
            continue
        if args.version in {v["version"] for v in mgmt.versions(name)}:
            if seen.get(name) == built:
                done.append(f"{name} {args.version} registered already")
                continue
            if mgmt.client.default_version(name) == args.version:
                done.append(f"{name} {args.version} is the default, from an older build of {a}: make another version "
                            f"the default, scripts/versions.sh unregister {name} {args.version}, then run this again")
                continue
            mgmt.unregister(name, args.version)
        mgmt.register(a)
        seen[name] = built
        (out / "registered.json").write_text(json.dumps(seen, indent=1))
        done.append(f"{name} {args.version} registered (default stays {mgmt.client.default_version(name)})")
    return "; ".join(done)


def retrain(args) -> dict:
    source = Path(args.source)
    found = [m for m in ALL_SPECS if (source / m / "model.pt").is_file()]
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else found
    missing = [m for m in models if m not in found]
    if not models or missing:
        raise DataError(f"{source}: no checkpoint for {', '.join(missing) or 'any model'} (RUN/M/model.pt)")
    args.version = args.version or next_version(read_meta(source / models[0]).get("version", DEFAULT_VERSION))
    out = Path(args.out or f"runs/retrain/{args.version}")
    if args.epochs < 1 or args.batch_size < 1 or not args.lr_factor > 0 or (args.mix_rows or 0) < 0:
        raise DataError("--epochs and --batch-size must be 1 or more, --lr-factor above 0, --mix-rows 0 or more")
    if args.mix:
        info = inspect_h5(args.mix)  # DataError unless a Galaxy10-schema file
        if info["class_names"] != list(GALAXY10_CLASSES):
            raise DataError(f"--mix {args.mix}: its classes are not Galaxy10 DECaLS' in their order")
    store_dir = Path(args.store)
    ours = set((read_json(out / "archives.json") or {}).get("files", {}))
    taken = [f"{served_name(m)}-v{args.version}.mar" for m in models
             if (store_dir / f"{served_name(m)}-v{args.version}.mar").is_file()
             and f"{served_name(m)}-v{args.version}.mar" not in ours]
    if taken:  # another run's version VERSION, perhaps served: never overwritten
        raise DataError(f"{', '.join(taken)} in {store_dir} were built by another run: choose another --version")
    progress = Progress(5)

    # 1. Export (or skip: the same labels and options as the export there).
    with LabelStore(args.labels) as store:
        labels = usable_labels(store, args.include_unsure)
        if len(labels) < MIN_LABELS:
            raise DataError(f"{store.where} has {len(labels)} usable labels (a class, not unsure"
                            f"{'' if args.include_unsure else ', or pass --include-unsure'}): "
                            f"label at least {MIN_LABELS} galaxies on the Review page")
        digest = labels_digest(labels, args)
        stamp = read_json(out / EXPORT_STAMP)
        if stamp and stamp["digest"] == digest and (out / EXPORT).is_file() \
                and file_sha256(out / EXPORT) == stamp["sha256"]:
            progress.line("export", f"{out / EXPORT} holds these {stamp['n_labels']} labels already: skipped")
        else:
            if stamp and stamp["digest"] != digest:  # other labels: the models there are not these labels' models
                raise DataError(f"{out} was made from other labels ({stamp['n_labels']} then): choose another "
                                f"--version or --out, or remove {out}")
            stamp = export(store, labels, out, args, digest)
            progress.line("export", f"{stamp['n_labels']} labels -> {out / EXPORT}: {stamp['n']['train']} train, "
                          f"{stamp['n']['val']} val, {stamp['n']['test']} held out"
                          + (f"; {len(stamp['skipped'])} images unreadable" if stamp["skipped"] else ""))

    # 2. Fine-tune every model from FROM.
    said = []
    for m in models:
        state, t0 = training_state(out / m, stamp["sha256"], args), time.time()
        if state == "done":
            said.append(f"{m} done already: skipped")
        else:
            r = fine_tune(args, m, out, state)
            said.append(f"{m} {args.epochs} epochs in {time.time() - t0:.0f}s, best val acc {r['best_val_acc']:.3f} "
                        f"at epoch {r['best_epoch']}")
    progress.line("fine-tune", "; ".join(said))

    # 3. Compare on the held-out labels (or skip: a comparison newer than every checkpoint).
    report = read_json(out / REPORT)
    newest = max((out / m / "model.pt").stat().st_mtime for m in models)
    if report and sorted(report["models"]) == sorted(models) and (out / REPORT).stat().st_mtime >= newest \
            and report["export"]["digest"] == digest and report["from"] == str(args.source):
        progress.line("compare", f"{out / 'retrain.md'} is newer than every checkpoint: skipped")
    else:
        report = compare(args, models, out, stamp)
        progress.line("compare", f"{out / 'retrain.md'}")

    # 4. Archives with versioned names, next to the served ones.
    if archives_are_current(out, store_dir, models, args.version, True):
        archives = list(read_json(out / "archives.json")["files"])
        progress.line("archive", f"{', '.join(archives)} in {store_dir} are this run's: skipped")
    else:
        archives = build_archives(out, store_dir, models, args.version, versioned_name=True, workflow=False)
        progress.line("archive", f"{', '.join(archives)} in {store_dir}")
    archives = [f"{served_name(m)}-v{args.version}.mar" for m in models]

    # 5. Register, not as the default.
    progress.line("register", "skipped (--no-register)" if args.no_register
                  else register(args, models, archives, out))
    print()
    print((out / "retrain.md").read_text())
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        retrain(args)
    except (DataError, StoreError, FileNotFoundError, ValueError, PretrainedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, TorchServeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
