"""Model building and self-describing checkpoints.

A checkpoint is a folder: `model.pt` (the state dict) and `meta.json` (spec, class names,
hyper-parameters, data file SHA256, split, metrics, date), so it can be rebuilt without the code
that trained it knowing anything else.

    ckpt = load_checkpoint("checkpoints/demo/b0")   # .model .spec .transform .class_names .meta
    model = build_model("b0", pretrained=True)   # ImageNet weights through the library's own cache

ImageNet weights come from the libraries' own loaders and caches: torchvision's weights API
(`$TORCH_HOME/hub/checkpoints/<file of the weights URL>`) and timm's pretrained weights from the
Hugging Face Hub (`$HF_HOME/hub/models--timm--<arch>.<tag>/snapshots/<commit>/model.safetensors`).
With `HF_HUB_OFFLINE=1` neither library is asked to download, only the caches are read.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from galaxy_morph.checkpoint import (SYNTHETIC_SOURCES, Checkpoint, read_checkpoint,  # noqa: F401  (re-exported)
                                     synthetic_data)
from galaxy_morph.files import atomic_path, atomic_write_json
from galaxy_morph.run_files import META_FILE, WEIGHTS_FILE, read_meta  # noqa: F401  (re-exported)
from galaxy_morph.specs import GALAXY10_CLASSES, ModelSpec, get_spec
from galaxy_morph.runtimes import TTA_BATCH
from galaxy_morph.uncertainty import MAX_MC_PASSES  # noqa: F401  (re-exported)


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights are neither in the library's cache nor downloadable (offline machine)."""


def offline() -> bool:
    """HF_HUB_OFFLINE=1 (the Hugging Face switch) keeps both libraries to their caches."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pretrained_source(spec: ModelSpec | str) -> dict:
    """Where a spec's ImageNet weights come from: {"library", "weights", "url", "cache"}."""
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.library == "torchvision":
        from torchvision.models import get_model_weights

        weights = get_model_weights(spec.arch).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        return {"library": "torchvision", "weights": f"{type(weights).__name__}.{weights.name}",
                "url": weights.url, "cache": str(cache)}
    if spec.library == "timm":
        import timm
        from huggingface_hub import constants

        cfg = timm.create_model(spec.arch, pretrained=False).pretrained_cfg
        repo = cfg.get("hf_hub_id")
        folder = "models--" + repo.replace("/", "--") if repo else None
        return {"library": "timm", "weights": f"{spec.arch}.{cfg.get('tag')}",
                "url": f"https://huggingface.co/{repo}" if repo else cfg.get("url"),
                "cache": str(Path(constants.HF_HUB_CACHE) / folder / "snapshots" / "<commit>" / "model.safetensors")
                if folder else None}
    raise ValueError(f"unknown model library {spec.library!r}")


def _unavailable(spec: ModelSpec, cause) -> PretrainedUnavailable:
    src = pretrained_source(spec)
    return PretrainedUnavailable(
        f"ImageNet weights for {spec.name} ({src['weights']}) are not in the {src['library']} cache "
        f"({src['cache']}) and could not be downloaded from {src['url']}: {cause}. To go on without "
        f"network: train from random initialisation (PRETRAINED=0 for make models, or leave out "
        f"--pretrained), or pass a local state dict with --weights FILE; or run once where the "
        f"download works, which fills the cache.")


