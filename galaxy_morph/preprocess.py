"""The eval transform of a ModelSpec without torchvision: PIL RGB image -> normalised CHW tensor.

    from galaxy_morph.preprocess import eval_transform
    x = eval_transform(spec)(image)       # resize (shorter side), centre crop, /255, normalise

The same steps, in the same arithmetic, as torchvision's Resize(BILINEAR, antialias) ->
CenterCrop -> ToTensor -> Normalize on a PIL image (tests/test_core.py checks that they are equal),
so that a server answering on ONNX Runtime needs neither torchvision nor timm: importing them costs
a worker 3-4 s of CPU and about 150 MB at every start. galaxy_morph.transforms.eval_transform is this one.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from galaxy_morph.specs import ModelSpec


class EvalTransform:
    def __init__(self, spec: ModelSpec):
        if spec.crop > spec.resize:
            raise ValueError(f"{spec.name}: crop {spec.crop} is larger than the resize {spec.resize}")
        self.resize, self.crop = spec.resize, spec.crop
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)  # torchvision's rounding
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)  # PIL's resize antialiases, as torchvision asks
        top, left = int(round((size[1] - self.crop) / 2.0)), int(round((size[0] - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        return x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop})"


def eval_transform(spec: ModelSpec) -> EvalTransform:
    return EvalTransform(spec)
