"""TorchServe handler for the Galaxy10 classifiers (one class serves B0, B2 and ConvNeXt).

A thin BaseHandler subclass over the core's answer path (galaxy_morph.predictor.Member: transform,
forward, temperature, OOD verdict, embeddings, MC dropout, Grad-CAM, the answer schema): what is
left here is TorchServe's part, reading requests, status codes and the model card. The archive
carries a checkpoint folder (model.pt + meta.json), so the spec, class names and eval transform
are those of training.
BaseHandler.handle() drives it (describe, timing); a batch may mix predictions and explanations,
so preprocess() decides per request. `model-config.yaml` may add a `handler:` section:

    handler:
      spec: b0                   # checked against the checkpoint's spec
      cam_layer: features.5      # Grad-CAM layer (default: galaxy_morph.models.classifier_layer)
      max_pixels: 16777216       # decoded image size limit (default: galaxy_morph.imaging.MAX_PIXELS)
      tta: false                 # true: mean over the 8 flips/quarter turns (8x the compute)
      precision: fp32            # bf16: the forward under bf16 autocast (what a GPU archive sets)
      decode: pil                # device: JPEGs decoded on the model's device (nvJPEG on a GPU)
      runtime: onnx              # the forward on ONNX Runtime (the archive's checked model.onnx); torch
      threads: 2                 # intra-op threads of the forward (default: torch's)

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

from galaxy_morph.imaging import MAX_PIXELS, ImageError, decode_image, decode_to_tensor
from galaxy_morph.models import MAX_MC_PASSES, head_dropout_rate
from galaxy_morph.ood import cheap_check
from galaxy_morph.predictor import PRECISIONS, Member
from galaxy_morph.run_files import onnx_is_current
from handlers.payload import (RequestError, class_index, error_body, header, mc_passes, read_request,
                              wants_embedding)

logger = logging.getLogger(__name__)
CARD_FILE = "model_card.json"
TARGET_HEADER = "X-Target-Class"  # explanations: class index or name to explain
DECODERS = ("pil", "device")


class GalaxyHandler(BaseHandler):
    """Batch-aware image classifier with Grad-CAM explanations and a model card."""

    def initialize(self, context):
        gpu, model_dir = context.system_properties.get("gpu_id"), context.system_properties["model_dir"]
        device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.manifest = context.manifest or {}
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        precision, self.decoder = config.get("precision", "fp32"), config.get("decode", "pil")
        if precision not in PRECISIONS or self.decoder not in DECODERS:
            raise ValueError(f"model-config.yaml handler: precision must be one of {', '.join(PRECISIONS)} "
                             f"and decode one of {', '.join(DECODERS)}, got {precision!r} and {self.decoder!r}")
        runtime = config.get("runtime", "torch")
        if runtime == "onnx" and not onnx_is_current(model_dir):
            raise ValueError(f"model-config.yaml asks for runtime onnx, but the archive holds no model.onnx "
                             f"checked against its weights (python -m torchserve_ops.archive makes one)")
        self.member = Member(model_dir, device, bool(config.get("tta", False)), precision, config.get("cam_layer"),
                             runtime, threads=config.get("threads"))
        if config.get("spec") and config["spec"] != self.member.spec.name:
            raise ValueError(f"model-config.yaml names spec {config['spec']!r} but the checkpoint "
                             f"holds {self.member.spec.name!r}")
        self.member.name = context.model_name
        self.member.version = str((self.manifest.get("model") or {}).get("modelVersion") or self.member.version)
        self.device, self.max_pixels = device, int(config.get("max_pixels", MAX_PIXELS))
        card = Path(model_dir) / CARD_FILE
        self.card = json.loads(card.read_text()) if card.is_file() else None
        self.initialized = True

    def _is_explain(self):
        return False  # decided per request in preprocess(): a batch may mix both kinds

    def preprocess(self, data):
        """Per request (transformed image, explain?, explanation target, cheap OOD check, embedding?,
        MC-dropout passes) or the RequestError / ImageError that refuses it. (TorchServe wants one
        class in this module: plain tuples.)"""
        m, items = self.member, []
        for i, row in enumerate(data):
            try:
                raw, options = read_request(row)
                if self.decoder == "device":
                    image = decode_to_tensor(raw, self.max_pixels, self.device)
                    x = m.tensor_transform(image)
                else:
                    image = decode_image(raw, self.max_pixels)
                    x = m.transform(image)
                explain = header(self.context, i, "explain") == "True"
                target = options.get("target", header(self.context, i, TARGET_HEADER))
                passes = mc_passes(options, self.context, i, MAX_MC_PASSES)
                if passes and head_dropout_rate(m.model) <= 0:
                    raise RequestError(f"{m.name} was trained without dropout before its classifier: "
                                       f"MC-dropout passes would all be equal")
                items.append((x, explain, class_index(target, m.class_names) if explain else None,
                              None if explain else cheap_check(image), wants_embedding(options, self.context, i),
                              passes))
            except (RequestError, ImageError) as e:
                items.append(e)
            except Exception:  # one odd request must not fail the others in its batch
                logger.exception("request %d failed", i)
                items.append(RequestError("internal error while processing this image", 500))
        return items

    def inference(self, items, *args, **kwargs):
        """The core's answers for predictions, a Grad-CAM dict for explanations, errors as is."""
        out = list(items)
        batch = [i for i, it in enumerate(items) if isinstance(it, tuple) and not it[1]]
        if batch:
            answers = self.member.answers(torch.stack([items[i][0] for i in batch]), [items[i][3] for i in batch],
                                          [items[i][4] for i in batch], [items[i][5] for i in batch])
            for i, a in zip(batch, answers):
                out[i] = a
        for i, it in enumerate(items):
            if isinstance(it, tuple) and it[1]:
                out[i] = self.member.explain(it[0], it[2])
        return out

    def postprocess(self, results):  # -> one JSON answer per request, refusals with their status
        answers = []
        for i, r in enumerate(results):
            if isinstance(r, (RequestError, ImageError)):
                logger.info("request %d refused (%d): %s", i, r.status, r)
                self.context.set_response_status(code=r.status, phrase=HTTPStatus(r.status).phrase, idx=i)
                r = error_body(str(r), r.status)
            self.context.set_response_content_type(i, "application/json")
            answers.append(json.dumps(r))
        return answers

    def describe_handle(self):  # the model card, for GET /models/NAME?customized=true
        m = self.member
        return self.card or {"model": m.name, "version": m.version, "spec": m.spec.to_dict(),
                             "class_names": m.class_names,
                             **{k: m.meta[k] for k in ("data", "metrics", "saved_at") if k in m.meta}}
