"""The answer schema shared by the handler, the workflow, the Flask baseline, bulk and the dashboard.

    from galaxy_morph.answers import MODEL_NAMES, prediction
    prediction("galaxy-b0", "1.0", [0.1, 0.9, ...], class_names)
    # {"model", "version", "label", "class_name", "confidence", "probabilities": {class: p}}

Served names come from the model specs: spec "b0" is served as "galaxy-b0", and the ensemble
workflow over two or more of them as "galaxy-ensemble". A workflow answer is a prediction plus
"source", "rule" and each member's own prediction under its spec name ("b0", "b2", "convnext").
MODEL_NAMES is the pair served by default (the seed's B0 and B2); a run with more models serves
them too, each under served_name(spec), and the workflow lists its members in WORKFLOW_SETTINGS.
"""
from __future__ import annotations

from typing import Sequence

from galaxy_morph.specs import SPECS

MODEL_PREFIX = "galaxy-"
DEFAULT_VERSION = "1.0"  # a checkpoint or archive that names no version
WORKFLOW_NAME = f"{MODEL_PREFIX}ensemble"
WORKFLOW_SETTINGS = "ensemble.json"  # in the .war: name, members ("models") and their F1
EMBEDDING_DIGITS = 6  # significant digits: cosine distances stay exact to ~1e-6 at any scale
# The catalogue of a classification run (make classify, make predict, Predictor.predict): these,
# one probability column per class between them, then the trailing ones (source, rule: ensemble only)
CATALOGUE_BASE = ["id", "label", "class_name", "confidence", "error"]
CATALOGUE_TRAILING = ["model", "version", "in_distribution", "ood_score", "source", "rule"]
PREDICTION_KEYS = ("model", "version", "label", "class_name", "confidence", "probabilities", "calibrated",
                   "calibration", "in_distribution", "ood_score")


def served_name(spec_name: str) -> str:
    """The TorchServe model name of a spec: "b0" -> "galaxy-b0"."""
    return f"{MODEL_PREFIX}{spec_name}"


def workflow_member_name(spec_name: str) -> str:
    """What TorchServe names a model node of the ensemble workflow (its answers carry it)."""
    return f"{WORKFLOW_NAME}__{spec_name}"


MODEL_NAMES = {spec: served_name(spec) for spec in SPECS}  # {"b0": "galaxy-b0", "b2": "galaxy-b2"}


def prediction(model: str, version: str, probabilities: Sequence[float],
               class_names: Sequence[str], calibrated: bool = False, ood: dict | None = None,
               embedding: Sequence[float] | None = None, calibration: dict | None = None) -> dict:
    """The one answer dict for one image: the top class read from `probabilities`; `calibrated`
    says whether they were temperature-scaled (galaxy_morph.calibration); `ood` the
    galaxy_morph.ood verdict: {"in_distribution", "ood_score", "ood_reason" when flagged};
    `calibration`, where the temperature was fitted (galaxy_morph.calibration.provenance);
    `embedding`, when asked for, the penultimate-layer features (B0: 1280, B2: 1408 numbers)."""
    p = [float(x) for x in probabilities]
    label = max(range(len(p)), key=p.__getitem__)
    ood = ood or {"in_distribution": True, "ood_score": None}
    answer = {"model": model, "version": str(version), "label": label,
              "class_name": class_names[label], "confidence": p[label],
              "probabilities": dict(zip(class_names, p)), "calibrated": bool(calibrated),
              "calibration": calibration, **ood}
    if embedding is not None:
        answer["embedding"] = [float(f"{float(v):.{EMBEDDING_DIGITS}g}") for v in embedding]
    return answer


def ensemble_prediction(model: str, combined: dict, class_names: Sequence[str],
                        members: dict[str, dict], calibration: dict | None = None) -> dict:
    """A workflow answer from galaxy_morph.ensemble.combine()'s result and each member's answer;
    `calibration`: the temperature fitted on the combined probabilities, when there is one."""
    version = " + ".join(f"{m} {a['version']}" for m, a in members.items())
    calibrated = all(a.get("calibrated") for a in members.values())  # a rule over calibrated members
    # Not a galaxy the ensemble knows when any member says so: its answer is then no better than the
    # other member's alone, and the seed rule may be answering with the flagged one.
    flagged = {m: a.get("ood_reason", "flagged") for m, a in members.items() if a.get("in_distribution") is False}
    scores = [a["ood_score"] for a in members.values() if a.get("ood_score") is not None]
    ood = {"in_distribution": not flagged, "ood_score": max(scores) if scores else None}
    if flagged:
        ood["ood_reason"] = "; ".join(f"{m}: {r}" for m, r in flagged.items())
    if calibration is None and calibrated:  # the members' fits, combined as they are
        ons = {(a.get("calibration") or {}).get("on") for a in members.values()}
        calibration = {"on": "members", "members": sorted(o for o in ons if o)}
    answer = prediction(model, version, combined["probabilities"], class_names, calibrated or calibration is not None,
                        ood, calibration=calibration)
    return {**answer, "source": combined["source"], "rule": combined["rule"], **members}
