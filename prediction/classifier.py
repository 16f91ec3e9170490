"""In-process batch classification with the server's exact steps, for Ray model actors and tests.

    bundle = CheckpointBundle.from_run("checkpoints/demo", "ensemble")   # b0/, b2/: model.pt + meta.json
    clf = BatchClassifier(bundle, model="ensemble", rule="seed")
    answers = clf.classify([jpeg_bytes, png_bytes, pixels_array])        # one dict (or ImageError) each

Every step is the core's, as the TorchServe handler and the ensemble workflow use them:
galaxy_morph.imaging.decode_image for bytes, galaxy_morph.models.load_checkpoint, the spec's
galaxy_morph.transforms.eval_transform, galaxy_morph.models.class_probabilities, answers from
galaxy_morph.answers, and the galaxy_morph.ensemble rules. An HDF5 row (pixels) is used as the
server uses its PNG: the same 8-bit RGB pixels (galaxy_morph.imaging.to_rgb8).

A bundle carries the checkpoint files as bytes, so model actors on other machines of a Ray cluster
need no shared file system: each writes them to a private temporary folder and loads from there.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxy_morph.answers import WORKFLOW_NAME, ensemble_prediction, prediction, served_name
from galaxy_morph.calibration import CALIBRATION_FILE, calibrate
from galaxy_morph.ood import OOD_FILE, OODDetector, cheap_check, verdict
from galaxy_morph.ensemble import RULES, combine
from galaxy_morph.imaging import ImageError, decode_image, to_rgb8
from galaxy_morph.specs import PAIR
from galaxy_morph.models import META_FILE, WEIGHTS_FILE, class_probabilities, load_checkpoint

ENSEMBLE = "ensemble"
MEMBERS = PAIR  # the workflow's models, in the order galaxy_morph.ensemble expects them
REPORT_FILE = "report.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing or incomplete; the message says which file."""


def members_of(model: str) -> tuple[str, ...]:
    """The checkpoints a model choice needs: "b0" -> ("b0",), "ensemble" -> ("b0", "b2")."""
    if model == ENSEMBLE:
        return MEMBERS
    if model in MEMBERS:
        return (model,)
    raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MEMBERS + (ENSEMBLE,))}")


def val_per_class_f1(ckpt_dir: Path, meta: dict):
    """Per-class validation F1 for the weighted rule: the evaluation report, else the meta."""
    report = ckpt_dir / REPORT_FILE
    found = json.loads(report.read_text()).get("val_per_class_f1") if report.is_file() else None
    return found or (meta.get("metrics") or {}).get("val_per_class_f1")


@dataclass
class CheckpointBundle:
    """Checkpoint files as bytes: {member: {"model.pt": ..., "meta.json": ..., "calibration.json": ...
    (when there is one)}}, plus F1."""

    files: dict
    f1: dict

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, model: str) -> "CheckpointBundle":
        run = Path(run_dir)
        files, f1 = {}, {}
        for m in members_of(model):
            d = run / m
            missing = [f for f in (WEIGHTS_FILE, META_FILE) if not (d / f).is_file()]
            if missing:
                raise CheckpointError(f"no {m} checkpoint in {run}: {', '.join(str(d / f) for f in missing)} "
                                      f"missing (make demo-models, or --run DIR with b0/ and b2/)")
            files[m] = {f: (d / f).read_bytes() for f in (WEIGHTS_FILE, META_FILE, CALIBRATION_FILE, OOD_FILE)
                        if (d / f).is_file()}
            f1[m] = val_per_class_f1(d, json.loads(files[m][META_FILE]))
        return cls(files, f1)

    def meta(self, member: str) -> dict:
        return json.loads(self.files[member][META_FILE])


