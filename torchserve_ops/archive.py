"""Build the TorchServe archives from checkpoint folders.

    python -m torchserve_ops.archive --run checkpoints/demo --store model_store [--version V]
                               [--models b0,b2,convnext] [--no-workflow] [--versioned-name]
                               [--device cpu|cuda] [--tta]

For each model M in --models (default: every spec with a checkpoint in RUN, RUN/M/model.pt), RUN/M
must hold a checkpoint (model.pt + meta.json from galaxy_morph.models.save_checkpoint);
RUN/M/report.json and RUN/report.json (evaluation) are used when present. Writes STORE/galaxy-M.mar
(STORE/galaxy-M-vV.mar with --versioned-name, for registering a new version next to the served
one) containing the handler, the core and worker packages, the checkpoint (whose meta.json names the classes),
model_card.json and model-config.yaml, and then STORE/galaxy-ensemble.war over those .mar files
(two or more): pre -> (b0, b2, ...) -> ensemble, B0 first, the members, their per-class
validation F1 and the run's measured default rule (RUN/ensemble.json, from training.evaluate) in
its ensemble.json. The version is --version, else the checkpoint's meta "version", else 1.0. The
store is stamped with a digest of everything it was built from (galaxy_morph.files.inputs_digest):
`make serve` rebuilds it when a checkpoint file, a report, the options or the shipped code change. --device picks the serving settings of DEVICE_CONFIG; --tta makes every model
answer with the mean over the 8 flips/quarter turns (8x the compute per image). --runtime onnx
(the CPU default) ships RUN/M/model.onnx, exported and checked against torch on the real samples
the first time (training.export_onnx; the build refuses a model whose export answers otherwise).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import galaxy_morph
import handlers
from galaxy_morph.answers import DEFAULT_VERSION, WORKFLOW_NAME, WORKFLOW_SETTINGS, served_name
from galaxy_morph.calibration import CALIBRATION_FILE, read_calibration
from galaxy_morph.data import SYNTHETIC_SOURCE, file_sha256
from galaxy_morph.ood import CONSTANT_STD, OOD_FILE, SOURCE_SIGMA, OODDetector
from galaxy_morph.files import inputs_digest
from galaxy_morph.run_files import (META_FILE, ONNX_FILE, ONNX_RECORD, RUNTIMES, WEIGHTS_FILE, onnx_is_current, read_meta,
                                    read_settings, run_members, val_per_class_f1)
from galaxy_morph.specs import ALL_SPECS, PAIR
from survey.samples import SAMPLES_DIR

HANDLERS = Path(handlers.__file__).resolve().parent  # what runs inside a worker
SHIPPED = (galaxy_morph, handlers)  # the packages every archive carries

# Serving defaults per model (model-config.yaml); a batch waits at most 3 ms for more requests: a
# lone request (the dashboard's) waits that long for nothing. With two workers at c=8 batches fill
# without waiting; 10 ms cost b0 at c=1 8-10 ms of latency (p50 21-26 -> 15-16 ms) for no measurable
# gain at c=8 or 64 (A/B runs of `python -m bench.serving`'s load, side by side).
MODEL_CONFIG = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 3,
                "responseTimeout": 120, "startupTimeout": 120}
# Per serving device, over MODEL_CONFIG; the handler reads the `handler:` part.
# On a CPU the forward runs on ONNX Runtime: the same answers (checked per archive, below), about
# twice PyTorch eager's images/s, and the worker never imports torch. Two workers per model, each
# with a batch of up to 4 and cores / workers forward threads (the handler's default): while one
# decodes its batch in Python, the other's forward has the cores. One worker with batches of 8 and
# all the cores left a core idle during every decode (make bench --tune, b0 at c=8: 161 -> 210 img/s,
# 0.57x -> 0.74x of raw from bytes; b2 0.89x -> 0.99x, the ensemble 0.74x -> 0.92x).
# On a GPU the forward costs little next to decoding and the Python around it: one worker, larger
# batches, bf16 autocast and JPEGs decoded by nvJPEG on the GPU (torchvision.io.decode_jpeg(
# device="cuda")). ONNX Runtime's CUDA provider is not installed: a GPU archive runs torch.
DEVICE_CONFIG = {
    "cpu": {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4,
            "handler": {"precision": "fp32", "decode": "pil", "runtime": "onnx"}},
    "cuda": {"deviceType": "gpu", "batchSize": 32, "maxBatchDelay": 5,
             "handler": {"precision": "bf16", "decode": "device", "runtime": "torch"}},
}
# Grad-CAM layer per model: B0's last stage is 4x4 at 128 px, features.5 is 8x8.
CAM_LAYERS = {"b0": "features.5"}
# A workflow node call that gets no answer within timeout-ms is sent again, retry-attempts times
# (the frontend's executor: torchserve_ops/frontend/DagExecutor.java).
WORKFLOW_MODELS = {"min-workers": 1, "max-workers": 1, "batch-size": 8, "max-batch-delay": 10,
                   "retry-attempts": 3, "timeout-ms": 5000}
WORKFLOW_KEYS = {"minWorkers": "min-workers", "maxWorkers": "max-workers", "batchSize": "batch-size",
                 "maxBatchDelay": "max-batch-delay"}  # model-config.yaml's names -> the workflow spec's
WORKFLOW_MODEL_NODE = {"timeout-ms": 30000}  # b0/b2 nodes: inference may take seconds under load


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _private_tmp(tmp: Path) -> dict:
    """The archivers stage files in $TMPDIR/<name>: give each build its own, so that two builds
    of the same model (tests running side by side) do not delete each other's files."""
    return {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def trained_on_synthetic(data: dict) -> bool | None:
    """Whether the training HDF5 was written by simulation.synthetic (its "source" attribute);
    None when the file is not here to look at."""
    if data.get("source"):
        return data["source"] == SYNTHETIC_SOURCE
    path = Path(str(data.get("path") or ""))
    if not path.is_file():
        return None
    import h5py

    with h5py.File(path, "r") as f:
        return f.attrs.get("source") == SYNTHETIC_SOURCE


def model_card(name: str, version: str, ckpt: Path, meta: dict, run: Path, serving: dict | None = None) -> dict:
    """What a user should know about the served model, from its meta and evaluation reports;
    `serving`: the handler settings, whose real-sample figures (with TTA or not) it shows."""
    report = _read_json(ckpt / "report.json")
    run_report = _read_json(run / "report.json")
    card = {
        "model": name, "version": version, "spec": meta.get("spec"),
        "class_names": meta.get("class_names"), "trained_at": meta.get("saved_at"),
        "archived_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "training_data": meta.get("data"), "split_file": meta.get("split_file"),
        "hparams": meta.get("hparams"), "epoch": meta.get("epoch"),
        "metrics": meta.get("metrics"),
        "weights_sha256": file_sha256(ckpt / WEIGHTS_FILE),
        "val_per_class_f1": val_per_class_f1(ckpt, meta),
    }
    card["synthetic_training_data"] = trained_on_synthetic(meta.get("data") or {})
    card["evaluated"] = bool(report)  # (TorchServe drops null fields from describe output)
    if report:
        card["test"] = {k: report[k] for k in ("accuracy", "macro_f1", "per_class",
                                               "confusion_matrix", "split", "n") if k in report}
        card["test"]["per_class_f1"] = {c: v.get("f1") for c, v in
                                        (report.get("per_class") or {}).items()}
        if "macro" in report:  # the evaluation report nests it: {"macro": {"precision", "recall", "f1"}}
            card["test"]["macro_f1"] = report["macro"]["f1"]
        if report.get("held_out_labels"):  # training.retrain: this version and its parent on the same labels
            card["held_out_labels"] = report["held_out_labels"]
    else:
        card["test"] = None
        card["note"] = "no evaluation report (RUN/M/report.json) when this archive was built"
    serving = {k: v for k, v in (serving or {}).items() if k != "spec"}
    card["serving"] = serving
    # Temperature scaling for the way this archive answers (plain or TTA): the handler applies it.
    fits = read_calibration(ckpt)
    calibration = fits.get("tta" if serving.get("tta") else "plain")  # the training data's validation split
    served = (fits.get("served") or {}).get("tta" if serving.get("tta") else "plain")  # real galaxies, your labels
    card["calibrated"] = calibration is not None or served is not None
    if calibration is not None:
        card["calibration"] = calibration
    if served is not None:
        card["calibration_served"] = served
    detector = OODDetector.load(ckpt)
    card["ood"] = {"cheap_checks": {"constant_std": CONSTANT_STD, "source_sigma": SOURCE_SIGMA},
                   "method": None if detector is None else "reject head on the penultimate features",
                   **({} if detector is None else {"threshold": detector.threshold,
                                                   "validation_quantile": detector.quantile})}
    # The 100 real samples, measured the way this archive answers: with TTA, training.demo's
    # "real_samples_tta" table; else a report's own figures, if that report was evaluated likewise.
    tta = bool(serving.get("tta"))
    tta_table = ((run_report or {}).get("real_samples_tta") or {}).get("accuracy") if tta else None
    if tta_table:
        real = tta_table.get((meta.get("spec") or {}).get("name"))
        run_real = {k: v for k, v in tta_table.items() if not k.startswith("ensemble_")}
    else:
        real, run_real = (r.get("real_samples_accuracy") if r and bool(r.get("tta")) == tta else None
                          for r in (report, run_report))
    if real is not None:
        card["real_samples_accuracy"] = real
    settings = read_settings(run)
    if settings.get("default_rule"):
        card["ensemble_default_rule"] = {k: settings.get(k) for k in ("default_rule", "rule_models", "chosen_on")}
    if run_report:
        card["ensemble_comparison"] = {k: v for k, v in run_report.items() if k != "real_samples_accuracy"}
        if run_real:
            card["ensemble_comparison"]["real_samples_accuracy"] = run_real
    return card


def model_config_for(m: str, spec_name: str, device: str = "cpu", tta: bool = False,
                     overrides: dict | None = None, runtime: str | None = None) -> dict:
    """model-config.yaml of model M: MODEL_CONFIG, the device's settings, then `overrides`;
    `runtime` (torch, onnx) over the device's."""
    if device not in DEVICE_CONFIG:
        raise ValueError(f"unknown serving device {device!r}: choose one of {', '.join(DEVICE_CONFIG)}")
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx" and device != "cpu":
        raise ValueError("the onnx runtime serves on the CPU only (no ONNX Runtime CUDA provider here)")
    dev = dict(DEVICE_CONFIG[device])
    handler = {"spec": spec_name, **dev.pop("handler"), "tta": bool(tta)}
    if runtime is not None:
        handler["runtime"] = runtime
    if m in CAM_LAYERS:
        handler["cam_layer"] = CAM_LAYERS[m]
    return {**MODEL_CONFIG, **dev, **(overrides or {}), "handler": handler}


def onnx_export(*ckpts: Path) -> list[dict]:
    """CKPT/model.onnx of each checkpoint, exported and checked against torch on the real samples
    unless current (training.export_onnx, one process for all: this module loads no torch); their
    check records."""
    stale = [str(c) for c in ckpts if not onnx_is_current(c)]
    if stale:
        done = subprocess.run([sys.executable, "-m", "training.export_onnx", *stale, "--samples", str(SAMPLES_DIR)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                             f"ONNX export of {', '.join(stale)} failed (exit {done.returncode})")
    return [_read_json(c / ONNX_RECORD) for c in ckpts]


def build_model_archive(run: Path, m: str, store: Path, version: str | None = None,
                        versioned_name: bool = False, model_config: dict | None = None,
                        device: str = "cpu", tta: bool = False, runtime: str | None = None) -> Path:
    """STORE/galaxy-M.mar; `model_config` overrides MODEL_CONFIG (workers, batching...)."""
    ckpt = run / m
    meta = read_meta(ckpt)
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint weights at {ckpt / WEIGHTS_FILE}")
    version = str(version or meta.get("version") or DEFAULT_VERSION)
    name = served_name(m)
    file_stem = f"{name}-v{version}" if versioned_name else name
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        tmp = Path(tmp)
        extra = tmp / "extra"
        extra.mkdir()
        shutil.copy2(ckpt / WEIGHTS_FILE, extra / WEIGHTS_FILE)
        shutil.copy2(ckpt / META_FILE, extra / META_FILE)
        for optional in (CALIBRATION_FILE, OOD_FILE):  # temperature; out-of-distribution statistics
            if (ckpt / optional).is_file():
                shutil.copy2(ckpt / optional, extra / optional)
        for package in SHIPPED:  # the core and the worker files, nothing else
            shutil.copytree(Path(package.__file__).parent, extra / package.__name__,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        config = model_config_for(m, meta["spec"]["name"], device, tta, model_config, runtime)
        card = model_card(name, version, ckpt, meta, run, config["handler"])
        if config["handler"].get("runtime") == "onnx":
            card["onnx_check"] = onnx_export(ckpt)[0]
            for f in (ONNX_FILE, ONNX_RECORD):
                shutil.copy2(ckpt / f, extra / f)
        (extra / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
        (tmp / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [_tool("torch-model-archiver"), "--model-name", name, "--version", version,
               "--handler", str(HANDLERS / "galaxy_handler.py"), "--extra-files", str(extra),
               "--config-file", str(tmp / "model-config.yaml"), "--export-path", str(tmp), "-f"]
        subprocess.run(cmd, check=True, env=_private_tmp(tmp))
        out = store / f"{file_stem}.mar"
        shutil.move(str(tmp / f"{name}.mar"), out)
    return out


def workflow_members(models) -> list[str]:
    """The ensemble's members in the order the rules take them: as given, B0 first (the seed
    rule's answering model)."""
    return sorted(models, key=lambda m: m != "b0")


def build_workflow_archive(store: Path, urls: dict, f1: dict | None = None,
                           versions: dict | None = None, name: str = WORKFLOW_NAME,
                           workflow_models: dict | None = None, rule: dict | None = None) -> Path:
    """galaxy-ensemble.war over the .mar files `urls` {"b0": "galaxy-b0.mar", "b2": ...}, two or
    more, in that order; `workflow_models` overrides WORKFLOW_MODELS (per-model settings); `rule`
    the run's measured default ({"default_rule", "rule_models"}: RUN/ensemble.json)."""
    members = list(urls)
    if len(members) < 2:
        raise ValueError(f"an ensemble workflow needs two or more models, got {', '.join(members) or 'none'}")
    store.mkdir(parents=True, exist_ok=True)
    spec = {"models": {**WORKFLOW_MODELS, **(workflow_models or {}),
                       **{m: {"url": urls[m], **WORKFLOW_MODEL_NODE} for m in members}},
            "dag": {"pre": members, **{m: ["ensemble"] for m in members}}}
    settings = {"name": name, "models": {m: {"url": urls[m], "version": (versions or {}).get(m)}
                                         for m in members},
                "val_per_class_f1": {m: (f1 or {}).get(m) for m in members},
                **{k: v for k, v in (rule or {}).items() if k in ("default_rule", "rule_models", "calibration", "tta")}}
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        tmp = Path(tmp)
        (tmp / "workflow.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        (tmp / WORKFLOW_SETTINGS).write_text(json.dumps(settings, indent=1))
        cmd = [_tool("torch-workflow-archiver"), "--workflow-name", name,
               "--spec-file", str(tmp / "workflow.yaml"), "--handler", str(HANDLERS / "workflow.py"),
               "--extra-files", str(tmp / WORKFLOW_SETTINGS),
               "--export-path", str(store), "-f"]
        subprocess.run(cmd, check=True, env=_private_tmp(tmp))
    return store / f"{name}.war"


BUILT_FROM = ".built_from"


def workflow_config_for(device: str = "cpu", overrides: dict | None = None) -> dict:
    """The workflow's per-model settings over WORKFLOW_MODELS: its own copies of the models run
    with the workers and batches of the device's archives; then `overrides`."""
    dev = {**MODEL_CONFIG, **DEVICE_CONFIG[device]}
    return {**{wf: dev[k] for k, wf in WORKFLOW_KEYS.items()}, **(overrides or {})}


def built_from(run, models, device: str = "cpu", tta: bool = False, runtime: str | None = None) -> str:
    """The digest of what a store is built from: each model's checkpoint folder, the run's
    reports and ensemble settings, the serving options and the shipped code."""
    run = Path(run)
    return inputs_digest(*(run / m for m in models), run / "report.json", run / WORKFLOW_SETTINGS,
                         {"models": list(models), "device": device, "tta": bool(tta), "runtime": runtime},
                         *(Path(p.__file__).resolve().parent for p in SHIPPED))


def build_all(run, store, version=None, models=PAIR, workflow=True, versioned_name=False,
              model_config: dict | None = None, workflow_models: dict | None = None,
              device: str = "cpu", tta: bool = False, runtime: str | None = None) -> list[Path]:
    """Every model archive, then the workflow over them (two or more models, B0 first); the two
    dicts override the serving defaults."""
    run, store = Path(run), Path(store)
    if workflow and len(models) < 2:
        raise SystemExit(f"the ensemble workflow needs two or more models, got {', '.join(models)}: "
                         f"add more with --models, or --no-workflow")
    (store / BUILT_FROM).unlink(missing_ok=True)  # a build that fails half way must not look done
    workflow_models = workflow_config_for(device, workflow_models)
    if (runtime or DEVICE_CONFIG[device]["handler"]["runtime"]) == "onnx":
        onnx_export(*(run / m for m in models))  # every stale export in one process
    built = [build_model_archive(run, m, store, version, versioned_name, model_config, device, tta, runtime)
             for m in models]
    if workflow:
        files = {m: p.name for m, p in zip(models, built)}
        members = workflow_members(models)
        metas = {m: read_meta(run / m) for m in members}
        built.append(build_workflow_archive(
            store, {m: files[m] for m in members},
            f1={m: val_per_class_f1(run / m, metas[m]) for m in members},
            versions={m: str(version or metas[m].get("version") or DEFAULT_VERSION) for m in members},
            workflow_models=workflow_models, rule={**read_settings(run), "tta": bool(tta)}))
    # what the store now serves: `make serve` rebuilds for other checkpoints or options
    (store / BUILT_FROM).write_text(built_from(run, models, device, tta, runtime) + "\n")
    return built


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="checkpoints/demo", help="folder with one checkpoint folder per model (b0/, b2/...)")
    ap.add_argument("--store", default="model_store", help="where the .mar/.war files go")
    ap.add_argument("--version", default=None, help="archive version (default: checkpoint meta)")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, from {', '.join(ALL_SPECS)} (default: those with a checkpoint in RUN)")
    ap.add_argument("--no-workflow", action="store_true", help="skip galaxy-ensemble.war")
    ap.add_argument("--versioned-name", action="store_true",
                    help="write galaxy-M-vVERSION.mar instead of galaxy-M.mar")
    ap.add_argument("--device", default="cpu", choices=list(DEVICE_CONFIG),
                    help="serving settings: cpu, or cuda (bf16, larger batches, JPEGs decoded on the GPU)")
    ap.add_argument("--tta", action="store_true",
                    help="answer with the mean over the 8 flips/quarter turns (8x the compute)")
    ap.add_argument("--runtime", default=None, choices=list(RUNTIMES),
                    help="where the forward runs (default: the device's: onnx on cpu, torch on cuda)")
    ap.add_argument("--print-built-from", action="store_true",
                    help="print what the store would be stamped with, build nothing")
    args = ap.parse_args(argv)
    if args.models is None:
        models = run_members(Path(args.run))
        if not models:
            ap.error(f"no checkpoint in {args.run}: expected {args.run}/M/{WEIGHTS_FILE} for M in "
                     f"{', '.join(ALL_SPECS)}")
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ALL_SPECS:
            ap.error(f"unknown model {m!r}: choose from {', '.join(ALL_SPECS)}")
    if len(set(models)) != len(models):
        ap.error(f"--models {args.models!r} names a model twice")
    if args.print_built_from:
        print(built_from(args.run, models, args.device, args.tta, args.runtime))
        return
    for p in build_all(args.run, args.store, args.version, models, not args.no_workflow,
                       args.versioned_name, device=args.device, tta=args.tta, runtime=args.runtime):
        print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
