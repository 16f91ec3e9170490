"""Function nodes of the galaxy-ensemble workflow: pre -> (b0, b2) -> ensemble.

TorchServe runs each function in its own worker, calls it once with data=None at load time
(answer None), then with a batch of requests. Request headers reach every node; the body reaches
only `pre`, which checks the rule and the image (galaxy_morph.imaging.decode_image) and hands both
model nodes JSON {"image": base64}, or an {"error", "code"} that the model handler and `ensemble`
forward unchanged (a workflow answer is always HTTP 200 in TorchServe 0.12: see docs/api.md).

The rule comes from the `X-Ensemble-Rule` header (seed by default; mean, weighted). The
`weighted` rule reads both models' per-class validation F1 from ensemble.json, which
`python -m handlers.archive` packs into the .war next to this file.
"""
from __future__ import annotations

import base64
import json
import os
import time

from galaxy_morph.answers import WORKFLOW_NAME, ensemble_prediction
from galaxy_morph.ensemble import RULES, combine
from galaxy_morph.imaging import ImageError, decode_image
from galaxy_morph.payload import RequestError, error_body, header, read_request

RULE_HEADER = "X-Ensemble-Rule"
DEFAULT_RULE = "seed"
SETTINGS_FILE = "ensemble.json"
# TorchServe 0.12 attaches the promise for a node's answer only after queueing its job; an answer
# that comes back sooner is lost and the request stalls until the node's timeout-ms. Function
# nodes answer in ~1 ms, so they wait this long first (see WORKFLOW_MODELS in handlers/archive.py).
RACE_GUARD_S = 0.02
_settings = {}


def rule_of(context, idx: int) -> str:
    rule = (header(context, idx, RULE_HEADER) or DEFAULT_RULE).strip().lower()
    if rule not in RULES:
        raise RequestError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)} "
                     f"in the {RULE_HEADER} header")
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


def pre(data, context):
    """Start node: check the rule, hand the image bytes to both models as JSON base64."""
    if data is None:
        return None
    time.sleep(RACE_GUARD_S)
    out = []
    for i, row in enumerate(data):
        try:
            rule_of(context, i)
            image, _ = read_request(row)
            decode_image(image)  # refuse bad images here, before both models see them
            out.append(json.dumps({"image": base64.b64encode(image).decode("ascii")}))
        except (RequestError, ImageError) as e:
            out.append(json.dumps(error_body(str(e), e.status)))
    return out


def _answer(value) -> dict:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    return json.loads(value) if isinstance(value, str) else value


def ensemble(data, context):
    """Aggregate node: combine both models' probabilities with the requested rule."""
    if data is None:
        return None
    time.sleep(RACE_GUARD_S)
    conf = settings(context)
    out = []
    for i, row in enumerate(data):
        try:
            b0, b2 = _answer(row["b0"]), _answer(row["b2"])
            for a in (b0, b2):
                if "error" in a:
                    raise RequestError(a["error"], int(a.get("code", 400)))
            rule = rule_of(context, i)
            f1 = conf.get("val_per_class_f1") or {}
            if rule == "weighted" and not (f1.get("b0") and f1.get("b2")):
                raise RequestError("the weighted rule needs both models' per-class validation F1, and "
                             "this workflow archive was built without evaluation reports")
            names = list(b0["probabilities"])
            result = combine(rule, list(b0["probabilities"].values()),
                             [b2["probabilities"][n] for n in names], f1.get("b0"), f1.get("b2"))
        except (RequestError, ImageError) as e:
            out.append(json.dumps(error_body(str(e), e.status)))
            continue
        except (KeyError, TypeError, ValueError) as e:
            out.append(json.dumps(error_body(f"ensemble failed: {e}", 400)))
            continue
        out.append(json.dumps(ensemble_prediction(conf["name"], result, names, {"b0": b0, "b2": b2})))
    return out
