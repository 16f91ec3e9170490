"""Turning TorchServe answers into tables, chart data and overlays, with no Streamlit in it.

The dashboard pages call these and only render the result; the tests call them directly.
"""
from __future__ import annotations

import datetime as dt
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
# The backend's gauge: how long the handler took for the model's latest batch (label ModelName).
PREDICTION_MS = "PredictionTime"
# TorchServe 0.12 registers a workflow's nodes as models named WORKFLOW__NODE (galaxy-ensemble__b0,
# and the function nodes galaxy-ensemble__pre, galaxy-ensemble__ensemble). Their jobs add to
# ts_inference_latency_microseconds and ts_queue_latency_microseconds and report PredictionTime,
# but ts_inference_requests_total counts /predictions requests only: a workflow's calls to its
# models are timed but never counted, so their mean latency cannot be computed.
WORKFLOW_SEPARATOR = "__"
LATEST = " (latest)"  # suffix of a latency series that is the latest call, not a mean


def model_label(name: str) -> str:
    """A model name as a reader knows it: galaxy-ensemble__b0 -> "galaxy-ensemble / b0"."""
    workflow, sep, node = name.partition(WORKFLOW_SEPARATOR)
    return f"{workflow} / {node}" if sep and workflow and node else name


def _model_versions(samples: list[Sample]) -> list[tuple[str, str]]:
    """(model_name, model_version) of every model the frontend has timed or counted, workflow
    members included, standalone models first."""
    keys = {(s.labels.get("model_name", ""), s.labels.get("model_version", ""))
            for s in samples if s.name in (REQUESTS, INFERENCE_US)}
    return sorted(keys, key=lambda k: (WORKFLOW_SEPARATOR in k[0], k))


def _labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Readable names; the version is added only where a model has several."""
    n = {}
    for model, _ in keys:
        n[model] = n.get(model, 0) + 1
    return {(m, v): model_label(m) + (f" {v}" if n[m] > 1 else "") for m, v in keys}


def last_prediction_ms(samples: list[Sample], model: str) -> float | None:
    """The PredictionTime gauge of `model` (its latest batch, ms), None when not reported."""
    found = [s.value for s in samples if s.name == PREDICTION_MS and s.labels.get("ModelName") == model]
    return max(found) if found else None


def snapshot(samples: list[Sample], t: float) -> dict:
    """The numbers the Metrics page follows, at time t (epoch seconds); a host gauge TorchServe
    has not reported yet is None, not 0.

    "latency:NAME" is the mean inference latency since start where TorchServe counts requests;
    for a workflow's models, which it does not count, "latency:NAME (latest)" is the latest
    call's PredictionTime."""
    def gauge(name):
        found = [s.value for s in samples if s.name == name]
        return sum(found) if found else None

    point = {"time": t, **{k: metric_total(samples, n) for k, n in STATUS_COUNTERS.items()}}
    keys = _model_versions(samples)
    for (model, version), label in _labels(keys).items():
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        if n:
            point[f"latency:{label}"] = metric_total(samples, INFERENCE_US, **sel) / n / 1000.0
        elif (last := last_prediction_ms(samples, model)) is not None:
            point[f"latency:{label}{LATEST}"] = last
    point.update(cpu_percent=gauge("CPUUtilization"), memory_used_mb=gauge("MemoryUsed"))
    return point


PER_MODEL_COLUMNS = ["model", "version", "requests", "mean inference ms", "mean queue ms",
                     "last prediction ms", "inference time s"]


def per_model_latency(samples: list[Sample]) -> pd.DataFrame:
    """Since server start, per model and version (a workflow's models as "WORKFLOW / NODE"):
    requests, mean inference and queue latency, the latest batch's prediction time and the
    total inference time. A workflow's models have no request count (None), so no means."""
    keys = _model_versions(samples)
    labels = _labels(keys)
    rows = []
    for model, version in keys:
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        inference_us = metric_total(samples, INFERENCE_US, **sel)
        last = last_prediction_ms(samples, model)
        rows.append({"model": labels[(model, version)], "version": version,
                     "requests": int(n) if n else None,
                     "mean inference ms": round(inference_us / n / 1000, 2) if n else None,
                     "mean queue ms": round(metric_total(samples, QUEUE_US, **sel) / n / 1000, 3)
                     if n else None,
                     "last prediction ms": round(last, 2) if last is not None else None,
                     "inference time s": round(inference_us / 1e6, 3)})
    frame = pd.DataFrame(rows, columns=PER_MODEL_COLUMNS)
    frame["requests"] = frame["requests"].astype("Int64")
    return frame


