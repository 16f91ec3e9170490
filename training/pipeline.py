"""From a Galaxy10-schema file to evaluated, archived models in one command (`make models`).

    python -m training.pipeline --data data/Galaxy10_DECals.h5 [--run runs/NAME] [--epochs N]
           [--pretrained 1|0] [--recipe seed|strong|augmented] [--models b0,b2] [--version V] [--store model_store]
           [--versioned-name] [--no-archive]
    make models DATA=data/Galaxy10_DECals.h5 [RUN=runs/NAME] [EPOCHS=n] [PRETRAINED=1|0] [RECIPE=seed|strong|augmented] [MODELS=b0,b2]

Stages, one progress line each: check the data (and fetch the ImageNet weights into the libraries'
caches when --pretrained 1, the default: without network it stops here, before any training), train
every model into RUN/M (training.train; all models share the first one's split), evaluate the run
with dihedral TTA (training.evaluate: RUN/report.md, RUN/report.json), build the archives
(`python -m torchserve_ops.archive --run RUN --store STORE --models M1,M2... [--version V]`: one .mar per
model and the ensemble workflow over all of them when there are two or more), then print the
results table.

Run it again and finished stages are skipped: a model whose history has all its epochs, a report
made from these checkpoints (RUN/.evaluated), archives made from these checkpoints, reports and
code and still in the store as this run built them (RUN/archives.json); "made from" is a digest of
the inputs (galaxy_morph.files.inputs_digest). A training
that was interrupted resumes from RUN/M/last.pt. A checkpoint trained with another recipe, another
--pretrained or another data file is refused: choose another RUN.
Exit codes: 0 done, 2 bad input (data, models, weights unavailable, mismatched run), 1 a stage failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from galaxy_morph.data import DataError, file_sha256, inspect_h5
from galaxy_morph.files import atomic_write_json, inputs_digest, is_current, mark_current
from galaxy_morph.models import PretrainedUnavailable, imagenet_state_dict, pretrained_source
from galaxy_morph.specs import ALL_SPECS, SPECS, get_spec
from training import evaluate as ev
from training import train as tr
from training.recipes import RECIPES, get_recipe

ARCHIVE_STAMP = "archives.json"
EVALUATION_STAMP = ".evaluated"
DEFAULT_STORE = "model_store"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Galaxy10-schema HDF5 file")
    p.add_argument("--run", default=None, help="run folder (default: runs/<data file stem>-<recipe>)")
    p.add_argument("--models", default=",".join(SPECS), help=f"comma-separated, from {', '.join(ALL_SPECS)}")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (seed: 30, strong and augmented: 60)")
    p.add_argument("--pretrained", type=int, choices=(0, 1), default=1,
                   help="1 (default, as the seed): start from ImageNet weights; 0: random initialisation")
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES))
    p.add_argument("--version", default=None, help="model and archive version (default: training's, 1.0)")
    p.add_argument("--store", default=DEFAULT_STORE, help="where the archives go")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as training)")
    p.add_argument("--gpu-augment", action="store_true", help="augment on the training device (training.train)")
    p.add_argument("--input-size", type=int, default=None,
                   help="train and answer at this many pixels instead of the spec's (training.train --input-size)")
    p.add_argument("--versioned-name", action="store_true",
                   help="archives named galaxy-M-vVERSION.mar, to register next to the served version")
    p.add_argument("--no-archive", action="store_true", help="stop after the evaluation")
    return p.parse_args(argv)


class Progress:
    """One line per stage: [i/n] stage: what happened."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def line(self, stage: str, text: str):
        self.done += 1
        print(f"[{self.done}/{self.total}] {stage}: {text}", flush=True)