def imagenet_state_dict(spec: ModelSpec | str) -> dict:
    """The spec's ImageNet state dict, from the library's cache or downloaded into it.

    Raises PretrainedUnavailable, with the way to go on, when neither works.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.library == "torchvision":
        from torchvision.models import get_model_weights

        weights = get_model_weights(spec.arch).DEFAULT
        if offline() and not Path(pretrained_source(spec)["cache"]).is_file():
            raise _unavailable(spec, "HF_HUB_OFFLINE is set and the file is not cached")
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash a RuntimeError
            raise _unavailable(spec, e) from e
    if spec.library == "timm":
        import timm

        try:
            # timm resolves the weights through huggingface_hub (cache first, HF_HUB_OFFLINE aware).
            return timm.create_model(spec.arch, pretrained=True).state_dict()
        except (OSError, RuntimeError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
            raise _unavailable(spec, e) from e
    raise ValueError(f"unknown model library {spec.library!r}")


def build_model(spec: ModelSpec | str, num_classes: int = len(GALAXY10_CLASSES),
                weights: str | os.PathLike | None = None, pretrained: bool = False) -> nn.Module:
    """Randomly initialised model for a spec; `weights` is an optional local state-dict file,
    `pretrained` loads the library's ImageNet weights (imagenet_state_dict).

    Weights trained for another number of classes (ImageNet's 1000, say) load all but the
    classifier head, which keeps its random initialisation.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    if weights is not None and pretrained:
        raise ValueError("choose one of --weights FILE and --pretrained")
    if spec.library == "torchvision":
        import torchvision.models as tvm

        model = getattr(tvm, spec.arch)(weights=None, num_classes=num_classes)
    elif spec.library == "timm":
        import timm

        model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
    else:
        raise ValueError(f"unknown model library {spec.library!r}")
    if pretrained:
        load_matching(model, imagenet_state_dict(spec), f"ImageNet weights for {spec.name}")
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
    return load_matching(model, state, str(path))


def load_matching(model: nn.Module, state: dict, source: str) -> list[str]:
    """Load the tensors of `state` whose name and shape match; return the names left as they were."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{source}: no tensor matches this architecture")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def dihedral(x: torch.Tensor):
    """The 8 flips/90-degree rotations of a NCHW batch (galaxies have no preferred orientation)."""
    for flipped in (x, x.flip(3)):
        for k in range(4):
            yield torch.rot90(flipped, k, (2, 3))


def class_probabilities(model: nn.Module, x: torch.Tensor, tta: bool = False,
                        autocast_dtype: torch.dtype | None = None, with_features: bool = False):
    """Softmax (float32, N x classes) of a normalised NCHW batch on the model's device. `tta`: the
    mean over the 8 dihedral views (one batch of 8N up to TTA_BATCH images, else view by view);
    `autocast_dtype` (torch.bfloat16): the forward under autocast on the batch's device.
    `with_features`: (probabilities, the penultimate features of the images as given)."""
    n = x.shape[0]
    views = list(dihedral(x)) if tta else [x]
    chunks = [torch.cat(views)] if len(views) * n <= TTA_BATCH else views
    probs, feats = [], None
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                                enabled=autocast_dtype is not None):
        for c in chunks:
            f, logits = features_and_logits(model, c.contiguous(memory_format=torch.channels_last))
            probs.append(logits.float().softmax(1))
            feats = f[:n].float() if feats is None else feats  # the first view is the image itself
    probs = torch.cat(probs)
    probs = probs.view(len(views), n, probs.shape[1]).mean(0)
    return (probs, feats) if with_features else probs


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate-layer features (the pooled embedding the classifier reads) and the logits,
    from one forward: torchvision's features -> avgpool -> classifier, timm's forward_head(pre_logits).
    `model` may also be an exported one (galaxy_morph.runtimes.OnnxModel)."""
    if not isinstance(model, nn.Module):
        return model.features_and_logits(x)
    if hasattr(model, "forward_head"):  # timm
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        return f, model.get_classifier()(f)
    f = torch.flatten(model.avgpool(model.features(x)), 1)
    return f, model.classifier(f)


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last feature stage, the natural Grad-CAM layer of every spec's architecture."""
    if hasattr(model, "conv_head"):  # timm EfficientNet
        return model.conv_head
    if hasattr(model, "stages"):  # timm ConvNeXt
        return model.stages[-1]
    return model.features[-1]  # torchvision


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, spec: ModelSpec,
                    class_names, **meta) -> Path:
    """Write model.pt and meta.json into out_dir; extra keyword arguments go into the meta."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:  # a reader never sees half a checkpoint
        torch.save(state, tmp)
    full = {
        "model": spec.name,
        "spec": spec.to_dict(),
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    atomic_write_json(out / META_FILE, full, indent=2, default=_json_default)
    return out


def load_checkpoint(ckpt_dir: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """Rebuild the model a checkpoint folder describes and load its weights (eval mode); everything
    but the model, without torch: galaxy_morph.checkpoint.read_checkpoint."""
    ckpt = read_checkpoint(ckpt_dir)
    model = build_model(ckpt.spec, num_classes=ckpt.meta["num_classes"])
    model.load_state_dict(torch.load(Path(ckpt_dir) / WEIGHTS_FILE, map_location=map_location, weights_only=True))
    ckpt.model = model.eval()
    return ckpt


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def head_dropout_rate(model: nn.Module) -> float:
    """The dropout rate in front of the classifier: torchvision's classifier[0], timm's drop_rate."""
    if hasattr(model, "forward_head"):  # timm
        return float(getattr(model, "drop_rate", 0.0) or 0.0)
    first = model.classifier[0] if isinstance(model.classifier, nn.Sequential) else None
    return float(first.p) if isinstance(first, nn.Dropout) else 0.0


def mc_dropout_probabilities(model: nn.Module, features: torch.Tensor, passes: int,
                             temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """MC dropout on the head only (Gal & Ghahramani 2016; Walmsley et al. 2020): `passes` softmaxes
    of (passes, N, classes) from the penultimate features, each with a fresh dropout mask at the
    model's own rate; logits divided by `temperature` as the served answer's are. The backbone runs
    once: its layers hold no dropout in EfficientNet's eval forward."""
    rate = head_dropout_rate(model)
    if rate <= 0:
        raise ValueError("this model has no dropout before its classifier: MC-dropout passes would all be equal")
    head = model.get_classifier() if hasattr(model, "forward_head") else model.classifier[-1]
    f = features.float()
    out = []
    with torch.inference_mode():
        for _ in range(passes):
            keep = torch.rand(f.shape, generator=generator, device=f.device) >= rate
            logits = head((f * keep / (1 - rate)).to(next(head.parameters()).dtype)).float()
            out.append((logits / temperature).softmax(-1))
    return torch.stack(out)
