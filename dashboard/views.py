"""Turning TorchServe answers into tables, chart data and overlays, with no Streamlit in it.

The dashboard pages call these and only render the result; the tests call them directly.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from PIL import Image

from galaxy_morph.answers import MODEL_NAMES, WORKFLOW_NAME
from galaxy_morph.specs import ALL_SPECS, GALAXY10_CLASSES, SPECS
from torchserve_ops.client import Sample, metric_total

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples" / "galaxy10_decals"
MODEL_STORE = REPO_ROOT / "model_store"

README = REPO_ROOT / "README.md"


def _choice_label(spec: str) -> str:
    arch = SPECS[spec].arch.replace("efficientnet_", "EfficientNet-").replace("-b", "-B")
    return f"{spec.upper()} ({arch}, {SPECS[spec].crop} px)"


# What the Classify and Batch pages offer: label -> (TorchServe name, kind); names from the specs
MODELS = {"Ensemble (B0 + B2)": (WORKFLOW_NAME, "workflow"),
          **{_choice_label(spec): (name, "model") for spec, name in MODEL_NAMES.items()}}
RULES = {
    "seed": "seed: agree -> mean confidence, else B0",
    "mean": "mean of both probability vectors",
    "weighted": "per-class weights from validation F1",
}
_SAMPLE_RE = re.compile(r"class_(\d+)_(\d+)\.(jpe?g|png)$", re.I)


# ----------------------------------------------------------------------------- samples

def gallery(samples_dir: Path = SAMPLES_DIR) -> list[dict]:
    """The shipped real samples: [{"path", "name", "label", "class_name"}], by class then index."""
    out = []
    for p in Path(samples_dir).glob("*"):
        m = _SAMPLE_RE.match(p.name)
        if m:
            label = int(m.group(1))
            out.append({"path": p, "name": p.name, "label": label, "k": int(m.group(2)),
                        "class_name": GALAXY10_CLASSES[label] if label < len(GALAXY10_CLASSES)
                        else str(label)})
    return sorted(out, key=lambda s: (s["label"], s["k"]))


# ----------------------------------------------------------------------------- predictions

def probabilities_frame(probabilities: dict) -> pd.DataFrame:
    """{class_name: p} (the answer's "probabilities") -> "class" and "probability" columns."""
    return pd.DataFrame(list(probabilities.items()), columns=["class", "probability"])


def members(result: dict) -> list[dict]:
    """For a workflow answer: one row per member model with its label and confidence."""
    rows = []
    for key in ALL_SPECS:  # the members a workflow can have, in spec order
        r = result.get(key)
        if isinstance(r, dict):
            rows.append({"model": r.get("model", key), "version": r.get("version", ""),
                         "class": r.get("class_name", ""), "confidence": r.get("confidence")})
    return rows


def agreement(result: dict) -> bool | None:
    """Whether B0 and B2 agree on the top class (None when this is not an ensemble answer)."""
    b0, b2 = result.get("b0"), result.get("b2")
    if not (isinstance(b0, dict) and isinstance(b2, dict)):
        return None
    return b0.get("label") == b2.get("label")


def result_row(name: str, result: dict | None, error: str | None = None) -> dict:
    """One row of the Batch table."""
    row = {"file": name, "class_name": None, "label": None, "confidence": None,
           "model": None, "version": None, "source": None, "agree": None, "error": error}
    if result:
        row.update({k: result.get(k) for k in ("class_name", "label", "confidence", "model",
                                               "version", "source")})
        row["agree"] = agreement(result)
    return row


def class_counts(rows: list[dict]) -> pd.DataFrame:
    """Number of images per predicted class, every class present (0 where none)."""
    counts = {c: 0 for c in GALAXY10_CLASSES}
    for r in rows:
        if r.get("class_name"):
            counts[r["class_name"]] = counts.get(r["class_name"], 0) + 1
    return pd.DataFrame({"class": list(counts), "images": list(counts.values())})


# ----------------------------------------------------------------------------- Grad-CAM

def heatmap_array(explanation: dict) -> np.ndarray:
    """The explanations answer's 2-D "heatmap" (nested lists), scaled to 0-1."""
    if "heatmap" not in explanation:
        raise ValueError(f"no heatmap in the explanation (keys: {sorted(explanation)})")
    arr = np.nan_to_num(np.asarray(explanation["heatmap"], dtype=np.float64))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def crop_box(size: tuple[int, int], model: str) -> tuple[int, int, int, int]:
    """The part of an image (w, h) that the model sees after its resize + centre crop."""
    m = re.search(r"[-_]([a-z0-9]+)$", model)  # galaxy-b2, galaxy-ensemble__convnext
    spec = ALL_SPECS.get(m.group(1)) if m else None
    w, h = size
    if spec is None:
        return 0, 0, w, h
    side = min(w, h) * min(1.0, spec.crop / spec.resize)
    left, top = (w - side) / 2, (h - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def overlay(image: Image.Image, heat: np.ndarray, box=None, alpha: float = 0.45,
            cmap: str = "inferno") -> Image.Image:
    """Blend a 0-1 heatmap over `box` of the image (the whole image when None)."""
    from matplotlib import colormaps

    image = image.convert("RGB")
    box = box or (0, 0, *image.size)
    bw, bh = box[2] - box[0], box[3] - box[1]
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
        (bw, bh), Image.BILINEAR)
    colour = colormaps[cmap](np.asarray(heat_img, dtype=np.float64) / 255.0)[..., :3]
    region = np.asarray(image.crop(box), dtype=np.float64) / 255.0
    mixed = (1 - alpha) * region + alpha * colour
    out = image.copy()
    out.paste(Image.fromarray((mixed * 255).round().astype(np.uint8)), box[:2])
    return out


# ----------------------------------------------------------------------------- server

def is_local(host: str) -> bool:
    """Whether `host` is this machine (then the workers' pids are ours to look at)."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def worker_memory_mb(pid) -> float | None:
    """Resident memory of a worker process (psutil), None when it is not visible from here.

    TorchServe 0.12's describe API reports memoryUsage 0 for every worker, so it is not used."""
    try:
        return round(psutil.Process(int(pid)).memory_info().rss / 2**20, 1)
    except (psutil.Error, TypeError, ValueError):
        return None


def worker_rows(descriptions: dict[str, list[dict]], local: bool) -> list[dict]:
    """Every worker of every model version; "memory MB" (psutil) only when `local`."""
    rows = []
    for model, versions in descriptions.items():
        for d in versions:
            for w in d.get("workers") or []:
                row = {"model": model, "version": d.get("modelVersion"), "worker": str(w.get("id")),
                       "status": w.get("status"), "pid": w.get("pid")}
                if local:
                    row["memory MB"] = worker_memory_mb(w.get("pid"))
                rows.append(row)
    return rows


def models_table(descriptions: dict[str, list[dict]], defaults: dict[str, str],
                 local: bool = False) -> pd.DataFrame:
    """One row per model version: default?, workers, their states, batch settings, and (when the
    server runs on this machine) the resident memory of its workers."""
    rows = []
    for model, versions in descriptions.items():
        for d in versions:
            workers = d.get("workers") or []
            row = {
                "model": model,
                "version": d.get("modelVersion"),
                "default": d.get("modelVersion") == defaults.get(model),
                "workers": len(workers),
                "status": ", ".join(sorted({w.get("status", "?") for w in workers})) or "no workers",
                "min/max": f"{d.get('minWorkers', '?')}/{d.get('maxWorkers', '?')}",
                "batch": d.get("batchSize"),
                "max delay ms": d.get("maxBatchDelay"),
                "archive": d.get("modelUrl"),
            }
            if local:
                mem = [worker_memory_mb(w.get("pid")) for w in workers]
                row["memory MB"] = round(sum(m for m in mem if m), 1) if any(mem) else None
            rows.append(row)
    return pd.DataFrame(rows)


def archives(store: Path = MODEL_STORE) -> list[str]:
    """Archive file names in the model store (.mar models)."""
    return sorted(p.name for p in Path(store).glob("*.mar"))


# ----------------------------------------------------------------------------- metrics

# prometheus_client names counter samples NAME_total; TorchServe's frontend exports counters for
# requests and cumulative latency (no histograms), and host gauges once a minute.
STATUS_COUNTERS = {"2xx": "Requests2XX_total", "4xx": "Requests4XX_total", "5xx": "Requests5XX_total"}
REQUESTS = "ts_inference_requests_total"
INFERENCE_US = "ts_inference_latency_microseconds_total"
QUEUE_US = "ts_queue_latency_microseconds_total"


def snapshot(samples: list[Sample], t: float) -> dict:
    """The numbers the Metrics page follows, at time t (epoch seconds); a host gauge TorchServe
    has not reported yet is None, not 0."""
    def gauge(name):
        found = [s.value for s in samples if s.name == name]
        return sum(found) if found else None

    point = {"time": t, **{k: metric_total(samples, n) for k, n in STATUS_COUNTERS.items()}}
    for model, version in sorted({(s.labels.get("model_name", ""), s.labels.get("model_version", ""))
                                  for s in samples if s.name == REQUESTS}):
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        if n:
            point[f"latency:{model}"] = metric_total(samples, INFERENCE_US, **sel) / n / 1000.0
    point.update(cpu_percent=gauge("CPUUtilization"), memory_used_mb=gauge("MemoryUsed"))
    return point


def per_model_latency(samples: list[Sample]) -> pd.DataFrame:
    """Since server start, per model and version: requests, mean inference and queue latency."""
    keys = sorted({(s.labels.get("model_name", ""), s.labels.get("model_version", ""))
                   for s in samples if s.name == REQUESTS})
    rows = []
    for model, version in keys:
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        rows.append({"model": model, "version": version, "requests": int(n),
                     "mean inference ms": round(metric_total(samples, INFERENCE_US, **sel) / n / 1000, 2)
                     if n else None,
                     "mean queue ms": round(metric_total(samples, QUEUE_US, **sel) / n / 1000, 3)
                     if n else None})
    return pd.DataFrame(rows, columns=["model", "version", "requests", "mean inference ms",
                                       "mean queue ms"])


def history_frame(history: list[dict], prefix: str = "") -> pd.DataFrame:
    """Snapshots -> a time-indexed frame of the columns starting with `prefix` (prefix removed),
    or of the status counters when `prefix` is empty. Columns with no value at all are dropped,
    so a chart is drawn only from numbers the server really reported."""
    if not history:
        return pd.DataFrame()
    df = pd.DataFrame(history)
    df.index = pd.to_datetime(df.pop("time"), unit="s")
    cols = [c for c in df.columns if c.startswith(prefix)] if prefix else list(STATUS_COUNTERS)
    out = df[cols].rename(columns=lambda c: c[len(prefix):] or c).astype(float)
    return out.dropna(axis=1, how="all")


def drawable(frame: pd.DataFrame) -> bool:
    """A chart worth drawing: some value that is a number and not zero."""
    return not frame.empty and bool(np.nan_to_num(frame.to_numpy(dtype=float)).any())


# ----------------------------------------------------------------------------- model card

def card_of(description: list[dict] | dict) -> dict:
    """The handler's model card from a describe answer (customizedMetadata), {} when none."""
    d = description[0] if isinstance(description, list) and description else description
    card = d.get("customizedMetadata") if isinstance(d, dict) else None
    return card if isinstance(card, dict) else {}


def per_class_table(per_class: dict) -> pd.DataFrame:
    """{"Disturbed": {"precision", "recall", "f1", "support"}, ...} -> a table in class order."""
    order = [c for c in GALAXY10_CLASSES if c in per_class] + \
            [c for c in per_class if c not in GALAXY10_CLASSES]
    rows = [{"class": c, **{k: per_class[c].get(k) for k in ("precision", "recall", "f1", "support")}}
            for c in order if isinstance(per_class[c], dict)]
    return pd.DataFrame(rows)


def confusion_frame(matrix, class_names=GALAXY10_CLASSES) -> pd.DataFrame:
    """A square count matrix (rows true, columns predicted) -> long frame for a heatmap."""
    m = np.asarray(matrix)
    names = list(class_names)[: m.shape[0]]
    rows = [{"true": names[i], "predicted": names[j], "count": int(m[i, j])}
            for i in range(m.shape[0]) for j in range(m.shape[1])]
    return pd.DataFrame(rows)


def card_summary(card: dict) -> dict:
    """The parts of a model card (torchserve_ops/archive.py model_card) the page shows."""
    test = card.get("test") or {}
    return {
        "accuracy": test.get("accuracy", (card.get("metrics") or {}).get("val_accuracy")),
        "accuracy_kind": "test" if test.get("accuracy") is not None else "validation",
        "macro_f1": test.get("macro_f1"),
        "trained_at": card.get("trained_at"),
        "data": card.get("training_data") or {},
        "per_class": test.get("per_class") or {},
        "confusion_matrix": test.get("confusion_matrix"),
        "class_names": card.get("class_names") or list(GALAXY10_CLASSES),
        "ensemble": card.get("ensemble_comparison"),
        "note": card.get("note"),
    }


def provenance(card: dict, model: str = "") -> dict:
    """What the served model was trained on and how it does on the 100 real Galaxy10 DECaLS
    samples (`real_samples_accuracy` of the evaluation report), for the "what is this" banner.

    For the ensemble workflow pass a member's card and model=WORKFLOW_NAME: the run report in its
    `ensemble_comparison` holds the ensemble's real-sample accuracy."""
    data = card.get("training_data") or {}
    real = card.get("real_samples_accuracy")
    if model == WORKFLOW_NAME:
        real = ((card.get("ensemble_comparison") or {}).get("real_samples_accuracy") or {}).get("ensemble")
    synthetic = card.get("synthetic_training_data")
    return {"synthetic": synthetic, "data_path": data.get("path"),
            "real_samples_accuracy": real if isinstance(real, (int, float)) else None,
            "tta": bool((card.get("serving") or {}).get("tta"))}


def provenance_text(p: dict) -> str:
    """One sentence for a page: trained on what, and the measured real-sample accuracy."""
    if p["synthetic"]:
        trained = "**trained only on synthetic galaxies** (`simulation.synthetic`)"
    elif p["synthetic"] is False:
        trained = f"trained on `{p['data_path']}`"
    else:
        trained = f"trained on `{p['data_path'] or 'unrecorded data'}`"
    acc = p["real_samples_accuracy"]
    real = (f"it gets **{acc:.0%}** of the 100 real Galaxy10 DECaLS samples right (chance 10 %)"
            if acc is not None else "its accuracy on real galaxies was not measured")
    if p.get("tta"):
        real += ", answering with the mean over the 8 flips and quarter turns of each image"
    return (f"This model was {trained}; {real}. A demonstration of the pipeline, not a survey-grade "
            "classifier: see [Demo models](#demo-models).")


def readme_section(title: str = "Demo models", readme: Path = README) -> str:
    """The README section whose heading starts with `title`, without its heading line."""
    lines = readme.read_text().splitlines() if readme.is_file() else []
    start = next((i for i, l in enumerate(lines) if l.lstrip("#").strip().startswith(title)
                  and l.startswith("#")), None)
    if start is None:
        return ""
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("#")
                and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start + 1:end]).strip()


def _ece(value) -> dict:
    """The report's ECE: {"uncalibrated", "calibrated"} for a model, a number for a rule."""
    if isinstance(value, dict):
        return {"ECE": value.get("uncalibrated"), "ECE after temperature scaling": value.get("calibrated")}
    return {"ECE": value}


def comparison_table(report: dict) -> pd.DataFrame:
    """The run's evaluation report (training/evaluate.py: "models", "ensemble",
    "real_samples_accuracy") -> one row per model and ensemble rule, numbers only."""
    real = report.get("real_samples_accuracy") or {}
    rows = []
    for group, entries in (("model", report.get("models") or {}),
                           ("ensemble rule", report.get("ensemble") or {})):
        for name, r in entries.items():
            macro = r.get("macro") or {}
            rows.append({"": group, "name": name, "test accuracy": r.get("accuracy"),
                         "macro precision": macro.get("precision"), "macro recall": macro.get("recall"),
                         "macro F1": macro.get("f1"), **_ece(r.get("ece")),
                         "real samples accuracy": real.get(name) if group == "model"
                         else (real.get("ensemble") if name == "seed" else None)})
    return pd.DataFrame(rows).dropna(axis=1, how="all")
