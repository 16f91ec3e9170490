"""The one answer path: image -> the answer the server gives, in-process.

    from galaxy_morph import Predictor
    predictor = Predictor.from_run("checkpoints/demo")        # the run's models as an ensemble
    predictor.answer(jpeg_bytes)             # the JSON /wfpredict/galaxy-ensemble answers, as a dict
    predictor.answer_batch([png_bytes, pil_image, uint8_array], embeddings=True, mc_passes=20)
    predictor.explain(jpeg_bytes)            # Grad-CAM of each model, predicted from the same probabilities
    predictor.predict("samples/galaxy10_decals")   # pandas.DataFrame, make classify's columns

The TorchServe handler answers with a `Member` (one checkpoint), the workflow combines the members'
answers with galaxy_morph.ensemble, and Ray's model actors, `make queue`, `make similar`,
`training.evaluate` and `make retrain`'s comparison call a `Predictor`: one set of steps (decode,
the spec's transform, forward with optional TTA, the fitted temperature for that mode, the OOD
verdict, embeddings, MC dropout, the ensemble rule, the answer schema) wherever an answer is made.

A run folder holds one checkpoint folder per model (b0/, b2/, convnext/...) and may hold
ensemble.json, the ensemble settings that `training.evaluate` writes: the default rule, chosen as
the rule with the lowest NLL on the validation split (`choose_rule`), with every rule's figures.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
import numpy as np

from galaxy_morph.answers import (CATALOGUE_BASE, CATALOGUE_TRAILING, WORKFLOW_NAME,
                                  prediction, served_name, workflow_member_name)
from galaxy_morph.calibration import calibrate
from galaxy_morph.checkpoint import read_checkpoint
from galaxy_morph.ensemble import RULES, check_rule, default_rule, ensemble_answer, ensemble_calibration
from galaxy_morph.imaging import ImageError, decode_image, to_rgb8
from galaxy_morph.ood import OODDetector, cheap_check, verdict
from galaxy_morph.run_files import (ENSEMBLE, ONNX_FILE, REPORT_FILE, RUNTIMES, SETTINGS_FILE,  # noqa: F401
                                    WEIGHTS_FILE, CheckpointError, read_settings, run_members, val_per_class_f1)
from galaxy_morph.specs import ALL_SPECS, PAIR
from galaxy_morph.uncertainty import mutual_information

PRECISIONS = {"fp32": None, "bf16": "bfloat16"}  # the forward's autocast dtype, a torch dtype's name
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".fits", ".fit")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def to_image(item):
    """Image bytes (decoded and checked as the server does), a PIL image, or pixels (H x W x 3
    uint8, an HDF5 row) -> an 8-bit RGB PIL image; ImageError when it is not an image."""
    from PIL import Image

    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[..., 0]
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (3, 4)):
            raise ImageError(f"pixels must be H x W x 3 (or 4) or H x W, got shape {item.shape}")
        return to_rgb8(Image.fromarray(np.ascontiguousarray(item, dtype=np.uint8)))
    if isinstance(item, Image.Image):
        return to_rgb8(item)
    if isinstance(item, (str, os.PathLike)):
        item = Path(item).read_bytes()
    if not isinstance(item, (bytes, bytearray, memoryview)):
        raise ImageError(f"not an image: {type(item).__name__}")
    return decode_image(bytes(item))


def _numpy(x) -> np.ndarray:
    """A torch tensor (any device) or an array -> a numpy array."""
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class Member:
    """One checkpoint answering as its served archive does: `answers()` for a batch of
    transformed images, `explain()` for one. `version` may be overridden (the archive's).
    On onnx it answers with numpy and ONNX Runtime and imports torch only for what needs the torch
    model (Grad-CAM, MC dropout's head): a TorchServe worker that only answers never loads it."""

    def __init__(self, ckpt_dir: str | os.PathLike, device=None, tta: bool = False, precision: str = "fp32",
                 cam_layer: str | None = None, runtime: str = "torch", onnx: bytes | None = None,
                 threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.ckpt_dir, self.runtime, self.precision = Path(ckpt_dir), runtime, precision
        if runtime == "onnx":
            kind = str(device or "cpu").split(":")[0]
            if kind != "cpu" or PRECISIONS[precision] is not None:
                raise ValueError(f"the onnx runtime answers on the CPU in fp32, not on {kind} "
                                 f"in {precision}: use runtime torch")
            from galaxy_morph.runtimes import OnnxModel, ensure_onnx

            ckpt, self._device, self._model = read_checkpoint(ckpt_dir), "cpu", None
            if onnx is None:  # the checked export beside the weights, made now if missing or stale
                ensure_onnx(ckpt_dir)
                onnx = self.ckpt_dir / ONNX_FILE
            # the backbone and head; the torch model is built when first needed (Grad-CAM, MC dropout)
            self.forward = OnnxModel(onnx, threads)
        else:
            import torch

            from galaxy_morph.models import load_checkpoint

            ckpt = load_checkpoint(ckpt_dir, map_location="cpu")
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self._model = ckpt.model.to(self._device, memory_format=torch.channels_last)
            self.forward = self._model
        self.meta, self.spec, self.class_names = ckpt.meta, ckpt.spec, ckpt.class_names
        self.transform = ckpt.transform
        self.name, self.version = served_name(self.spec.name), ckpt.version
        self.tta = bool(tta)
        self.temperature, self.calibrated = ckpt.temperature(self.tta), ckpt.calibrated(self.tta)
        self.calibration = ckpt.calibration_info(self.tta)  # where the temperature was fitted
        self.ood = OODDetector.load(ckpt_dir)  # None: only the cheap checks flag inputs
        self.f1 = val_per_class_f1(ckpt_dir, self.meta)
        self._cam_layer = cam_layer

    @property
    def device(self):
        """The torch device of the torch model (torch is imported when asked)."""
        import torch

        if not isinstance(self._device, torch.device):
            self._device = torch.device(self._device)
        return self._device

    @property
    def autocast_dtype(self):
        name = PRECISIONS[self.precision]
        if name is None:
            return None
        import torch

        return getattr(torch, name)

    @property
    def model(self):
        """The torch model (eval mode, on the device)."""
        if self._model is None:
            import torch

            from galaxy_morph.models import load_checkpoint

            model = load_checkpoint(self.ckpt_dir, map_location="cpu").model
            self._model = model.to(self.device, memory_format=torch.channels_last)
        return self._model

    @property
    def has_mc_dropout(self) -> bool:
        """Whether the head has dropout before its classifier (MC-dropout passes differ)."""
        from galaxy_morph.models import head_dropout_rate

        return head_dropout_rate(self.model) > 0

    @property
    def cam_layer(self) -> str:
        if self._cam_layer is None:
            from galaxy_morph.models import classifier_layer

            self._cam_layer = next(n for n, m in self.model.named_modules() if m is classifier_layer(self.model))
        return self._cam_layer

    @functools.cached_property
    def tensor_transform(self):
        """The eval transform on a uint8 CHW tensor (images decoded on the device)."""
        from galaxy_morph.transforms import eval_tensor_transform

        return eval_tensor_transform(self.spec)

    def input(self, image):
        """A PIL image -> the normalised image this model reads: a numpy array on onnx, else a tensor."""
        return self.transform.array(image) if self.runtime == "onnx" else self.transform(image)

    def batch(self, inputs):
        """input()s (or tensors, as the device decoder's transform makes) -> one batch."""
        if self.runtime == "onnx":
            return np.stack([_numpy(x) for x in inputs])
        import torch

        return torch.stack([torch.as_tensor(x) for x in inputs])

    def inputs(self, images):
        """PIL images -> the normalised batch this model reads."""
        return self.batch([self.input(im) for im in images])

    def probabilities(self, x):
        """(calibrated probabilities, penultimate features of the images as given) of a batch (a
        tensor or an array): numpy arrays on onnx, tensors on torch."""
        if self.runtime == "onnx":
            probs, feats = self.forward.class_probabilities(_numpy(x).astype(np.float32, copy=False), self.tta)
        else:
            import torch

            from galaxy_morph.models import class_probabilities

            probs, feats = class_probabilities(self.forward, torch.as_tensor(x).to(self.device), self.tta,
                                               self.autocast_dtype, with_features=True)
        return calibrate(probs, self.temperature), feats

    def answers(self, x, reasons=None, embeddings=False, mc_passes=0) -> list[dict]:
        """One answer per image of a transformed batch. `reasons`: the cheap OOD checks of the
        decoded images; `embeddings` and `mc_passes`: one value for all, or one per image."""
        n = len(x)
        reasons = reasons or [None] * n
        embeddings = embeddings if isinstance(embeddings, (list, tuple)) else [embeddings] * n
        mc_passes = mc_passes if isinstance(mc_passes, (list, tuple)) else [mc_passes] * n
        probs, feats = self.probabilities(x)
        scores = self.ood.score(feats) if self.ood is not None else [None] * n
        feats_np = _numpy(feats)
        out = []
        for k, p in enumerate(_numpy(probs).tolist()):
            a = prediction(self.name, self.version, p, self.class_names, self.calibrated,
                           verdict(reasons[k], scores[k], self.ood), feats_np[k].tolist() if embeddings[k] else None,
                           self.calibration)
            if mc_passes[k]:
                a["mc_dropout"] = self.mc_dropout(feats[k:k + 1], mc_passes[k])
            out.append(a)
        return out

    def mc_dropout(self, features, passes: int) -> dict:
        """{"passes", "bald", "probabilities": passes x classes} for one image's features."""
        import torch

        from galaxy_morph.models import mc_dropout_probabilities

        if not self.has_mc_dropout:
            raise ValueError(f"{self.name} was trained without dropout before its classifier: "
                             f"MC-dropout passes would all be equal")
        features = torch.as_tensor(features).to(self.device)
        samples = mc_dropout_probabilities(self.model, features, passes, self.temperature)[:, 0]
        samples = samples.cpu().numpy()
        return {"passes": passes, "bald": float(mutual_information(samples)),
                "probabilities": [[float(f"{v:.6g}") for v in row] for row in samples]}

    def explain(self, x, target: int | None = None) -> dict:
        """Grad-CAM (captum LayerGradCam) for one transformed image, normalised to 0..1; "predicted"
        and "probability" come from the answer's own (calibrated, TTA when on) probabilities."""
        import torch
        from captum.attr import LayerGradCam

        x = torch.as_tensor(x).unsqueeze(0).to(self.device).contiguous(memory_format=torch.channels_last)
        probs = _numpy(self.probabilities(x)[0])[0]
        predicted = int(probs.argmax())
        t = predicted if target is None else int(target)  # None: explain the predicted class
        layer = self.model.get_submodule(self.cam_layer)
        with torch.enable_grad():
            cam = LayerGradCam(self.model, layer).attribute(x.clone().requires_grad_(True), target=t)
        cam = cam.detach().float()[0].sum(0).cpu()  # (h, w)
        positive = cam.clamp(min=0)
        if float(positive.max()) > 0:  # the usual Grad-CAM: evidence for the class only
            heat, relu = positive / positive.max(), True
        else:  # nothing speaks for the class: show where it speaks least against it
            heat, relu = (cam - cam.min()) / (float(cam.max() - cam.min()) or 1.0), False
        return {"model": self.name, "version": self.version, "target": t,
                "target_name": self.class_names[t], "predicted": predicted,
                "probability": float(probs[t]), "calibrated": self.calibrated,
                "method": "captum.attr.LayerGradCam", "layer": self.cam_layer, "relu": relu,
                "input_size": self.spec.crop, "shape": list(heat.shape),
                "heatmap": [[round(float(v), 4) for v in r] for r in heat]}


class Predictor:
    """One model of a run, or the ensemble of its members, answering as the server does."""

    def __init__(self, members: dict[str, Member], model: str = ENSEMBLE, rule: str | None = None,
                 settings: dict | None = None):
        self.members, self.model = dict(members), model
        self.settings = settings or {}
        names = list(self.members)
        if model == ENSEMBLE:
            if len(names) < 2:
                raise CheckpointError(f"an ensemble needs two or more models, got {', '.join(names) or 'none'}")
            for m, mem in self.members.items():
                mem.name = workflow_member_name(m)  # as the workflow's model nodes answer
            self.rule = (rule or default_rule(self.settings, names)).strip().lower()
            check_rule(self.rule, names)
            missing = [m for m, mem in self.members.items() if not mem.f1]
            if self.rule == "weighted" and missing:
                raise CheckpointError(f"the weighted rule needs every model's per-class validation F1 "
                                      f"(RUN/M/report.json: make evaluate); missing: {', '.join(missing)}")
        else:
            self.rule = None
        self.class_names = next(iter(self.members.values())).class_names

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, model: str = ENSEMBLE, rule: str | None = None,
                 tta: bool | None = None, device=None, runtime: str = "torch") -> "Predictor":
        """Load RUN's members (`model`: "ensemble", or one of them: "b0", "galaxy-b0", ...);
        `rule` None: the run's measured default; `tta` None: off, as `make serve` answers;
        `runtime` "onnx": the forward on ONNX Runtime (CPU; RUN/M/model.onnx, exported and checked
        against torch the first time), the same answers about twice as fast."""
        run = Path(run_dir)
        if (run / WEIGHTS_FILE).is_file():  # one checkpoint folder
            member = Member(run, device, bool(tta), runtime=runtime)
            if model not in (ENSEMBLE, member.spec.name, member.name):
                raise CheckpointError(f"{run} holds {member.spec.name}, not {model}")
            return cls({member.spec.name: member}, member.spec.name)
        names = run_members(run)
        if not names:
            raise CheckpointError(f"no checkpoint in {run}: expected {run}/M/{WEIGHTS_FILE} for M in "
                                  f"{', '.join(ALL_SPECS)} (make demo-models, or make models)")
        choice = model[len(served_name("")):] if model.startswith(served_name("")) else model
        if choice != ENSEMBLE and choice not in names:
            raise CheckpointError(f"unknown model {model!r} for {run}: choose one of {', '.join(names + [ENSEMBLE])}")
        if choice == ENSEMBLE and len(names) < 2:
            missing = [m for m in PAIR if m not in names]
            raise CheckpointError(f"an ensemble needs two or more checkpoints; {run} has {', '.join(names)} only "
                                  f"(no {' or '.join(missing)} checkpoint: {run}/M/{WEIGHTS_FILE})")
        if rule is not None and rule not in RULES:
            raise ValueError(f"unknown ensemble rule {rule!r}: choose one of {', '.join(RULES)}")
        chosen = names if choice == ENSEMBLE else [choice]
        members = {m: Member(run / m, device, bool(tta), runtime=runtime) for m in chosen}
        return cls(members, choice, rule, read_settings(run))

    @property
    def workflow(self) -> bool:
        return self.model == ENSEMBLE

    @property
    def name(self) -> str:
        return WORKFLOW_NAME if self.workflow else self.members[self.model].name

    def answer(self, image, embeddings: bool = False, mc_passes: int = 0) -> dict:
        """The server's answer to one image (bytes, a path, a PIL image or pixels); ImageError when
        it is not one."""
        a = self.answer_batch([image], embeddings, mc_passes)[0]
        if isinstance(a, Exception):
            raise a
        return a

    def answer_batch(self, images, embeddings: bool = False, mc_passes: int = 0, batch_size: int = 32) -> list:
        """One answer dict per image, or the ImageError that refused it (the others still answer).
        `mc_passes`: MC-dropout passes of each member with dropout before its head (B0's answers then
        carry "mc_dropout"; B2, trained without, answers without); ValueError when none has it."""
        images = list(images)
        passes = {m: mc_passes if mc_passes and mem.has_mc_dropout else 0 for m, mem in self.members.items()}
        if mc_passes and not any(passes.values()):
            raise ValueError(f"{', '.join(self.members)}: trained without dropout before the classifier, "
                             f"MC-dropout passes would all be equal")
        out: list = [None] * len(images)
        for start in range(0, len(images), batch_size):
            decoded, good = [], []
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    if isinstance(images[i], Exception):
                        raise images[i]
                    decoded.append(to_image(images[i]))
                    good.append(i)
                except (ImageError, OSError) as e:
                    out[i] = e if isinstance(e, ImageError) else ImageError(str(e))
            if not decoded:
                continue
            reasons = [cheap_check(im) for im in decoded]
            per_member = {m: mem.answers(mem.inputs(decoded), reasons, embeddings, passes[m])
                          for m, mem in self.members.items()}
            for k, i in enumerate(good):
                out[i] = self.combine({m: a[k] for m, a in per_member.items()})
        return out

    def combine(self, answers: dict[str, dict], rule: str | None = None) -> dict:
        """The members' answers -> this predictor's answer (the workflow's for the ensemble)."""
        if not self.workflow:
            return answers[self.model]
        rule = rule or self.rule
        tta = next(iter(self.members.values())).tta
        return ensemble_answer(answers, rule, {m: self.members[m].f1 for m in answers},
                               calibration=ensemble_calibration(self.settings, rule, tta))

    def explain(self, image, target: int | str | None = None, model: str | None = None) -> dict:
        """Grad-CAM of one image for `model` (default: every member, {spec: explanation});
        `target` a class index or name (default: each model's predicted class)."""
        im = to_image(image)
        if isinstance(target, str):
            target = self.class_names.index(target) if target in self.class_names else int(target)
        chosen = [model] if model else list(self.members)
        out = {m: self.members[m].explain(self.members[m].inputs([im])[0], target) for m in chosen}
        return out[model] if model else out

    def predict(self, inputs, embeddings: bool = False, batch_size: int = 32, progress: bool = True):
        """Classify files, a folder (recursively), an HDF5 file of the Galaxy10 schema, or an array
        of pixels (N x H x W x 3 uint8) -> a pandas.DataFrame with one row per image and the columns
        of `make classify`'s catalogue (plus embedding_<model> with `embeddings`); an image that
        cannot be read keeps its row with the reason in `error`."""
        import pandas as pd
        from tqdm.auto import tqdm

        ids, load = _inputs(inputs)
        rows = []
        bar = tqdm(total=len(ids), unit="img", disable=not progress, desc=self.name)
        for start in range(0, len(ids), batch_size):
            chunk = range(start, min(start + batch_size, len(ids)))
            answers = self.answer_batch(load(chunk), embeddings, batch_size=batch_size)
            rows += [self.record(ids[i], a, embeddings) for i, a in zip(chunk, answers)]
            bar.update(len(chunk))
        bar.close()
        return pd.DataFrame(rows, columns=self.columns(embeddings))

    def columns(self, embeddings: bool = False) -> list[str]:
        cols = CATALOGUE_BASE + list(self.class_names) + CATALOGUE_TRAILING[:6 if self.workflow else 4]
        return cols + ([f"embedding_{m}" for m in self.members] if embeddings else [])

    def record(self, item_id: str, answer, embeddings: bool = False) -> dict:
        """One DataFrame row of an answer (or of the error that refused the image)."""
        row = dict.fromkeys(self.columns(embeddings))
        row["id"] = item_id
        if not isinstance(answer, dict):
            row["error"] = str(answer)
            return row
        row.update({k: answer.get(k) for k in ("label", "class_name", "confidence", "model", "version",
                                               "in_distribution", "ood_score")}, error="")
        row.update(answer["probabilities"])
        if self.workflow:
            row.update(source=answer["source"], rule=answer["rule"])
        for m in self.members if embeddings else ():
            row[f"embedding_{m}"] = np.asarray((answer[m] if self.workflow else answer)["embedding"], np.float32)
        return row


def _inputs(inputs) -> tuple[list[str], callable]:
    """(ids, load(range of positions) -> list of image bytes, pixels or the OSError that stopped a
    read) of what `predict` was given. Ids: a file's path relative to the folder, a row's index."""
    if isinstance(inputs, np.ndarray):
        arr = inputs if inputs.ndim == 4 else inputs[None]
        return [str(i) for i in range(len(arr))], lambda r: [arr[i] for i in r]
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise FileNotFoundError(f"no JPEG, PNG or FITS images in {path}")
            return [p.relative_to(path).as_posix() for p in files], lambda r: [_read(files[i]) for i in r]
        if path.suffix.lower() in H5_SUFFIXES:
            import h5py

            with h5py.File(path, "r") as f:
                n = len(f["images"])

            def rows(r):  # one slice per chunk: HDF5 decompresses each of its chunks once
                with h5py.File(path, "r") as f:
                    return list(np.asarray(f["images"][r.start:r.stop]))
            return [str(i) for i in range(n)], rows
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file or folder")
        inputs = [path]
    files = [Path(p) for p in inputs]
    return [str(p) for p in files], lambda r: [_read(files[i]) for i in r]


def _read(path: Path):
    try:
        return path.read_bytes()
    except OSError as e:
        return ImageError(f"cannot read {path}: {e.strerror or e}")
