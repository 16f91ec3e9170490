"""Model building and self-describing checkpoints.

A checkpoint is a folder: `model.pt` (the state dict) and `meta.json` (spec, class names,
hyper-parameters, data file SHA256, split, metrics, date), so it can be rebuilt without the code
that trained it knowing anything else.

    model, meta = load_checkpoint("runs/demo/b0")
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import torch
from torch import nn

from galaxy_morph.specs import GALAXY10_CLASSES, ModelSpec, get_spec

WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"


def build_model(spec: ModelSpec | str, num_classes: int = len(GALAXY10_CLASSES),
                weights: str | os.PathLike | None = None) -> nn.Module:
    """Randomly initialised model for a spec; `weights` is an optional local state-dict file.

    A weights file trained for another number of classes (an ImageNet backbone, say) loads all
    but the classifier head, which keeps its random initialisation.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.library == "torchvision":
        import torchvision.models as tvm

        model = getattr(tvm, spec.arch)(weights=None, num_classes=num_classes)
    elif spec.library == "timm":
        import timm

        model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
    else:
        raise ValueError(f"unknown model library {spec.library!r}")
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load every tensor whose name and shape match; return the names that were skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor matches this architecture")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last feature stage, the natural Grad-CAM layer for both architectures."""
    if hasattr(model, "conv_head"):  # timm
        return model.conv_head
    return model.features[-1]  # torchvision


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, spec: ModelSpec,
                    class_names, **meta) -> Path:
    """Write model.pt and meta.json into out_dir; extra keyword arguments go into the meta."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    # Write-then-rename so that a reader never sees half a checkpoint.
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
    full = {
        "model": spec.name,
        "spec": spec.to_dict(),
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, default=_json_default))
    os.replace(tmp, out / META_FILE)
    return out


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint meta at {path}")
    return json.loads(path.read_text())


def load_checkpoint(ckpt_dir: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint folder describes and load its weights (eval mode)."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    spec = ModelSpec.from_dict(meta["spec"])
    model = build_model(spec, num_classes=meta["num_classes"])
    weights = ckpt_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    model.load_state_dict(torch.load(weights, map_location=map_location, weights_only=True))
    return model.eval(), meta


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
