"""The Review page's logic, with no Streamlit in it: the next galaxy, its answers, their Grad-CAM, a
label from a key.

The store is labelling.store.LabelStore at $GALAXY_LABELS (default runs/labels/labels.db), filled
by `python -m labelling.queue add` and by the Classify page's uploads (queue_upload); the order
is labelling.queue.ranked.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pandas as pd

from dashboard import views
from galaxy_morph.answers import MODEL_NAMES
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.store import StoreError, probability_list
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
    # labelling.queue loads torch (MC dropout); imported here so the module's HTTP paths do not.
    from labelling.queue import ranked

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


UPLOAD_SOURCE = "dashboard-upload"


def upload_key(name: str, data: bytes) -> str:
    """The item_key of an upload: its file name and a short hash of its bytes, so that the same
    bytes are one candidate and two files with the same name are two."""
    return f"{name or 'upload'}#{hashlib.sha256(data).hexdigest()[:12]}"


def served_answers(answers) -> dict[str, dict]:
    """{served model name: answer} for B0 and B2 from what the Classify page got: one answer or a
    list of them, each a workflow answer (its members under "b0", "b2") or one model's answer."""
    found = {}
    for a in [answers] if isinstance(answers, dict) else list(answers or []):
        if not isinstance(a, dict):
            continue
        if a.get("model") in MODEL_NAMES.values():
            found[a["model"]] = a
        for spec, name in MODEL_NAMES.items():
            if isinstance(a.get(spec), dict):
                found[name] = a[spec]  # a member's "model" is the workflow's node (galaxy-ensemble__b0)
    return found


def _checked(model: str, answer) -> tuple[str, list[float], float | None]:
    """(version, probabilities in GALAXY10_CLASSES order, ood score) of an answer, or StoreError."""
    if not isinstance(answer, dict):
        raise StoreError(f"{model}'s answer is not an answer: {answer!r}")
    version = answer.get("version")
    if not isinstance(version, str) or not version.strip():
        raise StoreError(f"{model}'s answer has no version")
    try:
        probabilities = probability_list(answer.get("probabilities") or ())
    except StoreError as e:
        raise StoreError(f"{model}'s answer: {e}") from None
    ood = answer.get("ood_score")
    if ood is not None and not (isinstance(ood, (int, float)) and math.isfinite(ood)):
        raise StoreError(f"{model}'s answer has an unreadable ood_score {ood!r}")
    return version, probabilities, ood


def queue_upload(store, name: str, data: bytes, answers, ask=None) -> tuple[int, bool]:
    """Store an uploaded image as a candidate of the review queue (source UPLOAD_SOURCE, item_key
    upload_key) with B0's and B2's answers; returns (candidate id, whether it was added now).

    `answers` is what the page got from the server (served_answers); `ask(model)` answers for a
    model that is not among them (common.predict), and is not called when both are. A candidate
    already stored with both answers is left as it is. A bad answer raises StoreError before
    anything is written: a candidate without both answers would stop labelling.queue.ranked."""
    if not data:
        raise StoreError(f"{name}: empty image")
    found = served_answers(answers)
    checked = {}
    for model in MODEL_NAMES.values():
        if model not in found and ask is not None:
            found[model] = ask(model)
        if model not in found:
            raise StoreError(f"no {model} answer for {name}: the queue ranks by both models")
        checked[model] = _checked(model, found[model])
    cid = store.add_candidate(UPLOAD_SOURCE, upload_key(name, data), image=data)
    have = {a["model"] for a in store.answers(cid)}
    missing = [m for m in MODEL_NAMES.values() if m not in have]
    for model in missing:
        store.add_answer(cid, model, *checked[model])
    return cid, bool(missing)
