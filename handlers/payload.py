"""Reading one prediction request: image bytes and options from whatever body a client sent.

Used by the TorchServe handler and the ensemble workflow's start node (handlers/), so both accept
the same bodies: raw image bytes, a multipart upload, or JSON {"image": "<base64>", "target": ...}.
Refusals are RequestError (or galaxy_morph.imaging.ImageError for the image bytes themselves);
both carry the HTTP `status` to answer with, and error_body() is the JSON a client gets back.
"""
from __future__ import annotations

import base64
import binascii
import json

# Multipart field names tried first; otherwise the first field that carries bytes is the image.
IMAGE_FIELDS = ("data", "body", "image", "file")
OPTION_FIELDS = ("target", "rule", "embedding", "mc_dropout")
EMBEDDING_HEADER = "X-Embedding"  # a header reaches every workflow node, a body field only the first
MC_HEADER = "X-MC-Dropout"  # number of MC-dropout passes (0: off)
RULE_HEADER = "X-Ensemble-Rule"  # the workflow's rule: seed, mean or weighted
TRUE = ("1", "true", "yes", "on")


class RequestError(ValueError):
    """A request refused before any model ran; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error_body(message: str, status: int) -> dict:
    """The JSON of every refusal: {"error": message, "code": status}."""
    return {"error": message, "code": status}


def _as_json(value):
    """A JSON body: TorchServe decodes application/json itself; bytes that look like JSON too."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray)) and value[:1] == b"{":
        try:
            parsed = json.loads(bytes(value).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def read_request(row: dict) -> tuple[bytes, dict]:
    """One request's parameters (as TorchServe hands them over) -> (image bytes, options).

    The image bytes are checked later by galaxy_morph.imaging.decode_image."""
    options = {}
    for key in OPTION_FIELDS:  # query-string parameters and multipart fields
        if key in row and not isinstance(row[key], dict):
            v = row[key]
            options[key] = v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v
    value = next((row[k] for k in IMAGE_FIELDS if row.get(k) is not None), None)
    if value is None:
        value = next((v for k, v in row.items() if k not in OPTION_FIELDS
                      and isinstance(v, (bytes, bytearray, dict, str))), b"")
    doc = _as_json(value)
    if doc is not None:
        if "error" in doc and "image" not in doc:  # an upstream workflow node already refused it
            raise RequestError(str(doc["error"]), int(doc.get("code", 400)))
        options.update({k: doc[k] for k in OPTION_FIELDS if k in doc})
        value = doc.get("image")
        if value is None:
            raise RequestError('JSON body needs an "image" field with base64 image bytes')
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("image is not valid base64") from None
    return bytes(value), options


def wants_embedding(options: dict, context, idx: int) -> bool:
    """Whether a request asked for its embedding: the X-Embedding header, a multipart field or JSON
    "embedding" (TorchServe does not pass a query string on); anything but a yes/no is refused."""
    value = options.get("embedding", header(context, idx, EMBEDDING_HEADER))
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE or text in ("0", "false", "no", "off", ""):
        return text in TRUE
    raise RequestError(f"embedding must be true or false, got {value!r}")


def mc_passes(options: dict, context, idx: int, most: int) -> int:
    """MC-dropout passes a request asked for (X-MC-Dropout header, multipart or JSON "mc_dropout"):
    0 when it did not; 2..most otherwise, anything else refused."""
    value = options.get("mc_dropout", header(context, idx, MC_HEADER))
    if value is None or str(value).strip() in ("", "0"):
        return 0
    try:
        n = int(str(value).strip())
    except ValueError:
        raise RequestError(f"mc_dropout must be a number of passes, got {value!r}") from None
    if not 2 <= n <= most:
        raise RequestError(f"mc_dropout must be 0 (off) or 2..{most} passes, got {n}")
    return n


def class_index(target, class_names) -> int | None:
    """An explanation target (class index or name, as int or text) -> index; None: the predicted."""
    if target is None or target == "":
        return None
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        if target in class_names:
            return list(class_names).index(target)
        raise RequestError(f"unknown target class {target!r}")
    try:
        t = int(target)
    except (TypeError, ValueError):
        raise RequestError(f"target must be a class index or name, got {target!r}") from None
    if not 0 <= t < len(class_names):
        raise RequestError(f"target {t} out of range 0..{len(class_names) - 1}")
    return t


def header(context, idx: int, name: str):
    """A request header from a TorchServe context, whatever case the client and TorchServe gave it."""
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return None
    name = name.lower()
    for k, v in headers.items():
        if isinstance(k, str) and k.lower() == name and not isinstance(v, dict):
            return v
    return None
