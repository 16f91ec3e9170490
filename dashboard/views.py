"""Turning TorchServe answers into tables, chart data and overlays, with no Streamlit in it.

The dashboard pages call these and only render the result; the tests call them directly.
"""
from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from galaxy_morph.client import Sample, metric_total
from galaxy_morph.specs import GALAXY10_CLASSES, SPECS

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples" / "galaxy10_decals"
MODEL_STORE = REPO_ROOT / "model_store"

# What the Classify page offers: label -> (TorchServe name, kind)
MODELS = {
    "Ensemble (B0 + B2)": ("galaxy-ensemble", "workflow"),
    "B0 (EfficientNet-B0, 128 px)": ("galaxy-b0", "model"),
    "B2 (EfficientNet-B2, 224 px)": ("galaxy-b2", "model"),
}
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


def mime_for(name: str) -> str:
    return "image/png" if name.lower().endswith(".png") else "image/jpeg"


# ----------------------------------------------------------------------------- predictions

def probabilities_frame(probabilities) -> pd.DataFrame:
    """{class_name: p} or a list in class order -> a frame with "class" and "probability",
    in Galaxy10 class order."""
    if isinstance(probabilities, dict):
        order = [c for c in GALAXY10_CLASSES if c in probabilities]
        order += [c for c in probabilities if c not in order]
        rows = [(c, float(probabilities[c])) for c in order]
    else:
        rows = [(GALAXY10_CLASSES[i] if i < len(GALAXY10_CLASSES) else str(i), float(p))
                for i, p in enumerate(probabilities)]
    return pd.DataFrame(rows, columns=["class", "probability"])


def members(result: dict) -> list[dict]:
    """For a workflow answer: one row per member model with its label and confidence."""
    rows = []
    for key in ("b0", "b2"):
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