def uncounted_models(table: pd.DataFrame) -> list[str]:
    """The rows of per_model_latency whose requests TorchServe does not count (workflow models)."""
    return [m for m, n in zip(table["model"], table["requests"]) if pd.isna(n)]


def history_frame(history: list[dict], prefix: str = "") -> pd.DataFrame:
    """Snapshots -> a frame indexed by local clock time (naive datetimes) of the columns starting
    with `prefix` (prefix removed), or of the status counters when `prefix` is empty. Columns
    with no value at all are dropped, so a chart is drawn only from numbers the server really
    reported."""
    if not history:
        return pd.DataFrame()
    df = pd.DataFrame(history)
    df.index = pd.DatetimeIndex([dt.datetime.fromtimestamp(t) for t in df.pop("time")], name="time")
    cols = [c for c in df.columns if c.startswith(prefix)] if prefix else list(STATUS_COUNTERS)
    out = df[cols].rename(columns=lambda c: c[len(prefix):] or c).astype(float)
    return out.dropna(axis=1, how="all")


def drawable(frame: pd.DataFrame) -> bool:
    """A chart worth drawing: some value that is a number and not zero."""
    return not frame.empty and bool(np.nan_to_num(frame.to_numpy(dtype=float)).any())


# Tick spacing for the clock axis (seconds): each divides the next unit, so ticks fall on round
# clock times; at most about 5 ticks (half a page wide) whatever the span, and never finer than a second (the finer
# ticks Vega picks for a few seconds of history are what it labels ".500").
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
CLOCK_FORMAT = "%H:%M:%S"
LEGEND_TOP, LEGEND_ROW = 70, 20  # px below the plot: x axis and legend title, one legend row


def tick_step(span_s: float, most: int = 5) -> int:
    """Seconds between clock-axis ticks for a history spanning `span_s` seconds."""
    return next((s for s in TICK_STEPS if span_s / s <= most), 86400)


def clock_ticks(start: pd.Timestamp, end: pd.Timestamp, most: int = 5) -> list[pd.Timestamp]:
    """Round clock times (multiples of tick_step since midnight) from start to end; the second
    of `start` when none falls between (a single poll)."""
    step = pd.Timedelta(seconds=tick_step((end - start).total_seconds(), most))
    first = start.ceil(step)
    ticks = list(pd.date_range(first, end, freq=step)) if first <= end else []
    return ticks or [start.floor("s")]