class LoadedModel:
    """One checkpoint, loaded by the core and run as the handler runs it."""

    def __init__(self, ckpt_dir: Path, device: str):
        import torch

        ckpt = load_checkpoint(ckpt_dir, map_location="cpu")
        self.device = torch.device(device)
        self.model = ckpt.model.to(self.device, memory_format=torch.channels_last).eval()
        self.meta, self.spec, self.transform, self.class_names = ckpt.meta, ckpt.spec, ckpt.transform, ckpt.class_names
        self.name = served_name(self.spec.name)
        self.version = ckpt.version
        self.temperature, self.calibrated = ckpt.temperature(), ckpt.calibrated()  # as served: no TTA
        self.ood = OODDetector.load(ckpt_dir)

    def probabilities(self, images, reasons=None) -> tuple[list[list[float]], list[dict], list[list[float]]]:
        """Calibrated probabilities, the OOD verdict and the embedding of each image (`reasons`:
        cheap checks)."""
        import torch

        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        probs, feats = class_probabilities(self.model, x, with_features=True)
        scores = self.ood.score(feats) if self.ood is not None else [None] * len(images)
        reasons = reasons or [None] * len(images)
        return (calibrate(probs, self.temperature).cpu().tolist(),
                [verdict(r, s, self.ood) for r, s in zip(reasons, scores)], feats.float().cpu().tolist())


def to_image(item):
    """Image bytes (decoded and checked as the server does) or an HDF5 row of pixels -> RGB PIL."""
    if isinstance(item, np.ndarray):
        from PIL import Image

        if item.ndim == 3 and item.shape[2] == 1:
            item = item[..., 0]
        return to_rgb8(Image.fromarray(np.ascontiguousarray(item, dtype=np.uint8)))
    return decode_image(bytes(item))


class BatchClassifier:
    """B0, B2 or the ensemble (seed, mean or weighted rule) over a batch of images."""

    def __init__(self, bundle: CheckpointBundle, model: str = ENSEMBLE, rule: str = "seed",
                 device: str | None = None):
        import torch

        self.check_rule(bundle, model, rule)
        self.model_choice, self.rule, self.f1 = model, rule, bundle.f1
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models = {}
        with tempfile.TemporaryDirectory(prefix="galaxy-ckpt-") as tmp:
            for m in members_of(model):
                d = Path(tmp) / m
                d.mkdir()
                for name, data in bundle.files[m].items():
                    (d / name).write_bytes(data)
                self.models[m] = LoadedModel(d, device)
        self.class_names = self.models[members_of(model)[0]].class_names

    @staticmethod
    def check_rule(bundle: CheckpointBundle, model: str, rule: str) -> None:
        """Refuse an unknown rule, or the weighted rule without both models' validation F1."""
        if rule not in RULES:
            raise ValueError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)}")
        if model == ENSEMBLE and rule == "weighted" and not all(bundle.f1.get(m) for m in MEMBERS):
            raise CheckpointError("the weighted rule needs both models' per-class validation F1 "
                                  "(RUN/b0/report.json, RUN/b2/report.json: make evaluate)")

    @property
    def workflow(self) -> bool:
        return self.model_choice == ENSEMBLE

    def classify(self, items, embeddings: bool = False) -> list:
        """One answer dict per item (the server's JSON answer), or the ImageError that refused it;
        `embeddings`: each model's answer carries its "embedding", as the server's does when asked."""
        out: list = [None] * len(items)
        images, good = [], []
        for i, item in enumerate(items):
            try:
                images.append(to_image(item))
                good.append(i)
            except ImageError as e:
                out[i] = e
        if not images:
            return out
        reasons = [cheap_check(im) for im in images]
        probs = {m: lm.probabilities(images, reasons) for m, lm in self.models.items()}
        for k, i in enumerate(good):
            answers = {m: prediction(lm.name, lm.version, probs[m][0][k], lm.class_names, lm.calibrated,
                                     probs[m][1][k], probs[m][2][k] if embeddings else None)
                       for m, lm in self.models.items()}
            if not self.workflow:
                out[i] = answers[self.model_choice]
                continue
            b0, b2 = answers["b0"], answers["b2"]
            names = list(b0["probabilities"])
            combined = combine(self.rule, list(b0["probabilities"].values()),
                               [b2["probabilities"][n] for n in names], self.f1.get("b0"), self.f1.get("b2"))
            out[i] = ensemble_prediction(WORKFLOW_NAME, combined, names, {"b0": b0, "b2": b2})
        return out