def heatmap_array(explanation) -> np.ndarray:
    """The 2-D heatmap from an explanations answer: a nested list, {"heatmap": list},
    or a base64 PNG ({"heatmap_png": ...} / {"png": ...}). Values scaled to 0-1."""
    data = explanation
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict):
        for key in ("heatmap", "gradcam", "attributions", "cam"):
            if key in data:
                data = data[key]
                break
        else:
            for key in ("heatmap_png", "png", "image"):
                if key in data:
                    png = base64.b64decode(data[key])
                    data = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
                    break
            else:
                raise ValueError(f"no heatmap in the explanation (keys: {sorted(data)})")
    arr = np.asarray(data, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {arr.shape}")
    arr = np.nan_to_num(arr)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def crop_box(size: tuple[int, int], model: str) -> tuple[int, int, int, int]:
    """The part of an image (w, h) that the model sees after its resize + centre crop."""
    m = re.search(r"(b\d)$", model)
    spec = SPECS.get(m.group(1)) if m else None
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

def models_table(descriptions: dict[str, list[dict]], defaults: dict[str, str]) -> pd.DataFrame:
    """One row per model version: default?, workers, their states, memory, batch settings."""
    rows = []
    for model, versions in descriptions.items():
        for d in versions:
            workers = d.get("workers") or []
            states = sorted({w.get("status", "?") for w in workers})
            mem = sum(float(w.get("memoryUsage") or 0) for w in workers)
            rows.append({
                "model": model,
                "version": d.get("modelVersion"),
                "default": d.get("modelVersion") == defaults.get(model),
                "workers": len(workers),
                "status": ", ".join(states) or "no workers",
                "min/max": f"{d.get('minWorkers', '?')}/{d.get('maxWorkers', '?')}",
                "batch": d.get("batchSize"),
                "max delay ms": d.get("maxBatchDelay"),
                "memory MB": round(mem / 2**20, 1) if mem else None,
                "archive": d.get("modelUrl"),
            })
    return pd.DataFrame(rows)


def worker_rows(descriptions: dict[str, list[dict]]) -> list[dict]:
    """Every worker of every model version, for the memory chart."""
    rows = []
    for model, versions in descriptions.items():
        for d in versions:
            for w in d.get("workers") or []:
                rows.append({"model": model, "version": d.get("modelVersion"),
                             "worker": str(w.get("id")), "status": w.get("status"),
                             "pid": w.get("pid"),
                             "memory MB": round(float(w.get("memoryUsage") or 0) / 2**20, 1)})
    return rows


def archives(store: Path = MODEL_STORE) -> list[str]:
    """Archive file names in the model store (.mar models)."""
    return sorted(p.name for p in Path(store).glob("*.mar"))


# ----------------------------------------------------------------------------- metrics

def snapshot(samples: list[Sample], t: float) -> dict:
    """The numbers the Metrics page follows, at time t (epoch seconds)."""
    return {
        "time": t,
        "2xx": metric_total(samples, "Requests2XX"),
        "4xx": metric_total(samples, "Requests4XX"),
        "5xx": metric_total(samples, "Requests5XX"),
        "inference_requests": metric_total(samples, "ts_inference_requests_total"),
        "inference_us": metric_total(samples, "ts_inference_latency_microseconds"),
        "queue_us": metric_total(samples, "ts_queue_latency_microseconds"),
        "cpu_percent": metric_total(samples, "CPUUtilization"),
        "memory_used_mb": metric_total(samples, "MemoryUsed"),
        "memory_percent": metric_total(samples, "MemoryUtilization"),
    }


def per_model_latency(samples: list[Sample]) -> pd.DataFrame:
    """Since server start, per model and version: requests, mean inference and queue latency."""
    keys = sorted({(s.labels.get("model_name", ""), s.labels.get("model_version", ""))
                   for s in samples if s.name == "ts_inference_requests_total"})
    rows = []
    for model, version in keys:
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, "ts_inference_requests_total", **sel)
        inf = metric_total(samples, "ts_inference_latency_microseconds", **sel)
        q = metric_total(samples, "ts_queue_latency_microseconds", **sel)
        rows.append({"model": model, "version": version, "requests": int(n),
                     "mean inference ms": round(inf / n / 1000, 2) if n else None,
                     "mean queue ms": round(q / n / 1000, 3) if n else None})
    return pd.DataFrame(rows, columns=["model", "version", "requests", "mean inference ms",
                                       "mean queue ms"])


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Snapshots -> a time-indexed frame with request counts and per-interval mean latencies.

    Latency counters are cumulative microseconds: the mean over an interval is
    delta(latency) / delta(requests); intervals without requests give NaN (a gap in the chart).
    A counter that went down means the server restarted: that interval starts from zero."""
    if not history:
        return pd.DataFrame()
    df = pd.DataFrame(history)
    df["time"] = pd.to_datetime(df["time"], unit="s")
    df = df.set_index("time")
    out = df[["2xx", "4xx", "5xx"]].copy()
    for col, name in (("inference_us", "inference ms"), ("queue_us", "queue ms")):
        d_lat = _deltas(df[col])
        d_n = _deltas(df["inference_requests"])
        out[name] = [(a / n / 1000.0) if n and n > 0 else math.nan for a, n in zip(d_lat, d_n)]
    out["requests/interval"] = _deltas(df["inference_requests"])
    for col in ("cpu_percent", "memory_used_mb", "memory_percent"):
        out[col] = df[col]
    return out


def _deltas(series: pd.Series) -> list[float]:
    vals = series.tolist()
    out = [math.nan]
    for prev, cur in zip(vals, vals[1:]):
        out.append(cur - prev if cur >= prev else cur)
    return out


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
    """The parts of a model card the page shows; test metrics first, then validation."""
    test = card.get("test") if isinstance(card.get("test"), dict) else {}
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    return {
        "accuracy": _first(test.get("accuracy"), metrics.get("test_accuracy")),
        "accuracy_kind": "test" if test.get("accuracy") is not None else "validation",
        "val_accuracy": _first(metrics.get("val_accuracy"), metrics.get("accuracy")),
        "macro_f1": _first(test.get("macro_f1"), (test.get("macro") or {}).get("f1"),
                           _mean_f1(test.get("per_class"))),
        "trained_at": _first(card.get("trained_at"), card.get("saved_at"), card.get("date")),
        "data": _first(card.get("training_data"), card.get("data")) or {},
        "per_class": test.get("per_class") or {},
        "confusion_matrix": test.get("confusion_matrix"),
        "class_names": card.get("class_names") or list(GALAXY10_CLASSES),
        "ensemble": card.get("ensemble_comparison"),
        "note": card.get("note"),
    }


def _mean_f1(per_class) -> float | None:
    f1 = [v.get("f1") for v in (per_class or {}).values() if isinstance(v, dict)]
    f1 = [x for x in f1 if isinstance(x, (int, float))]
    return sum(f1) / len(f1) if f1 else None


def _first(*values):
    return next((v for v in values if v not in (None, "", [], {})), None)


def comparison_table(report) -> pd.DataFrame:
    """An evaluation report with models and ensemble rules side by side -> one row per entry,
    scalar columns only (accuracy, macro F1, ...). Accepts a list of rows, {name: {metrics}},
    or those nested one level ({"models": {...}, "ensemble": {...}})."""
    if isinstance(report, dict) and isinstance(report.get("models"), dict):
        real = report.get("real_samples_accuracy") or {}
        rows = []
        for group, entries in (("model", report.get("models") or {}),
                               ("ensemble rule", report.get("ensemble") or {})):
            for name, r in entries.items():
                if not isinstance(r, dict):
                    continue
                macro = r.get("macro") or {}
                rows.append({"": group, "name": name, "test accuracy": r.get("accuracy"),
                             "macro precision": macro.get("precision"),
                             "macro recall": macro.get("recall"),
                             "macro F1": _first(macro.get("f1"), r.get("macro_f1"),
                                                _mean_f1(r.get("per_class"))),
                             "ECE": r.get("ece"),
                             "real samples accuracy": real.get(name) if group == "model"
                             else (real.get("ensemble") if name == "seed" else None)})
        return pd.DataFrame(rows).dropna(axis=1, how="all")
    rows: list[dict] = []

    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}

    def add(obj, group=None):
        if isinstance(obj, list):
            for i, r in enumerate(obj):
                if isinstance(r, dict):
                    rows.append({**({"group": group} if group else {}), **scalars(r)})
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, dict) and any(isinstance(x, (int, float)) for x in v.values()):
                    rows.append({**({"group": group} if group else {}), "name": k, **scalars(v)})
                elif isinstance(v, (list, dict)) and group is None:
                    add(v, k)

    add(report)
    df = pd.DataFrame(rows)
    return df.dropna(axis=1, how="all") if not df.empty else df
