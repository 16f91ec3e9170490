"""TorchServe handler for the Galaxy10 classifiers (one class for B0 and B2).

The archive carries a checkpoint folder (model.pt + meta.json, see galaxy_morph.models), so the
spec, the class names and the eval transform all come from the core package, exactly as in
training. `model-config.yaml` may add a `handler:` section:

    handler:
      spec: b0                   # checked against the checkpoint's spec
      cam_layer: features.5      # Grad-CAM layer (default: galaxy_morph.models.classifier_layer)
      max_pixels: 16777216       # decoded image size limit (default: galaxy_morph.imaging.MAX_PIXELS)

Requests: raw image bytes, a multipart upload, or JSON {"image": "<base64>"}; explanations take
a target class from a JSON or multipart "target" field or the X-Target-Class header. Answers and
errors are documented in docs/api.md. Built into an archive by `python -m handlers.archive`;
tests/test_handler.py drives `handle()` directly with a fake context.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from http import HTTPStatus

import torch
from ts.torch_handler.base_handler import BaseHandler

from galaxy_morph.imaging import MAX_PIXELS, ImageError, decode_image
from galaxy_morph.models import classifier_layer, load_checkpoint
from galaxy_morph.specs import ModelSpec
from galaxy_morph.transforms import eval_transform

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
# Multipart field names tried first; otherwise the first field that carries bytes is the image.
IMAGE_FIELDS = ("data", "body", "image", "file")
OPTION_FIELDS = ("target", "rule")
TARGET_HEADER = "X-Target-Class"  # explanations: class index or name to explain


def refuse(message: str, code: int = 400) -> ImageError:
    """An error for a request the handler refuses; `code` is the HTTP status to answer with.

    (TorchServe loads the single class of this module as the handler, so no exception class here.)
    """
    err = ImageError(message)
    err.code = code
    return err


def error_code(err: ImageError) -> int:
    return getattr(err, "code", None) or (413 if "too large" in str(err) else 400)


def error_body(message: str, code: int) -> dict:
    return {"error": message, "code": code}


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
    """One request's parameters -> (image bytes, options such as target).

    Raises ImageError for a JSON body without a usable image; the image bytes themselves are
    checked by galaxy_morph.imaging.decode_image.
    """
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
            raise refuse(str(doc["error"]), int(doc.get("code", 400)))
        options.update({k: doc[k] for k in OPTION_FIELDS if k in doc})
        value = doc.get("image")
        if value is None:
            raise refuse('JSON body needs an "image" field with base64 image bytes')
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise refuse("image is not valid base64") from None
    return bytes(value), options


def load_image(row: dict, max_pixels: int = MAX_PIXELS):
    """Request parameters -> (RGB PIL image, options); ImageError says what was wrong."""
    data, options = read_request(row)
    return decode_image(data, max_pixels=max_pixels), options


def header(context, idx: int, name: str):
    """A request header, whatever case the client and TorchServe gave it."""
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return None
    name = name.lower()
    for k, v in headers.items():
        if isinstance(k, str) and k.lower() == name and not isinstance(v, dict):
            return v
    return None


class GalaxyHandler(BaseHandler):
    """Batch-aware image classifier with Grad-CAM explanations and a model card."""

    def initialize(self, context):
        properties = context.system_properties
        self.model_dir = properties.get("model_dir")
        self.manifest = context.manifest or {}
        self.device = torch.device("cpu")
        if torch.cuda.is_available() and properties.get("gpu_id") is not None:
            self.device = torch.device(f"cuda:{properties['gpu_id']}")
        model, self.meta = load_checkpoint(self.model_dir, map_location="cpu")
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.spec = ModelSpec.from_dict(self.meta["spec"])
        self.transform = eval_transform(self.spec)
        self.class_names = list(self.meta["class_names"])
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        if config.get("spec") and config["spec"] != self.spec.name:
            raise ValueError(f"model-config.yaml names spec {config['spec']!r} but the checkpoint "
                             f"holds {self.spec.name!r}")
        self.max_pixels = int(config.get("max_pixels", MAX_PIXELS))
        self.cam_layer_name = config.get("cam_layer")
        self.model_name = context.model_name
        self.version = str((self.manifest.get("model") or {}).get("modelVersion")
                           or self.meta.get("version", "1.0"))
        card = os.path.join(self.model_dir, CARD_FILE)
        self.card = None
        if os.path.isfile(card):
            with open(card) as f:
                self.card = json.load(f)
        self.initialized = True
        logger.info("%s %s ready: spec %s, %d classes", self.model_name, self.version,
                    self.spec.name, len(self.class_names))

    # --- TorchServe entry point -------------------------------------------------------------
    def handle(self, data, context):
        start = time.time()
        self.context = context
        if header(context, 0, "describe") == "True":
            return [self.describe_handle()]
        out = [None] * len(data)
        tensors, good = [], []
        for i, row in enumerate(data):
            try:
                image, options = load_image(row, self.max_pixels)
                x = self.transform(image)
                if header(context, i, "explain") == "True":
                    target = options.get("target")
                    out[i] = self.explain_one(x, header(context, i, TARGET_HEADER) if target is None else target)
                else:
                    tensors.append(x)
                    good.append(i)
            except ImageError as e:
                out[i] = self._fail(context, i, str(e), error_code(e))
            except Exception:  # one odd request must not fail the others in its batch
                logger.exception("request %d failed", i)
                out[i] = self._fail(context, i, "internal error while processing this image", 500)
        if tensors:
            probs = self.inference(torch.stack(tensors))
            for i, answer in zip(good, self.postprocess(probs)):
                out[i] = answer
        for i in range(len(out)):
            self._json(context, i)
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return [json.dumps(o) for o in out]

    def inference(self, batch, *args, **kwargs):
        with torch.inference_mode():
            x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            return torch.softmax(self.model(x).float(), dim=1).cpu()

    def postprocess(self, probs):
        return [self.answer(p.tolist()) for p in probs]

    def answer(self, p: list) -> dict:
        label = max(range(len(p)), key=p.__getitem__)
        return {"model": self.model_name, "version": self.version, "label": label,
                "class_name": self.class_names[label], "confidence": p[label],
                "probabilities": dict(zip(self.class_names, p))}

    def describe_handle(self):
        if self.card is not None:
            return self.card
        return {"model": self.model_name, "version": self.version, "spec": self.spec.to_dict(),
                "class_names": self.class_names,
                **{k: self.meta[k] for k in ("data", "metrics", "saved_at") if k in self.meta}}

    # --- explanations -----------------------------------------------------------------------
    def cam_layer(self):
        if self.cam_layer_name:
            return self.cam_layer_name, self.model.get_submodule(self.cam_layer_name)
        layer = classifier_layer(self.model)
        name = next(n for n, m in self.model.named_modules() if m is layer)
        return name, layer

    def target_index(self, target, predicted: int) -> int:
        if target is None or target == "":
            return predicted
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            if target in self.class_names:
                return self.class_names.index(target)
            raise refuse(f"unknown target class {target!r}")
        try:
            t = int(target)
        except (TypeError, ValueError):
            raise refuse(f"target must be a class index or name, got {target!r}") from None
        if not 0 <= t < len(self.class_names):
            raise refuse(f"target {t} out of range 0..{len(self.class_names) - 1}")
        return t

    def explain_one(self, x: torch.Tensor, target=None) -> dict:
        """Grad-CAM (captum LayerGradCam) for one preprocessed image, normalised to 0..1."""
        from captum.attr import LayerGradCam

        x = x.unsqueeze(0).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = torch.softmax(self.model(x).float(), dim=1)[0]
        predicted = int(probs.argmax())
        t = self.target_index(target, predicted)
        name, layer = self.cam_layer()
        with torch.enable_grad():
            cam = LayerGradCam(self.model, layer).attribute(x.clone().requires_grad_(True), target=t)
        cam = cam.detach().float()[0].sum(0).cpu()  # (h, w)
        positive = cam.clamp(min=0)
        if float(positive.max()) > 0:  # the usual Grad-CAM: evidence for the class only
            heat, relu = positive / positive.max(), True
        else:  # nothing speaks for the class: show where it speaks least against it
            span = float(cam.max() - cam.min())
            heat, relu = (cam - cam.min()) / (span or 1.0), False
        return {"model": self.model_name, "version": self.version, "target": t,
                "target_name": self.class_names[t], "predicted": predicted,
                "probability": float(probs[t]), "method": "captum.attr.LayerGradCam",
                "layer": name, "relu": relu, "input_size": self.spec.crop,
                "shape": list(heat.shape), "heatmap": [[round(float(v), 4) for v in r] for r in heat]}

    # --- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _fail(context, idx: int, message: str, code: int) -> dict:
        logger.info("request %d refused (%d): %s", idx, code, message)
        context.set_response_status(code=code, phrase=HTTPStatus(code).phrase, idx=idx)
        return error_body(message, code)

    @staticmethod
    def _json(context, idx: int):
        try:
            context.set_response_content_type(idx, "application/json")
        except (AttributeError, IndexError, TypeError):
            pass
