"""Ensemble rules: pure functions over the models' probability vectors.

Every rule returns the same structure:

    {"label": int, "confidence": float, "source": str, "probabilities": list[float], "rule": str}

`probabilities` is the distribution the answer was read from (so `confidence ==
probabilities[label]`), and `source` says which model(s) the answer comes from: "both" when the
two models' top classes agree, otherwise "b0" or "b2" (the model whose top class was chosen) or
"neither" (a combined distribution whose top class neither model had on top). Over N models
(`combine_models`): "all" when every model has the label on top (still "both" for two), the
"+"-joined names of those that do, or "neither".

- `seed`: the seed system's rule, defined for exactly two models. Agree: that label, confidence
  (p1+p2)/2 at it, source "both". Disagree: the first model's (B0's) label and confidence.
- `mean`: the average of the softmax vectors.
- `weighted`: per class c, sum_m w_m[c] p_m[c] / sum_m w_m[c] renormalised, where w_m are each
  model's validation F1 for that class (equal weights for a class no model ever got right).

    combine("mean", p_b0, p_b2)                                    # two models, as served today
    combine_models("weighted", {"b0": p0, "b2": p2, "convnext": p3}, f1={"b0": f0, ...})
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RULES = ("seed", "mean", "weighted")


def _as_probs(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError("a probability vector must be one-dimensional with at least 2 classes")
    return p


def _members(probs: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    members = {str(name): _as_probs(p) for name, p in probs.items()}
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
    if len({p.shape for p in members.values()}) != 1:
        raise ValueError("every model must give one probability per class, over the same classes")
    return members


def _answer(probs: np.ndarray, members: dict[str, np.ndarray], rule: str) -> dict:
    label = int(np.argmax(probs))
    on_top = [name for name, p in members.items() if int(np.argmax(p)) == label]
    if len(on_top) == len(members):
        source = "both" if len(members) == 2 else "all"
    elif on_top:
        source = "+".join(on_top)
    else:
        source = "neither"
    return {"label": label, "confidence": float(probs[label]), "source": source,
            "probabilities": probs.tolist(), "rule": rule}


def check_rule(rule: str, models: Sequence[str]) -> None:
    """Raise ValueError when `rule` is unknown or is not defined for these models (seed: two)."""
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)}")
    if rule == "seed" and len(models) != 2:
        raise ValueError(f"the seed rule is defined for exactly two models (B0 answers when B0 and "
                         f"B2 disagree), got {len(models)}: {', '.join(map(str, models))}; "
                         f"use the mean or weighted rule for other sets of models")


def rules_for(models: Sequence[str]) -> tuple:
    """The rules that apply to these models: `seed` is a two-model rule."""
    return RULES if len(models) == 2 else tuple(r for r in RULES if r != "seed")


def fallback_rule(models: Sequence[str]) -> str:
    """The rule of an ensemble whose run measured none (no ensemble.json): the mean, which needs
    no weights and, unlike `seed`, lets every model count."""
    return "mean"


def choose_rule(figures: Mapping[str, Mapping[str, float]]) -> str:
    """The rule with the lowest NLL on held-out galaxies (a validation split, or cross-validated
    real ones), ties broken by accuracy: figures = {rule: {"nll": ..., "accuracy": ...}}; the
    writers record them in ensemble.json as "chosen_by"."""
    return min(figures, key=lambda r: (round(figures[r]["nll"], 6), -figures[r]["accuracy"]))


def default_rule(settings: Mapping, models: Sequence[str]) -> str:
    """The rule an ensemble answers with when none is asked for: the run's measured choice
    (settings["default_rule"] from its ensemble.json, when made for these models), else the fallback."""
    rule = settings.get("default_rule")
    made_for = settings.get("rule_models")
    if rule in rules_for(models) and (made_for is None or list(made_for) == list(models)):
        return rule
    return fallback_rule(models)


def seed_rule(probs: Mapping[str, Sequence[float]]) -> dict:
    """The seed's rule over exactly two models; the first one answers when they disagree."""
    check_rule("seed", list(probs))
    members = _members(probs)
    first, second = members.values()
    if int(np.argmax(first)) == int(np.argmax(second)):
        return _answer((first + second) / 2, members, "seed")
    return _answer(first, members, "seed")


