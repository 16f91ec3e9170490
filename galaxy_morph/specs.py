"""Class names and model specs: the single source of truth for architecture and preprocessing.

A spec says how a model is built and how an image becomes its input tensor; training, evaluation,
the TorchServe handlers and the benchmarks all derive their transforms from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

GALAXY10_CLASSES = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    library: str  # "torchvision" or "timm"
    arch: str
    resize: int  # shorter side after resize
    crop: int  # centre crop: the model's input size
    mean: tuple
    std: tuple
    lr: float
    weight_decay: float
    t_max: int  # cosine schedule length in epochs
    label_smoothing: float
    batch_size: int
    hflip_p: float = 0.5
    rotation_deg: float = 180.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


SPECS = {
    "b0": ModelSpec(
        name="b0", library="torchvision", arch="efficientnet_b0",
        resize=128, crop=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        lr=3e-4, weight_decay=0.01, t_max=30, label_smoothing=0.05, batch_size=64,
    ),
    "b2": ModelSpec(
        name="b2", library="timm", arch="efficientnet_b2",
        resize=260, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        lr=2e-4, weight_decay=0.01, t_max=30, label_smoothing=0.0, batch_size=32,
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SPECS)}") from None
