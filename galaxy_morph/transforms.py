"""Train and eval transforms derived from a ModelSpec (PIL RGB image -> normalised CHW tensor)."""
from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision import transforms as T

from galaxy_morph.specs import ModelSpec


def eval_transform(spec: ModelSpec) -> T.Compose:
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def train_transform(spec: ModelSpec) -> T.Compose:
    # Galaxies have no preferred orientation: flips and any rotation are free augmentation.
    # Rotating before the crop keeps most of the black corners out of the B2 input.
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.RandomHorizontalFlip(spec.hflip_p),
        T.RandomRotation(spec.rotation_deg, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An HxWx3 uint8 array (as stored in Galaxy10 HDF5) or any PIL image -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
