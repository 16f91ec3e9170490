"""The Review page's logic, with no Streamlit in it: the next galaxy, its answers, their Grad-CAM, a
label from a key.

The store is labelling.store.LabelStore at $GALAXY_LABELS (default runs/labels/labels.db), filled
by `python -m labelling.queue add`; the order is labelling.queue.ranked.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dashboard import views
from galaxy_morph.answers import MODEL_NAMES
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.queue import ranked
from torchserve_ops.client import ServerError, ServerTimeout, ServerUnavailable, TorchServeError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO / "runs" / "labels" / "labels.db"
KEYS = {str(k): k for k in range(len(GALAXY10_CLASSES))}  # 0-9: the class; s skip, u undo, n not a galaxy


def store_location() -> str:
    return os.environ.get("GALAXY_LABELS") or str(DEFAULT_STORE)


# Where an authenticating proxy names the user it let in: ingress-nginx sets X-Remote-User when its
# proxy-set-headers map it to $remote_user (docs/kubernetes.md), oauth2-proxy the other two.
USER_HEADERS = ("X-Remote-User", "X-Auth-Request-User", "X-Forwarded-User")


def proxy_user(headers) -> str:
    """The first of USER_HEADERS in `headers` (st.context.headers, or any mapping; names in any
    case), "" when there is none: the Review page's default labeller name, which the labeller can
    still change."""
    found = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    return next((found[h.lower()] for h in USER_HEADERS if found.get(h.lower())), "")


def next_candidate(store, score: str, skipped: set) -> tuple[int, float] | None:
    queue = ranked(store, score, exclude=skipped)
    return queue[0] if queue else None


def model_answers(store, candidate_id: int) -> list[dict]:
    """The latest B0 and B2 answer stored for a galaxy: model, version, class, confidence."""
    latest = {a["model"]: a for a in store.answers(candidate_id) if a["model"] in MODEL_NAMES.values()}
    rows = []
    for name in MODEL_NAMES.values():
        if name in latest:
            p = latest[name]["probabilities"]
            k = max(range(len(p)), key=p.__getitem__)
            rows.append({"model": name, "version": latest[name]["version"], "class": GALAXY10_CLASSES[k],
                         "confidence": p[k]})
    return rows


def record(store, candidate_id: int, labeller: str, key: str, unsure: bool = False) -> dict:
    """A key press or click as a label: "0".."9" a class, "n" not a galaxy. Returns what was stored."""
    if key == "n":
        store.add_label(candidate_id, labeller, not_a_galaxy=True, unsure=unsure)
        return {"not_a_galaxy": True}
    if key not in KEYS:
        raise ValueError(f"unknown key {key!r}")
    store.add_label(candidate_id, labeller, KEYS[key], unsure=unsure)
    return {"class": GALAXY10_CLASSES[KEYS[key]]}


def progress(store) -> dict:
    c = store.counts()
    return {"labelled": c["labelled"], "queued": c["candidates"] - c["labelled"]}


def agreement_frame(store) -> pd.DataFrame:
    """Per human label (in the order given): the running share of labels each model's stored answer
    agreed with ("not a galaxy" labels are left out)."""
    latest = store.latest_labels()
    answers = {}
    for a in store.answers():
        if a["model"] in MODEL_NAMES.values():
            p = a["probabilities"]
            answers.setdefault(a["candidate_id"], {})[a["model"]] = max(range(len(p)), key=p.__getitem__)
    rows, hits = [], {m: 0 for m in MODEL_NAMES.values()}
    for n, label in enumerate(sorted((v for v in latest.values() if v["class_index"] is not None),
                                     key=lambda v: v["id"]), 1):
        for m in hits:
            hits[m] += answers.get(label["candidate_id"], {}).get(m) == label["class_index"]
        rows.append({"labels": n, **{m: hits[m] / n for m in hits}})
    return pd.DataFrame(rows, columns=["labels", *hits])


def gradcam_panels(explain, image, data: bytes, answers: list[dict]) -> list[dict]:
    """One {"model", "image" (the Grad-CAM overlay, or None), "caption"} per served model (B0, B2).

    `explain(model, data, target)` is common.explain; the target is the class of the model's stored
    answer in `answers` (model_answers), so the heatmap explains the answer shown beside it, or the
    model's own prediction when it has none. A failure becomes a short caption instead."""
    targets = {r["model"]: GALAXY10_CLASSES.index(r["class"]) for r in answers}
    panels, down = [], None
    for m in MODEL_NAMES.values():
        shown, why = None, f"TorchServe {down}" if down else None
        if not down:  # once the server has not answered, do not wait for it again
            try:
                e = explain(m, data, targets.get(m))
                shown = views.overlay(image, views.heatmap_array(e), views.crop_box(image.size, m))
            except ServerUnavailable as err:
                down = "did not answer in time" if isinstance(err, ServerTimeout) else "is not reachable"
                why = f"TorchServe {down}"
            except ServerError as err:
                why = "not served" if err.status == 404 else f"HTTP {err.status}"
            except (TorchServeError, ValueError) as err:
                why = f"unexpected answer ({err})"
        panels.append({"model": m, "image": shown,
                       "caption": f"Grad-CAM {m} for {e.get('target_name', '?')}" if shown is not None
                       else f"No Grad-CAM from {m}: {why}"})
    return panels
