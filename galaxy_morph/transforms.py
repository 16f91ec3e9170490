"""Train and eval transforms derived from a ModelSpec (PIL RGB image -> normalised CHW tensor).

    eval_transform(spec)                       # resize, centre crop, normalise
    eval_tensor_transform(spec)                # the same on a uint8 CHW tensor (GPU-decoded images)
    train_transform(spec)                      # + the seed's flip and rotation
    train_transform(spec, scale=(0.9, 1.1), translate=0.05)   # + scale/translation jitter

Device-side augmentation (for a GPU that the DataLoader cannot feed): the loader only resizes and
hands uint8 tensors over (`uint8_transform`), and `DeviceAugment` does the flips, 90-degree
rotations, the remaining arbitrary rotation (plus any scale/translation jitter) and the centre crop
in one `affine_grid`/`grid_sample`, then normalises: the same augmentation, batched on the device.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from galaxy_morph.preprocess import eval_transform  # noqa: F401  (re-exported: one eval transform)
from galaxy_morph.specs import ModelSpec


def torchvision_eval_transform(spec: ModelSpec) -> T.Compose:
    """The eval transform in torchvision's terms; eval_transform (galaxy_morph.preprocess, no
    torchvision) computes the same tensors."""
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def eval_tensor_transform(spec: ModelSpec) -> T.Compose:
    """eval_transform for a uint8 CHW tensor on any device (an image decoded on the GPU): the same
    resize, crop and normalisation from the same spec, computed by torch instead of PIL."""
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(spec.crop),
        T.ConvertImageDtype(torch.float32),  # /255, as ToTensor
        T.Normalize(spec.mean, spec.std),
    ])


def train_transform(spec: ModelSpec, scale: tuple | None = None, translate: float = 0.0) -> T.Compose:
    """The seed's augmentation; `scale` (min, max) and `translate` (fraction of the side) add jitter."""
    # Galaxies have no preferred orientation: flips and any rotation are free augmentation.
    # Rotating before the crop keeps most of the black corners out of the B2 input.
    if scale or translate:
        # One affine warp for rotation, scale and shift: a single interpolation.
        geometric = T.RandomAffine(spec.rotation_deg, translate=(translate, translate) if translate else None,
                                   scale=scale, interpolation=T.InterpolationMode.BILINEAR)
    else:
        geometric = T.RandomRotation(spec.rotation_deg, interpolation=T.InterpolationMode.BILINEAR)
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.RandomHorizontalFlip(spec.hflip_p),
        geometric,
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def uint8_transform(spec: ModelSpec) -> T.Compose:
    """Loader side of device augmentation: resize only, uint8 CHW (4x less to copy than float)."""
    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(spec.resize),  # square, whatever the source aspect
        T.PILToTensor(),
    ])


def random_hflip(x: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Mirror each image of an NCHW batch with probability p."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_rot90(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Rotate each image of a square NCHW batch by a random multiple of 90 degrees (lossless)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device, generator=generator)[:, None, None, None]
    out = x
    for q in range(1, 4):  # torch.where, not masks: no device-to-host sync on a GPU
        out = torch.where(k == q, torch.rot90(x, q, (2, 3)), out)
    return out


def affine_crop(x: torch.Tensor, angle_deg: torch.Tensor, crop: int, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (degrees, counter-clockwise), zoom by `scale`, shift by `shift` (fraction of the side,
    N x 2) and centre-crop to `crop` pixels, per image of a float NCHW batch, in one grid_sample.
    Outside the image is black (0), as torchvision's RandomRotation fills it."""
    n, _, h, w = x.shape
    a = torch.deg2rad(angle_deg.to(x.dtype))
    s = torch.ones_like(a) if scale is None else scale.to(x.dtype)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    # Output coordinates are normalised to the crop; the crop covers crop/size of the input.
    fx, fy = crop / w, crop / h
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx * w / h, cos * fy
    if shift is not None:
        theta[:, :, 2] = -2 * shift.to(x.dtype)  # moving the content by +d samples the input at -d
    grid = F.affine_grid(theta, (n, x.shape[1], crop, crop), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeviceAugment(nn.Module):
    """A uint8 NCHW batch at the spec's resize -> normalised float crops, augmented in training mode.

    Training: horizontal flip (spec.hflip_p); for rotation_deg >= 45 a random quarter turn plus a
    uniform residual angle in +-45 degrees (together uniform over the full circle when rotation_deg
    is 180), else a uniform angle in +-rotation_deg; optional scale and translation jitter; then the
    centre crop. Eval mode: the centre crop only. Runs on whatever device the batch is on.
    """

    def __init__(self, spec: ModelSpec, scale: tuple | None = None, translate: float = 0.0):
        super().__init__()
        self.spec, self.scale, self.translate = spec, scale, translate
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        spec, n, dev = self.spec, x.shape[0], x.device
        x = x.float()
        if self.training:
            x = random_hflip(x, spec.hflip_p, generator)
            if spec.rotation_deg >= 45:
                x = random_rot90(x, generator)
                limit = 45.0
            else:
                limit = spec.rotation_deg
            angle = (torch.rand(n, device=dev, generator=generator) * 2 - 1) * limit
            scale = shift = None
            if self.scale:
                lo, hi = self.scale
                scale = lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)
            if self.translate:
                shift = (torch.rand(n, 2, device=dev, generator=generator) * 2 - 1) * self.translate
            x = affine_crop(x, angle, spec.crop, scale, shift)
        else:
            off = int(round((x.shape[-1] - spec.crop) / 2))  # as torchvision's CenterCrop
            x = x[..., off:off + spec.crop, off:off + spec.crop]
        return (x - self.mean) / self.std


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An HxWx3 uint8 array (as stored in Galaxy10 HDF5) or any PIL image -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
