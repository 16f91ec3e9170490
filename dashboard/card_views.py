"""The Model card page's data: the handler's card and the run's evaluation report -> summaries,
per-class and confusion tables, provenance, and the docs sections the dashboard shows.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_morph.answers import WORKFLOW_NAME
from galaxy_morph.data import SYNTHETIC_SOURCE
from galaxy_morph.specs import GALAXY10_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
# Synthetic files (and so the checkpoints trained on them) record SYNTHETIC_SOURCE, the generator's
# old module; the page names the one that makes them now.
GENERATOR = "simulation.synthetic"


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
        "accuracy_kind": ("held-out labels" if card.get("held_out_labels") else "test")
        if test.get("accuracy") is not None else "validation",
        "macro_f1": macro,
        "macro_f1_source": macro_source,
        "trained_at": card.get("trained_at"),
        "data": training_data(card),
        "per_class": test.get("per_class") or {},
        "confusion_matrix": test.get("confusion_matrix"),
        "class_names": card.get("class_names") or list(GALAXY10_CLASSES),
        "ensemble": card.get("ensemble_comparison"),
        "note": card.get("note"),
        "calibration": card.get("calibration") if card.get("calibrated") else None,
        "calibration_served": card.get("calibration_served"),
    }


def training_data(card: dict) -> dict:
    """The card's "training_data" as the page shows it: a synthetic file's source is GENERATOR."""
    data = card.get("training_data") or {}
    if isinstance(data, dict) and data.get("source") == SYNTHETIC_SOURCE:
        data = {**data, "source": GENERATOR}
    return data


def reliability_frame(calibration: dict) -> pd.DataFrame:
    """The validation split's reliability bins before and after temperature scaling (the card's
    "calibration") -> one row per non-empty bin: when, bin centre, mean confidence, accuracy, count."""
    rows = []
    for when, key in (("before", "reliability_before"), ("after", "reliability_after")):
        r = calibration.get(key) or {}
        edges = r.get("edges") or []
        for i, n in enumerate(r.get("count") or []):
            if n:
                rows.append({"when": f"{when} (ECE {r.get('ece', float('nan')):.3f})",
                             "bin": (edges[i] + edges[i + 1]) / 2, "confidence": r["confidence"][i],
                             "accuracy": r["accuracy"][i], "count": n})
    return pd.DataFrame(rows, columns=["when", "bin", "confidence", "accuracy", "count"])


def served_reliability_frame(served: dict) -> pd.DataFrame:
    """The served-domain fit's cross-validated reliability bins (training.calibrate_real), and the
    same galaxies answered with the temperature served before, in reliability_frame's columns."""
    rows = []
    r = served.get("reliability_cv") or {}
    edges = r.get("edges") or []
    for i, n in enumerate(r.get("count") or []):
        if n:
            rows.append({"when": f"{served.get('on', 'served')} galaxies, T = {served['temperature']:.2f}, "
                                 f"cross-validated (ECE {r.get('ece', float('nan')):.3f})",
                         "bin": (edges[i] + edges[i + 1]) / 2, "confidence": r["confidence"][i],
                         "accuracy": r["accuracy"][i], "count": n})
    return pd.DataFrame(rows, columns=["when", "bin", "confidence", "accuracy", "count"])


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
    held = (card.get("held_out_labels") or {}) if model != WORKFLOW_NAME else {}  # a member's, not the ensemble's
    return {"synthetic": synthetic, "data_path": data.get("path"),
            "real_samples_accuracy": real if isinstance(real, (int, float)) else None,
            "tta": bool((card.get("serving") or {}).get("tta")),
            "fine_tuned": {"from": held.get("from"), "version": (held.get("previous") or {}).get("version"),
                           "labels": held.get("labels"), "n_labels": held.get("n_labels"), "n_held_out": held.get("n"),
                           "accuracy": (held.get("this") or {}).get("accuracy"),
                           "before": (held.get("previous") or {}).get("accuracy")} if held else None}


def provenance_text(p: dict) -> str:
    """One sentence for a page: trained on what, and the measured real-sample accuracy."""
    if p.get("fine_tuned"):
        f = p["fine_tuned"]
        return (f"This model was **fine-tuned from `{f['from']}` ({f['version']})** on the {f['n_labels']} galaxies "
                f"labelled in `{f['labels']}` (make retrain); on {f['n_held_out']} held-out labels it gets "
                f"**{f['accuracy']:.0%}** right, against {f['before']:.0%} before.")
    if p["synthetic"]:
        trained = f"**trained only on synthetic galaxies** (`{GENERATOR}`)"
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


HELD_OUT_METRICS = (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("NLL", "nll"), ("ECE", "ece"),
                    ("flagged out of distribution", "ood_flagged"))


def versions_frame(cards: dict[str, dict], default: str | None) -> pd.DataFrame:
    """{version: model card} -> one row a version: default, trained, on what, its own test figures
    (for a retrained version: the held-out labels) and whether it is calibrated."""
    rows = []
    for version, card in cards.items():
        info = card_summary(card)
        data = info["data"]
        held = card.get("held_out_labels") or {}
        rows.append({"version": version, "default": version == default, "accuracy": info["accuracy"],
                     "evaluated on": f"{held.get('n')} held-out labels" if held else info["accuracy_kind"],
                     "macro F1": info["macro_f1"],
                     "fine-tuned from": (f"{held.get('from')} ({held.get('previous', {}).get('version')})"
                                         if held else ""),
                     "training data": f"{data.get('path', '?')} ({data.get('n', '?')} images)",
                     "trained": str(info["trained_at"] or "")[:10], "calibrated": bool(card.get("calibrated"))})
    return pd.DataFrame(rows)


def held_out_frame(card: dict) -> pd.DataFrame | None:
    """A retrained version's card -> metric rows x [its parent's version, its own], both measured on
    the same held-out human labels (training.retrain); None for a card without that comparison."""
    held = card.get("held_out_labels")
    if not held:
        return None
    prev, this = held.get("previous") or {}, held.get("this") or {}
    cols = [f"{prev.get('version', 'previous')} (before)", f"{this.get('version', card.get('version'))} (retrained)"]
    rows = [{"metric": label, cols[0]: prev.get(key), cols[1]: this.get(key)} for label, key in HELD_OUT_METRICS
            if prev.get(key) is not None or this.get(key) is not None]
    return pd.DataFrame(rows, columns=["metric", *cols])
