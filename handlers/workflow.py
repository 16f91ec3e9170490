"""Function nodes of the galaxy-ensemble workflow: pre -> (b0, b2, ...) -> ensemble.

TorchServe runs each function in its own worker, calls it once with data=None at load time
(answer None), then with a batch of requests. Request headers reach every node; the body reaches
only `pre`, which checks the rule and the image's header (galaxy_morph.imaging.probe_image: format,
size; a truncated image is refused by the models' decode, and that refusal forwarded) and hands every
model node JSON {"image": base64}, or an {"error", "code"} that the model handler and `ensemble`
forward unchanged (a workflow answer is always HTTP 200 in TorchServe 0.12: see docs/api.md).

The members (the model nodes, B0 first) and their per-class validation F1 come from ensemble.json,
which `python -m torchserve_ops.archive` packs into the .war next to this file; an archive without a
member list is the B0 + B2 pair. The rule comes from the `X-Ensemble-Rule` header: seed, mean or
weighted; by default the run's measured rule ("default_rule" in ensemble.json, chosen by
training.evaluate: the lowest NLL on validation), else mean. `seed` is a two-model rule: a
workflow of three or more members refuses it in `pre` with a 400 body, before any model runs.
The answer is galaxy_morph.ensemble.ensemble_answer's, the same as galaxy_morph.Predictor's.
"""
from __future__ import annotations

import base64
import json
import os

from galaxy_morph.answers import WORKFLOW_NAME, WORKFLOW_SETTINGS
from galaxy_morph.ensemble import RULES, check_rule, default_rule, ensemble_answer, ensemble_calibration
from galaxy_morph.imaging import ImageError, probe_image
from galaxy_morph.specs import PAIR  # the members of an ensemble.json without a "models" entry
from handlers.payload import RequestError, error_body, header, read_request

from handlers.payload import RULE_HEADER  # noqa: F401  (re-exported)
SETTINGS_FILE = WORKFLOW_SETTINGS
_settings = {}


def rule_of(context, idx: int, members=PAIR, conf: dict | None = None) -> str:
    """The requested rule, or the archive's default; RequestError when it cannot combine them."""
    rule = (header(context, idx, RULE_HEADER) or default_rule(conf or {}, members)).strip().lower()
    if rule not in RULES:
        raise RequestError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)} "
                     f"in the {RULE_HEADER} header")
    try:
        check_rule(rule, members)
    except ValueError as e:
        raise RequestError(str(e)) from None
    return rule


def settings(context) -> dict:
    """ensemble.json from the workflow archive: name, version and per-class F1 of each model."""
    if not _settings:
        dirs = [(getattr(context, "system_properties", None) or {}).get("model_dir"),
                os.path.dirname(os.path.abspath(__file__))]
        for d in dirs:
            if d and os.path.isfile(os.path.join(d, SETTINGS_FILE)):
                with open(os.path.join(d, SETTINGS_FILE)) as f:
                    _settings.update(json.load(f))
                break
        _settings.setdefault("name", WORKFLOW_NAME)
    return _settings


def members_of(conf: dict) -> list[str]:
    """The workflow's model nodes, in the order the rules take them (B0 first)."""
    return list(conf.get("models") or PAIR)


def pre(data, context):
    """Start node: check the rule, hand the image bytes to every model as JSON base64."""
    if data is None:
        return None
    conf = settings(context)
    members = members_of(conf)
    out = []
    for i, row in enumerate(data):
        try:
            rule_of(context, i, members, conf)
            image, _ = read_request(row)
            probe_image(image)  # refuse what is no image here; the pixels are decoded once, by each model
            out.append(json.dumps({"image": base64.b64encode(image).decode("ascii")}))
        except (RequestError, ImageError) as e:
            out.append(json.dumps(error_body(str(e), e.status)))
    return out


def _answer(value) -> dict:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    return json.loads(value) if isinstance(value, str) else value


def ensemble(data, context):
    """Aggregate node: combine every member's probabilities with the requested rule."""
    if data is None:
        return None
    conf = settings(context)
    members = members_of(conf)
    out = []
    for i, row in enumerate(data):
        try:
            answers = {m: _answer(row[m]) for m in members}
            for a in answers.values():
                if "error" in a:
                    raise RequestError(a["error"], int(a.get("code", 400)))
            rule = rule_of(context, i, members, conf)
            f1 = conf.get("val_per_class_f1") or {}
            missing = [m for m in members if not f1.get(m)]
            if rule == "weighted" and missing:
                raise RequestError(f"the weighted rule needs every model's per-class validation F1 "
                                   f"(missing: {', '.join(missing)}), and this workflow archive was "
                                   f"built without their evaluation reports")
            result = ensemble_answer(answers, rule, f1, conf["name"],
                                     ensemble_calibration(conf, rule, bool(conf.get("tta"))))
        except (RequestError, ImageError) as e:
            out.append(json.dumps(error_body(str(e), e.status)))
            continue
        except (KeyError, TypeError, ValueError) as e:
            out.append(json.dumps(error_body(f"ensemble failed: {e}", 400)))
            continue
        out.append(json.dumps(result))
    return out
