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

from galaxy_morph.answers import MODEL_NAMES, MODEL_PREFIX, WORKFLOW_NAME
from galaxy_morph.specs import ALL_SPECS, GALAXY10_CLASSES, PAIR, SPECS
from prediction.similarity import BOTH
from survey.samples import SAMPLES_DIR, sample_files, sample_label

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_STORE = REPO_ROOT / "model_store"

README = REPO_ROOT / "README.md"


def _choice_label(spec: str) -> str:
    arch = SPECS[spec].arch.replace("efficientnet_", "EfficientNet-").replace("-b", "-B")
    return f"{spec.upper()} ({arch}, {SPECS[spec].crop} px)"


# What the Classify and Batch pages offer: label -> (TorchServe name, kind); names from the specs
MODEL_CHOICES = {"Ensemble (B0 + B2)": (WORKFLOW_NAME, "workflow"),
          **{_choice_label(spec): (name, "model") for spec, name in MODEL_NAMES.items()}}
DEFAULT_RULE = "default"  # no X-Ensemble-Rule header: the server's measured rule
RULES = {
    DEFAULT_RULE: "the model's default (lowest validation NLL)",
    "mean": "mean of both probability vectors",
    "weighted": "per-class weights from validation F1",
    "seed": "seed system's: agree -> mean confidence, else B0",
}


def confidence_meaning(answer: dict) -> str | None:
    """What the answer's confidence means, from where its calibration was fitted (None: not calibrated)."""
    cal = answer.get("calibration") or {}
    conf = answer.get("confidence")
    if conf is None or not cal.get("on"):
        return None
    if cal["on"] == "members":
        where = " and ".join(cal.get("members") or []) or "their own"
        return f"Combined from models calibrated on {where} galaxies."
    where = {"real": "real Galaxy10 DECaLS galaxies", "your labels": "your labelled galaxies",
             "synthetic": "synthetic galaxies: on real ones it may be over-confident"}.get(cal["on"], cal["on"])
    return (f"Of answers given at about {float(conf):.0%} confidence, about {float(conf):.0%} were right on the "
            f"{cal.get('n') or '?'} {where} the temperature was fitted on.")


def rule_header(choice: str | None) -> str | None:
    """The rule to ask for: None for the default."""
    return None if choice in (None, DEFAULT_RULE) else choice


# ----------------------------------------------------------------------------- samples

def gallery(samples_dir: Path = SAMPLES_DIR) -> list[dict]:
    """The shipped real samples: [{"path", "name", "label", "class_name"}], by class then index."""
    out = []
    for p, label in sample_files(samples_dir):
        out.append({"path": p, "name": p.name, "label": label, "k": sample_label(p.name)[1],
                    "class_name": GALAXY10_CLASSES[label] if label < len(GALAXY10_CLASSES) else str(label)})
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


NOT_A_GALAXY = "This does not look like a galaxy cutout the model was trained on"


def ood_warning(result: dict) -> str | None:
    """The warning to show instead of trusting the class, when the answer is flagged."""
    if result.get("in_distribution") is not False:
        return None
    reason = result.get("ood_reason")
    return f"{NOT_A_GALAXY}{f' ({reason})' if reason else ''}: the class below means little."


def query_embeddings(result: dict) -> dict:
    """{spec: embedding} of a served answer: a workflow answer's members', or the one model's."""
    found = {spec: (result.get(spec) or {}).get("embedding") for spec in ALL_SPECS}
    found = {spec: e for spec, e in found.items() if e}
    if not found and result.get("embedding"):
        found[str(result.get("model", "")).removeprefix(MODEL_PREFIX)] = result["embedding"]
    return found


def similar_galaxies(index, result: dict, k: int = 5) -> tuple[list[dict], str | None]:
    """The k nearest galaxies of a prediction.similarity index to a served answer, as
    ([{"id", "label", "distance", "path", "caption"}], a note for the user or None)."""
    query = query_embeddings(result)
    space = BOTH if all(m in query for m in PAIR) else next(iter(query), None)
    if space is None:
        return [], "The answer carries no embedding (a server older than this dashboard?)."
    if space not in index.spaces:
        return [], f"The similarity index holds no {space.upper()} embeddings."
    found = index.nearest(query, k, space)
    rows = [{"id": n.id, "label": n.label, "distance": n.distance, "path": n.path,
             "caption": f"{n.label}{'' if n.labelled else ' (predicted)'} · d={n.distance:.3f}"} for n in found]
    served = {m: (result.get(m) or {}).get("version") for m in query} if space == BOTH else {space: result.get("version")}
    indexed = index.meta.get("versions") or {}
    stale = [m for m, v in served.items() if v and indexed.get(m) and indexed[m] != v]
    note = (f"The index was built with other versions of {', '.join(m.upper() for m in stale)} "
            f"({', '.join(indexed[m] for m in stale)}): distances may mislead." if stale else None)
    return rows, note


def result_row(name: str, result: dict | None, error: str | None = None) -> dict:
    """One row of the Batch table."""
    row = {"file": name, "class_name": None, "label": None, "confidence": None, "galaxy?": None,
           "model": None, "version": None, "source": None, "agree": None, "error": error}
    if result:
        row.update({k: result.get(k) for k in ("class_name", "label", "confidence", "model",
                                               "version", "source")})
        row["agree"] = agreement(result)
        row["galaxy?"] = {True: "yes", False: "NOT A GALAXY?"}.get(result.get("in_distribution"))
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
