"""TorchServe handler for the Galaxy10 classifiers (one class serves B0 and B2).

A thin BaseHandler subclass over the core package: the archive carries a checkpoint folder
(model.pt + meta.json), so the spec, class names and eval transform are those of training.
BaseHandler.handle() drives it (describe, timing); a batch may mix predictions and explanations,
so preprocess() decides per request. `model-config.yaml` may add a `handler:` section:

    handler:
      spec: b0                   # checked against the checkpoint's spec
      cam_layer: features.5      # Grad-CAM layer (default: galaxy_morph.models.classifier_layer)
      max_pixels: 16777216       # decoded image size limit (default: galaxy_morph.imaging.MAX_PIXELS)
      tta: false                 # true: mean over the 8 flips/quarter turns (8x the compute)
      precision: fp32            # bf16: the forward under bf16 autocast (what a GPU archive sets)
      decode: pil                # device: JPEGs decoded on the model's device (nvJPEG on a GPU)

`python -m torchserve_ops.archive --device cuda` writes the GPU settings (torchserve_ops/archive.py DEVICE_CONFIG).

Bodies: handlers.payload; the X-Embedding: true header (it reaches the workflow's members too), a
multipart field embedding=true or JSON "embedding": true adds the penultimate-layer "embedding" to
an answer; X-MC-Dropout: N (2..64, or the field mc_dropout) adds N MC-dropout passes of the head
and their BALD score as "mc_dropout" (docs/api.md); answers: galaxy_morph.answers.prediction(); a refused request gets
{"error", "code"} with the status its error type carries (docs/api.md). Built by
`python -m torchserve_ops.archive`; tests/test_handler.py drives handle() with a real ts Context.
"""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from galaxy_morph.answers import prediction
from galaxy_morph.calibration import calibrate
from galaxy_morph.ood import OODDetector, cheap_check, verdict
from galaxy_morph.imaging import MAX_PIXELS, ImageError, decode_image, decode_to_tensor
from galaxy_morph.models import (MAX_MC_PASSES, class_probabilities, classifier_layer, head_dropout_rate,
                                 load_checkpoint, mc_dropout_probabilities)
from galaxy_morph.uncertainty import mutual_information
from handlers.payload import (RequestError, class_index, error_body, header, mc_passes, read_request,
                              wants_embedding)
from galaxy_morph.transforms import eval_tensor_transform

logger = logging.getLogger(__name__)
CARD_FILE = "model_card.json"
TARGET_HEADER = "X-Target-Class"  # explanations: class index or name to explain
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
DECODERS = ("pil", "device")


