"""TorchServe handler for the Galaxy10 classifiers (one class serves B0, B2 and ConvNeXt).

A thin handler over the core's answer path (galaxy_morph.predictor.Member: transform, forward,
temperature, OOD verdict, embeddings, MC dropout, Grad-CAM, the answer schema): what is left here is
TorchServe's part, reading requests, status codes and the model card. The archive carries a
checkpoint folder (model.pt + meta.json), so the spec, class names and eval transform are those of
training.
handle() is BaseHandler.handle()'s path (describe, preprocess -> inference -> postprocess, the
HandlerTime metric) without subclassing it: ts.torch_handler.base_handler imports torch at import,
and a worker answering on ONNX Runtime has no other use for it (about 270 MB of private memory and
2 s of CPU per worker; torchserve_ops.worker). A batch may mix predictions and explanations, so
preprocess() decides per request. `model-config.yaml` may add a `handler:` section:

    handler:
      spec: b0                   # checked against the checkpoint's spec
      cam_layer: features.5      # Grad-CAM layer (default: galaxy_morph.models.classifier_layer)
      max_pixels: 16777216       # decoded image size limit (default: galaxy_morph.imaging.MAX_PIXELS)
      tta: false                 # true: mean over the 8 flips/quarter turns (8x the compute)
      precision: fp32            # bf16: the forward under bf16 autocast (what a GPU archive sets)
      decode: pil                # device: JPEGs decoded on the model's device (nvJPEG on a GPU)
      runtime: onnx              # the forward on ONNX Runtime (the archive's checked model.onnx); torch
      threads: 1                 # intra-op threads of the forward (default: cores / minWorkers)

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
import time
from http import HTTPStatus
from pathlib import Path

from galaxy_morph.imaging import MAX_PIXELS, ImageError, decode_image, decode_to_tensor
from galaxy_morph.ood import cheap_check
from galaxy_morph.predictor import PRECISIONS, Member
from galaxy_morph.run_files import onnx_is_current
from galaxy_morph.runtimes import default_threads
from galaxy_morph.uncertainty import MAX_MC_PASSES
from handlers.payload import (RequestError, class_index, error_body, header, mc_passes, read_request,
                              wants_embedding)

logger = logging.getLogger(__name__)
CARD_FILE = "model_card.json"
TARGET_HEADER = "X-Target-Class"  # explanations: class index or name to explain
DECODERS = ("pil", "device")


class GalaxyHandler:
    """Batch-aware image classifier with Grad-CAM explanations and a model card."""

    def __init__(self):
        self.context, self.manifest, self.initialized = None, None, False

    def initialize(self, context):
        gpu, model_dir = context.system_properties.get("gpu_id"), context.system_properties["model_dir"]
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
        if runtime == "onnx":  # ONNX Runtime's CPU provider, whatever GPU the worker was given
            device = "cpu"
        else:
            import torch

            device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        # the model's workers share the cores: each forward gets its part of them
        workers = int((getattr(context, "model_yaml_config", None) or {}).get("minWorkers") or 1)
        threads = config.get("threads") or max(1, default_threads() // workers)
        self.member = Member(model_dir, device, bool(config.get("tta", False)), precision, config.get("cam_layer"),
                             runtime, threads=threads)
        if config.get("spec") and config["spec"] != self.member.spec.name:
            raise ValueError(f"model-config.yaml names spec {config['spec']!r} but the checkpoint "
                             f"holds {self.member.spec.name!r}")
        self.member.name = context.model_name
        self.member.version = str((self.manifest.get("model") or {}).get("modelVersion") or self.member.version)
        self.device, self.max_pixels = device, int(config.get("max_pixels", MAX_PIXELS))
        card = Path(model_dir) / CARD_FILE
        self.card = json.loads(card.read_text()) if card.is_file() else None
        self.initialized = True

    def handle(self, data, context):
        """TorchServe's entry point: one answer per request of the batch."""
        start, self.context = time.time(), context
        if context.get_request_header(0, "describe") == "True":  # GET /models/NAME?customized=true
            output = [self.describe_handle()]
        else:  # explanations are decided per request in preprocess(): a batch may mix both kinds
            output = self.postprocess(self.inference(self.preprocess(data)))
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output

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
                    x = m.input(image)
                explain = header(self.context, i, "explain") == "True"
                target = options.get("target", header(self.context, i, TARGET_HEADER))
                passes = mc_passes(options, self.context, i, MAX_MC_PASSES)
                if passes and not m.has_mc_dropout:
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
            answers = self.member.answers(self.member.batch([items[i][0] for i in batch]), [items[i][3] for i in batch],
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