def _utc_ms(t) -> int:
    """A naive (local clock) time as the epoch ms of the same clock reading in UTC."""
    return int(pd.Timestamp(t).tz_localize("UTC").value // 10**6)


def time_chart(frame: pd.DataFrame, y_title: str, legend: str | None = "series", height: int = 200):
    """An Altair line chart of a history_frame: x the clock time (HH:MM:SS, titled, ticks on
    round seconds or minutes), y `y_title`, one coloured line per column, listed under the plot
    with the title `legend` (legend=None: no list, for a chart whose title names its one line).

    The index holds local clock times. They go to Vega-Lite as epoch ms of the same reading in UTC
    on a UTC scale, so neither the browser's time zone nor Streamlit's datetime conversion shifts
    them: the axis reads like the page's "last at HH:MM:SS" caption."""
    import altair as alt

    shown, legend = legend is not None, legend or "series"
    long = (frame.rename_axis("time").reset_index()
            .melt("time", var_name=legend, value_name="value").dropna(subset=["value"]))
    long["clock"] = long["time"].dt.strftime(CLOCK_FORMAT)
    long["time"] = [_utc_ms(t) for t in long["time"]]
    ticks = clock_ticks(frame.index.min(), frame.index.max()) if len(frame) else []
    series = frame.columns.size
    # (tick values as DateTime objects: Vega draws no label for epoch-ms values on a UTC axis)
    values = [alt.DateTime(year=t.year, month=t.month, date=t.day, hours=t.hour, minutes=t.minute,
                           seconds=t.second, utc=True) for t in ticks]
    x = alt.X("time:T", title="time (HH:MM:SS)", scale=alt.Scale(type="utc"),
              axis=alt.Axis(format=CLOCK_FORMAT, values=values, labelAngle=0, labelOverlap=True))
    chart = alt.Chart(long).mark_line(point=len(frame) <= 60).encode(
        x=x,
        y=alt.Y("value:Q", title=y_title),
        color=alt.Color(f"{legend}:N", title=legend,
                        legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=400,
                                          symbolSize=60, rowPadding=2, titlePadding=4)
                        if shown else None),
        tooltip=[alt.Tooltip("clock:N", title="time"), alt.Tooltip(f"{legend}:N"),
                 alt.Tooltip("value:Q", title=y_title, format=",.2f")])
    # Streamlit fits the whole chart, legend included, into the height: room for axis and legend
    return chart.properties(height=height + LEGEND_TOP + (LEGEND_ROW * series if shown else 0))


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


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def macro_f1(test: dict) -> tuple[float | None, str | None]:
    """(macro F1, where it comes from) for a model card's "test" section.

    torchserve_ops/archive.py copies the evaluation report's "macro_f1" when there is one, but
    training/evaluate.py writes it as "macro": {"f1"}, which the card does not copy; then the mean
    of the per-class F1 the card holds ("per_class", or "per_class_f1") is the macro F1, the same
    number (an unweighted mean over the classes)."""
    for value, source in ((test.get("macro_f1"), "report"),
                          ((test.get("macro") or {}).get("f1"), "report")):
        if _number(value) is not None:
            return _number(value), source
    per_class = test.get("per_class") or {}
    f1 = [(v or {}).get("f1") if isinstance(v, dict) else None for v in per_class.values()]
    if not f1 or any(_number(v) is None for v in f1):
        f1 = list((test.get("per_class_f1") or {}).values())
    if f1 and all(_number(v) is not None for v in f1):
        return float(np.mean([float(v) for v in f1])), "mean of the per-class F1"
    return None, None


def card_summary(card: dict) -> dict:
    """The parts of a model card (torchserve_ops/archive.py model_card) the page shows."""
    test = card.get("test") or {}
    macro, macro_source = macro_f1(test)
    return {
        "accuracy": test.get("accuracy", (card.get("metrics") or {}).get("val_accuracy")),
        "accuracy_kind": "test" if test.get("accuracy") is not None else "validation",
        "macro_f1": macro,
        "macro_f1_source": macro_source,
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


# Sections that moved from the README into docs/: title -> (page, the heading where the part the
# dashboard shows ends). The README links to these pages; the dashboard shows their text.
DOC_SECTIONS = {"Demo models": (REPO_ROOT / "docs" / "demo_models.md", "The synthetic galaxies")}
_MD_LINK = re.compile(r"\[([^\]]+)\]\(([\w./-]+\.md)(#[\w-]*)?\)")


def _heading_level(line: str) -> int:
    return len(line) - len(line.lstrip("#")) if line.startswith("#") else 0


def _doc_section(doc: Path, stop: str) -> str:
    """A docs/ page from its first section to the heading `stop` (not its title, nor the intro
    that says what the page covers), its headings set under the dashboard's subheader (####) and
    its links to other pages written as their paths."""
    lines = doc.read_text().splitlines() if doc.is_file() else []
    first = next((i for i, l in enumerate(lines) if _heading_level(l) > 1), len(lines))
    lines = lines[first:]
    end = next((i for i, l in enumerate(lines) if _heading_level(l)
                and l.lstrip("#").strip().startswith(stop)), len(lines))
    body = "\n".join("#### " + l.lstrip("#").strip() if _heading_level(l) else l for l in lines[:end])
    body = _MD_LINK.sub(lambda m: f"{m.group(1)} (`docs/{m.group(2)}`)", body).strip()
    rel = doc.relative_to(REPO_ROOT) if doc.is_relative_to(REPO_ROOT) else doc
    return f"{body}\n\nMore in `{rel}`." if body else ""


def readme_section(title: str = "Demo models", readme: Path = README) -> str:
    """The README section whose heading starts with `title`, without its heading line; for a
    section that moved to docs/ (DOC_SECTIONS), that page's part about it."""
    lines = readme.read_text().splitlines() if readme.is_file() else []
    start = next((i for i, l in enumerate(lines) if l.lstrip("#").strip().startswith(title)
                  and l.startswith("#")), None)
    if start is None:
        return _doc_section(*DOC_SECTIONS[title]) if title in DOC_SECTIONS else ""
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