class GalaxyHandler(BaseHandler):
    """Batch-aware image classifier with Grad-CAM explanations and a model card."""

    def initialize(self, context):
        gpu, model_dir = context.system_properties.get("gpu_id"), context.system_properties["model_dir"]
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.manifest = context.manifest or {}
        ckpt = load_checkpoint(model_dir, map_location="cpu")
        self.model = ckpt.model.to(self.device, memory_format=torch.channels_last).eval()
        self.meta, self.spec, self.transform, self.class_names = ckpt.meta, ckpt.spec, ckpt.transform, ckpt.class_names
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        if config.get("spec") and config["spec"] != self.spec.name:
            raise ValueError(f"model-config.yaml names spec {config['spec']!r} but the checkpoint "
                             f"holds {self.spec.name!r}")
        self.max_pixels = int(config.get("max_pixels", MAX_PIXELS))
        self.tta = bool(config.get("tta", False))
        self.temperature, self.calibrated = ckpt.temperature(self.tta), ckpt.calibrated(self.tta)
        self.ood = OODDetector.load(model_dir)  # None: only the cheap checks flag inputs
        precision, self.decoder = config.get("precision", "fp32"), config.get("decode", "pil")
        if precision not in PRECISIONS or self.decoder not in DECODERS:
            raise ValueError(f"model-config.yaml handler: precision must be one of {', '.join(PRECISIONS)} "
                             f"and decode one of {', '.join(DECODERS)}, got {precision!r} and {self.decoder!r}")
        self.autocast_dtype = PRECISIONS[precision]
        self.tensor_transform = eval_tensor_transform(self.spec)
        self.cam_layer_name = config.get("cam_layer") or next(
            n for n, m in self.model.named_modules() if m is classifier_layer(self.model))
        self.model_name = context.model_name
        self.version = str((self.manifest.get("model") or {}).get("modelVersion")
                           or self.meta.get("version", "1.0"))
        card = Path(model_dir) / CARD_FILE
        self.card = json.loads(card.read_text()) if card.is_file() else None
        self.initialized = True

    def _is_explain(self):
        return False  # decided per request in preprocess(): a batch may mix both kinds

    def preprocess(self, data):
        """Per request (eval-transformed image, explain?, explanation target, cheap OOD check,
        embedding?) or the RequestError / ImageError that refuses it. (TorchServe wants one class in
        this module: plain tuples.)"""
        items = []
        for i, row in enumerate(data):
            try:
                raw, options = read_request(row)
                if self.decoder == "device":
                    image = decode_to_tensor(raw, self.max_pixels, self.device)
                    x = self.tensor_transform(image)
                else:
                    image = decode_image(raw, self.max_pixels)
                    x = self.transform(image)
                explain = header(self.context, i, "explain") == "True"
                target = options.get("target", header(self.context, i, TARGET_HEADER))
                passes = mc_passes(options, self.context, i, MAX_MC_PASSES)
                if passes and head_dropout_rate(self.model) <= 0:
                    raise RequestError(f"{self.model_name} was trained without dropout before its classifier: "
                                       f"MC-dropout passes would all be equal")
                items.append((x, explain, class_index(target, self.class_names) if explain else None,
                              None if explain else cheap_check(image), wants_embedding(options, self.context, i),
                              passes))
            except (RequestError, ImageError) as e:
                items.append(e)
            except Exception:  # one odd request must not fail the others in its batch
                logger.exception("request %d failed", i)
                items.append(RequestError("internal error while processing this image", 500))
        return items

    def inference(self, items, *args, **kwargs):
        """(probabilities, OOD verdict, embedding or None, MC-dropout dict or None) for predictions, a
        Grad-CAM dict for explanations, errors as is."""
        out = list(items)
        batch = [i for i, it in enumerate(items) if isinstance(it, tuple) and not it[1]]
        if batch:
            x = torch.stack([items[i][0] for i in batch]).to(self.device)
            probs, feats = class_probabilities(self.model, x, self.tta, self.autocast_dtype, with_features=True)
            probs = calibrate(probs, self.temperature)
            scores = self.ood.score(feats) if self.ood is not None else [None] * len(batch)
            feats = feats.float().cpu()
            for k, (i, p, s) in enumerate(zip(batch, probs.cpu().tolist(), scores)):
                out[i] = (p, verdict(items[i][3], s, self.ood), feats[k].tolist() if items[i][4] else None,
                          self.mc_dropout(feats[k:k + 1], items[i][5]) if items[i][5] else None)
        for i, it in enumerate(items):
            if isinstance(it, tuple) and it[1]:
                out[i] = self.explain_one(it[0], it[2])
        return out

    def postprocess(self, results):  # -> one JSON answer per request, refusals with their status
        answers = []
        for i, r in enumerate(results):
            if isinstance(r, (RequestError, ImageError)):
                logger.info("request %d refused (%d): %s", i, r.status, r)
                self.context.set_response_status(code=r.status, phrase=HTTPStatus(r.status).phrase, idx=i)
                r = error_body(str(r), r.status)
            elif isinstance(r, tuple):
                probs, ood, embedding, mc = r
                r = prediction(self.model_name, self.version, probs, self.class_names, self.calibrated, ood, embedding)
                if mc:
                    r["mc_dropout"] = mc
            self.context.set_response_content_type(i, "application/json")
            answers.append(json.dumps(r))
        return answers

    def describe_handle(self):  # the model card, for GET /models/NAME?customized=true
        return self.card or {"model": self.model_name, "version": self.version, "spec": self.spec.to_dict(),
                "class_names": self.class_names,
                **{k: self.meta[k] for k in ("data", "metrics", "saved_at") if k in self.meta}}

    def mc_dropout(self, features: torch.Tensor, passes: int) -> dict:
        """{"passes", "bald", "probabilities": passes x classes} for one image's features."""
        samples = mc_dropout_probabilities(self.model, features.to(self.device), passes, self.temperature)[:, 0]
        samples = samples.cpu().numpy()
        return {"passes": passes, "bald": float(mutual_information(samples)),
                "probabilities": [[float(f"{v:.6g}") for v in row] for row in samples]}

    def explain_one(self, x: torch.Tensor, target: int | None) -> dict:
        """Grad-CAM (captum LayerGradCam) for one preprocessed image, normalised to 0..1."""
        from captum.attr import LayerGradCam

        x = x.unsqueeze(0).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = torch.softmax(self.model(x).float(), dim=1)[0]
        predicted = int(probs.argmax())
        t = predicted if target is None else target  # None: explain the predicted class
        layer = self.model.get_submodule(self.cam_layer_name)
        with torch.enable_grad():
            cam = LayerGradCam(self.model, layer).attribute(x.clone().requires_grad_(True), target=t)
        cam = cam.detach().float()[0].sum(0).cpu()  # (h, w)
        positive = cam.clamp(min=0)
        if float(positive.max()) > 0:  # the usual Grad-CAM: evidence for the class only
            heat, relu = positive / positive.max(), True
        else:  # nothing speaks for the class: show where it speaks least against it
            heat, relu = (cam - cam.min()) / (float(cam.max() - cam.min()) or 1.0), False
        return {"model": self.model_name, "version": self.version, "target": t,
                "target_name": self.class_names[t], "predicted": predicted,
                "probability": float(probs[t]), "method": "captum.attr.LayerGradCam",
                "layer": self.cam_layer_name, "relu": relu, "input_size": self.spec.crop,
                "shape": list(heat.shape), "heatmap": [[round(float(v), 4) for v in r] for r in heat]}
