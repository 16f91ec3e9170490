"""Where a member's forward runs: PyTorch eager ("torch") or ONNX Runtime ("onnx").

    python -m training.export_onnx RUN/b0 RUN/b2 --samples samples/galaxy10_decals
        # writes RUN/M/model.onnx and model.onnx.json (the check), or refuses with exit 1

    Predictor.from_run("checkpoints/demo", runtime="onnx")    # the same answers, about 2x faster on a CPU

The export (opset 18, dynamic batch) has two outputs, the penultimate features and the logits, so
the temperature, the OOD head, embeddings and MC dropout (the torch head on those features) work
the same on either runtime; Grad-CAM keeps the torch model. `ensure_onnx` exports only when
model.onnx is missing or was made from other weights, and refuses an export whose answers to the
check images differ from torch's: another label, a probability moved by more than MAX_PROB_DIFF or
another in_distribution verdict. The archive builder runs training.export_onnx for each member
(torchserve_ops/archive.py), so a served ONNX model was checked on the real samples.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from galaxy_morph.files import atomic_write_bytes, atomic_write_json
from galaxy_morph.run_files import ONNX_FILE, ONNX_RECORD, RUNTIMES, onnx_is_current, weights_sha256  # noqa: F401

OPSET = 18
MAX_PROB_DIFF = 1e-4
RANDOM_CHECK_IMAGES = 16  # no check images given: seeded random pixels, 256 x 256
TTA_BATCH = 256  # class probabilities: up to this many images in one forward (8 views x 32)


def export_onnx(model, crop: int) -> bytes:
    """The ONNX graph of (features, logits) = model(images), images N x 3 x crop x crop."""
    import torch
    from torch import nn

    from galaxy_morph.models import features_and_logits

    class FeaturesAndLogits(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            return features_and_logits(self.model, x)

    wrapper = FeaturesAndLogits(model.float()).eval()  # the wrapper's own mode counts in the export
    buf = io.BytesIO()
    torch.onnx.export(wrapper, (torch.zeros(2, 3, crop, crop),), buf, opset_version=OPSET, dynamo=False,
                      input_names=["images"], output_names=["features", "logits"],
                      dynamic_axes={"images": {0: "n"}, "features": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


def default_threads() -> int:
    """torch's default intra-op threads, without importing torch: OMP_NUM_THREADS, else the cores
    this process may run on."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dihedral(x: np.ndarray):
    """The 8 flips/quarter turns of an NCHW batch, in galaxy_morph.models.dihedral's order."""
    for flipped in (x, x[..., ::-1]):
        for k in range(4):
            yield np.rot90(flipped, k, (2, 3))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class OnnxModel:
    """An exported member on ONNX Runtime's CPU provider; `threads` per forward (default: torch's).
    Numpy in, numpy out: a worker that answers with it never imports torch."""

    def __init__(self, onnx, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or default_threads())
        options.inter_op_num_threads = 1
        # No spinning between batches: a server runs several workers on few cores, and a spinning
        # thread pool takes CPU that the others' forwards need (OMP_WAIT_POLICY=PASSIVE for torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(onnx) if isinstance(onnx, Path) else onnx
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.threads = options.intra_op_num_threads

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features, logits) of a normalised float32 NCHW batch."""
        feats, logits = self.session.run(None, {"images": np.ascontiguousarray(x, np.float32)})
        return feats, logits

    def features_and_logits(self, x):
        """run() on a torch batch, torch tensors back (galaxy_morph.models.features_and_logits)."""
        import torch

        feats, logits = self.run(x.float().cpu().numpy())
        return torch.from_numpy(feats), torch.from_numpy(logits)

    def class_probabilities(self, x: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(softmax, N x classes; the features of the images as given), as
        galaxy_morph.models.class_probabilities(with_features=True) computes them with torch:
        `tta` the mean over the 8 dihedral views."""
        n = len(x)
        views = list(dihedral(x)) if tta else [x]
        chunks = [np.concatenate(views)] if len(views) * n <= TTA_BATCH else views
        probs, feats = [], None
        for c in chunks:
            f, logits = self.run(c)
            probs.append(softmax(logits.astype(np.float32)))
            feats = f[:n] if feats is None else feats  # the first view is the image itself
        probs = np.concatenate(probs)
        return probs.reshape(len(views), n, -1).mean(0), feats


def check_images(samples=None) -> tuple[list, str]:
    """(the images an export is checked on, what they are): the files in `samples` (a folder), else
    seeded random pixels."""
    from galaxy_morph.predictor import IMAGE_SUFFIXES, to_image

    if samples is not None and Path(samples).is_dir():
        files = sorted(p for p in Path(samples).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return [to_image(p) for p in files], str(samples)
    rng = np.random.default_rng(0)
    return ([to_image(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(RANDOM_CHECK_IMAGES)],
            "random pixels")


def compare(ckpt_dir, onnx: bytes, images) -> dict:
    """torch's and ONNX Runtime's answers to `images`, as the served Member gives them."""
    from galaxy_morph.predictor import Member
    from galaxy_morph.ood import cheap_check

    torch_member = Member(ckpt_dir, "cpu", runtime="torch")
    onnx_member = Member(ckpt_dir, "cpu", runtime="onnx", onnx=onnx)
    x, reasons = torch_member.inputs(images), [cheap_check(im) for im in images]
    a, b = torch_member.answers(x, reasons), onnx_member.answers(x, reasons)
    pa = np.array([[r["probabilities"][c] for c in torch_member.class_names] for r in a])
    pb = np.array([[r["probabilities"][c] for c in torch_member.class_names] for r in b])
    return {"n": len(images), "max_prob_diff": float(np.abs(pa - pb).max()),
            "labels_differ": int(sum(r["label"] != s["label"] for r, s in zip(a, b))),
            "verdicts_differ": int(sum(r["in_distribution"] != s["in_distribution"] for r, s in zip(a, b)))}


def ensure_onnx(ckpt_dir, samples=None, force: bool = False) -> dict:
    """CKPT/model.onnx made from CKPT's weights and checked against torch; its record (the check's
    figures). ValueError, and nothing written, when the answers differ."""
    ckpt_dir = Path(ckpt_dir)
    if onnx_is_current(ckpt_dir) and not force:
        return json.loads((ckpt_dir / ONNX_RECORD).read_text())
    import torch

    from galaxy_morph.models import load_checkpoint

    ckpt = load_checkpoint(ckpt_dir)
    onnx = export_onnx(ckpt.model, ckpt.spec.crop)
    images, checked_on = check_images(samples)
    checked = compare(ckpt_dir, onnx, images)
    if checked["labels_differ"] or checked["verdicts_differ"] or checked["max_prob_diff"] > MAX_PROB_DIFF:
        raise ValueError(f"{ckpt_dir}: the ONNX export does not answer as torch does on {checked['n']} images "
                         f"({checked['labels_differ']} labels and {checked['verdicts_differ']} verdicts differ, "
                         f"probabilities up to {checked['max_prob_diff']:.2g} apart; at most {MAX_PROB_DIFF:g} "
                         f"is accepted): serve it with runtime torch")
    atomic_write_bytes(ckpt_dir / ONNX_FILE, onnx)
    record = {"runtime": "onnx", "opset": OPSET, "onnxruntime": _ort_version(), "torch": torch.__version__,
              "weights_sha256": weights_sha256(ckpt_dir),
              "checked_on": checked_on, **checked}
    atomic_write_json(ckpt_dir / ONNX_RECORD, record, indent=1)
    return record


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