def mean_rule(probs: Mapping[str, Sequence[float]]) -> dict:
    members = _members(probs)
    return _answer(np.mean(list(members.values()), axis=0), members, "mean")


def weighted_rule(probs: Mapping[str, Sequence[float]], f1: Mapping[str, Sequence[float]]) -> dict:
    members = _members(probs)
    missing = [m for m in members if f1.get(m) is None]
    if missing:
        raise ValueError(f"the weighted rule needs every model's per-class validation F1 "
                         f"(missing: {', '.join(missing)})")
    w = [np.asarray(f1[m], dtype=np.float64) for m in members]
    p = np.array(list(members.values()))
    if any(wm.shape != p.shape[1:] for wm in w):
        raise ValueError("weights need one value per class")
    w = np.array(w)
    total = w.sum(0)
    # A class that no model ever got right on validation falls back to equal weights.
    w = np.where(total > 0, w, 1.0)
    mixed = (w * p).sum(0) / w.sum(0)
    return _answer(mixed / mixed.sum(), members, "weighted")


def combine_models(rule: str, probs: Mapping[str, Sequence[float]],
                   f1: Mapping[str, Sequence[float]] | None = None) -> dict:
    """Apply a rule by name over {model name: probabilities} (N >= 2; `seed` only for 2)."""
    if rule == "seed":
        return seed_rule(probs)
    if rule == "mean":
        return mean_rule(probs)
    if rule == "weighted":
        if f1 is None:
            raise ValueError("the weighted rule needs every model's per-class validation F1")
        return weighted_rule(probs, f1)
    raise ValueError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)}")


def ensemble_answer(answers: Mapping[str, dict], rule: str, f1: Mapping[str, Sequence[float]] | None = None,
                    name: str | None = None, calibration: Mapping | None = None) -> dict:
    """The ensemble's answer from its members' answers {spec name: answer dict}, in rule order (B0
    first): what the workflow's aggregate node and galaxy_morph.Predictor both return.
    `calibration`: a temperature fitted on this rule's combined probabilities ({"temperature", "on",
    "n"}: ensemble_calibration), applied to them as temperature scaling (the label stays)."""
    from galaxy_morph.answers import WORKFLOW_NAME, ensemble_prediction

    names = list(next(iter(answers.values()))["probabilities"])
    probs = {m: [a["probabilities"][n] for n in names] for m, a in answers.items()}
    combined = combine_models(rule, probs, f1 if rule == "weighted" else None)
    info = None
    if calibration:
        t = float(calibration["temperature"])
        z = np.log(np.clip(np.asarray(combined["probabilities"], np.float64), 1e-12, None)) / t
        q = np.exp(z - z.max())
        q /= q.sum()
        combined = {**combined, "probabilities": q.tolist(), "confidence": float(q[combined["label"]])}
        info = {"on": calibration.get("on"), "n": calibration.get("n"), "temperature": t, "rule": rule}
    return ensemble_prediction(name or WORKFLOW_NAME, combined, names, dict(answers), info)


def ensemble_calibration(settings: Mapping, rule: str, tta: bool) -> dict | None:
    """The temperature fitted on `rule`'s combined probabilities in this answering mode, from a run's
    (or a workflow archive's) ensemble.json: settings["calibration"][rule]["plain" | "tta"]."""
    return ((settings.get("calibration") or {}).get(rule) or {}).get("tta" if tta else "plain")


def combine(rule: str, p_b0, p_b2, f1_b0=None, f1_b2=None) -> dict:
    """Apply a rule by name to B0 and B2; `weighted` needs both models' per-class validation F1."""
    if rule == "weighted" and (f1_b0 is None or f1_b2 is None):
        raise ValueError("the weighted rule needs both models' per-class validation F1")
    f1 = {"b0": f1_b0, "b2": f1_b2} if rule == "weighted" else None
    return combine_models(rule, {"b0": p_b0, "b2": p_b2}, f1)