def target_epochs(args, model: str) -> int:
    return args.epochs or round(get_spec(model).t_max * get_recipe(args.recipe).epochs_per_t_max)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def training_state(folder: Path, args, sha: str, epochs: int) -> str:
    """'done', 'resume' or 'new' for RUN/M; raises DataError when RUN/M belongs to another setup."""
    meta, history = read_json(folder / "meta.json"), read_json(folder / "history.json") or []
    last = folder / tr.LAST_FILE
    if meta is None and not last.is_file():
        return "new"
    if meta is not None:
        hp = meta.get("hparams") or {}
        wanted = {"recipe": args.recipe, "pretrained": bool(args.pretrained), "input_size": args.input_size}
        found = {"recipe": hp.get("recipe", "seed"), "pretrained": bool(hp.get("pretrained", False)),
                 "input_size": hp.get("input_size")}
        if found != wanted or meta["data"]["sha256"] != sha:
            what = "another data file" if meta["data"]["sha256"] != sha else \
                f"recipe {found['recipe']}, pretrained {int(found['pretrained'])}, input size {found['input_size']}"
            raise DataError(f"{folder} was trained with {what}, not recipe {args.recipe}, pretrained "
                            f"{args.pretrained}, input size {args.input_size} on this data: choose another RUN "
                            f"(or remove {folder})")
    if meta is not None and len(history) >= epochs:
        return "done"
    return "resume" if last.is_file() else "new"


def train_model(args, run: Path, model: str, split: Path | None, state: str):
    argv = ["--model", model, "--data", args.data, "--out", str(run / model), "--recipe", args.recipe]
    argv += ["--epochs", str(target_epochs(args, model))]
    if args.pretrained:
        argv.append("--pretrained")
    if args.version:
        argv += ["--version", args.version]
    if args.device:
        argv += ["--device", args.device]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.gpu_augment:
        argv.append("--gpu-augment")
    if args.input_size:
        argv += ["--input-size", str(args.input_size)]
    if split is not None:
        argv += ["--split", str(split)]
    if state == "resume":
        argv.append("--resume")
    return tr.train(tr.parse_args(argv))


def evaluation_inputs(run: Path, models: list[str]) -> str:
    return inputs_digest(*(run / m / f for m in models for f in ("model.pt", "meta.json", "split.json")),
                         {"models": models, "tta": True})


def evaluation_is_current(run: Path, models: list[str]) -> bool:
    return (run / "report.json").is_file() and is_current(run / EVALUATION_STAMP, evaluation_inputs(run, models))


def archive_inputs(run: Path, store: Path, models: list[str], version, versioned_name=False) -> str:
    from torchserve_ops.archive import built_from

    return inputs_digest(built_from(run, models), {"store": str(store.resolve()), "version": version,
                                                   "versioned_name": bool(versioned_name)})


def archives_are_current(run: Path, store: Path, models: list[str], version, versioned_name=False) -> bool:
    """The store holds the archives this run built (same size and time) from today's inputs."""
    stamp = read_json(run / ARCHIVE_STAMP)
    if not stamp or stamp.get("inputs") != archive_inputs(run, store, models, version, versioned_name):
        return False
    for name, seen in stamp["files"].items():
        path = store / name
        if not path.is_file() or path.stat().st_size != seen["size"] or path.stat().st_mtime_ns != seen["mtime_ns"]:
            return False
    return True


def build_archives(run: Path, store: Path, models: list[str], version, versioned_name=False,
                   workflow=True) -> list[str]:
    """torchserve_ops.archive's CLI; returns the archive file names it wrote (also into RUN/archives.json).
    workflow=False: the model archives only (a new version beside the served workflow's)."""
    cmd = [sys.executable, "-m", "torchserve_ops.archive", "--run", str(run), "--store", str(store)]
    if version:
        cmd += ["--version", version]
    if versioned_name:
        cmd.append("--versioned-name")
    cmd += ["--models", ",".join(models)]
    if len(models) < 2 or not workflow:
        cmd.append("--no-workflow")  # an ensemble needs two or more models
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("*") if p.is_file()} if store.is_dir() else {}
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{(r.stderr or r.stdout)[-2000:]}")
    written = sorted(p.name for p in store.glob("*") if p.is_file() and p.suffix in (".mar", ".war")
                     and before.get(p.name) != p.stat().st_mtime_ns)
    stamp = {"inputs": archive_inputs(run, store, models, version, versioned_name), "command": cmd[1:],
             "files": {n: {"size": (store / n).stat().st_size, "mtime_ns": (store / n).stat().st_mtime_ns}
                       for n in written}}
    atomic_write_json(run / ARCHIVE_STAMP, stamp)
    return written


