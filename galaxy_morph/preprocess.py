"""The eval transform of a ModelSpec without torchvision: PIL RGB image -> normalised CHW tensor.

    from galaxy_morph.preprocess import eval_transform
    x = eval_transform(spec)(image)       # resize (shorter side), centre crop, /255, normalise
    a = eval_transform(spec).array(image) # the same values as a float32 numpy array, without torch

The same steps, in the same arithmetic, as torchvision's Resize(BILINEAR, antialias) ->
CenterCrop -> ToTensor -> Normalize on a PIL image (tests/test_core.py checks that they are equal),
so that a server answering on ONNX Runtime needs neither torchvision nor timm (3-4 s of CPU and about
150 MB at every start) nor torch itself (`array`: about 270 MB of private memory per worker).
galaxy_morph.transforms.eval_transform is this one.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from galaxy_morph.specs import ModelSpec


class EvalTransform:
    def __init__(self, spec: ModelSpec):
        if spec.crop > spec.resize:
            raise ValueError(f"{spec.name}: crop {spec.crop} is larger than the resize {spec.resize}")
        self.resize, self.crop = spec.resize, spec.crop
        self.mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)

    def __call__(self, image: Image.Image):
        import torch

        return torch.from_numpy(self.array(image))

    def array(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)  # torchvision's rounding
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)  # PIL's resize antialiases, as torchvision asks
        top, left = int(round((size[1] - self.crop) / 2.0)), int(round((size[0] - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(image, np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")  # torch's float32 steps
        x /= np.float32(255)
        x -= self.mean
        x /= self.std
        return x

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop})"


def eval_transform(spec: ModelSpec) -> EvalTransform:
    return EvalTransform(spec)