def results_table(report: dict) -> str:
    lines = ["| model | epochs | best val acc | test acc (TTA) | macro F1 |", "|---|---|---|---|---|"]
    for name, r in report["models"].items():
        lines.append(f"| {name} | {r.get('epoch')}/{(r.get('hparams') or {}).get('epochs')} "
                     f"| {r['val_accuracy']:.3f} | {r['accuracy']:.3f} | {r['macro']['f1']:.3f} |")
    for rule, e in report.get("ensemble", {}).items():
        lines.append(f"| ensemble `{rule}` ({'+'.join(e.get('models', []))}) | | | {e['accuracy']:.3f} "
                     f"| {e['macro']['f1']:.3f} |")
    return "\n".join(lines)


def run_pipeline(args) -> dict:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ALL_SPECS]
    if unknown or not models or len(set(models)) != len(models):
        raise DataError(f"--models {args.models!r}: give distinct names from {', '.join(ALL_SPECS)}")
    run = Path(args.run or f"runs/{Path(args.data).stem}-{args.recipe}")
    store = Path(args.store)
    archive = not args.no_archive
    progress = Progress(1 + len(models) + 1 + archive)

    # 1. Check everything a later stage would trip over, before training anything.
    info = inspect_h5(args.data)
    sha = file_sha256(args.data)
    states = {m: training_state(run / m, args, sha, target_epochs(args, m)) for m in models}
    fetched = []
    if args.pretrained:
        for m in models:
            if states[m] == "new":
                imagenet_state_dict(m)  # into the library's cache, or PretrainedUnavailable
                fetched.append(pretrained_source(m)["weights"])
    progress.line("check", f"{args.data}: {info['n']} images, {len(info['class_names'])} classes; run {run}; "
                  f"recipe {args.recipe}; " + (f"ImageNet weights ready ({', '.join(fetched)})" if fetched
                                               else "ImageNet weights" if args.pretrained else "random init"))

    # 2. Train (or skip, or resume) every model; they share the first model's split.
    split = None
    for m in models:
        epochs = target_epochs(args, m)
        t0 = time.time()
        if states[m] == "done":
            meta = read_json(run / m / "meta.json")
            progress.line(f"train {m}", f"done already ({epochs} epochs, best val acc "
                          f"{meta['metrics']['val_acc']:.3f} at epoch {meta['epoch']}): skipped")
        else:
            verb = "resumed" if states[m] == "resume" else "trained"
            result = train_model(args, run, m, split, states[m])
            progress.line(f"train {m}", f"{verb} {epochs} epochs in {time.time() - t0:.0f}s, best val acc "
                          f"{result['best_val_acc']:.3f} at epoch {result['best_epoch']}")
        split = split or run / m / tr.SPLIT_FILE

    # 3. Evaluate the run (dihedral TTA) unless the report is newer than every checkpoint.
    t0 = time.time()
    if evaluation_is_current(run, models):
        report = read_json(run / "report.json")
        progress.line("evaluate", f"{run / 'report.md'} was made from these checkpoints: skipped")
    else:
        report = ev.evaluate(run, tta=True, device=args.device, models=models)
        mark_current(run / EVALUATION_STAMP, evaluation_inputs(run, models))
        progress.line("evaluate", f"{run / 'report.md'} with TTA in {time.time() - t0:.0f}s")

    # 4. Archives for TorchServe.
    if archive:
        t0 = time.time()
        if archives_are_current(run, store, models, args.version, args.versioned_name):
            stamp = read_json(run / ARCHIVE_STAMP)
            progress.line("archive", f"{', '.join(stamp['files'])} in {store} are this run's: skipped")
        else:
            written = build_archives(run, store, models, args.version, args.versioned_name)
            progress.line("archive", f"{', '.join(written)} in {store} ({time.time() - t0:.0f}s)")

    print()
    print(results_table(report))
    print(f"\nreport: {run / 'report.md'}" + (f"; serve with: make serve RUN={run}" if archive else ""))
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_pipeline(args)
    except (DataError, FileNotFoundError, ValueError, PretrainedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
