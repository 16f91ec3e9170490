"""Training recipes: `seed` (the seed's schedule, exactly), `strong` and `augmented` (aimed past 90 %).

    python -m training.train --model b0 --data PATH --out DIR --recipe strong

A recipe is what training adds on top of a spec; the spec keeps the architecture, preprocessing,
optimiser, learning rate, label smoothing and batch size. `augmented` has every switch below;
`strong` drops the two that measured harmful (jitter and mix: B0, 12 epochs, 64 px, 4,000
synthetic galaxies, `training.ablate`; docs/training.md, *Ablation*). Each switch and its source:

- schedule: linear warm-up, then cosine decay to zero over the whole run, stepped every batch
  (torch's LinearLR + CosineAnnealingLR in a SequentialLR: training.train.warmup_cosine), and
  twice the seed's 30 epochs (warm-up: Goyal et al. 2017, arXiv:1706.02677; cosine: Loshchilov &
  Hutter 2017, arXiv:1608.03983; Galaxy10's best published results come from long schedules,
  Dagli 2023 "Astroformer", arXiv:2304.05350).
- EMA of the weights (decay 0.999, warmed up as min(decay, (1 + n) / (10 + n)) over the n updates:
  timm's ModelEmaV3, training.train.make_ema), used for validation, the saved checkpoint and therefore export
  (Polyak & Juditsky 1992; EfficientNet's training, Tan & Le 2019, arXiv:1905.11946).
- scale (0.9-1.1) and translation (+-5 % of the side) jitter on top of the seed's free flips and
  rotations (the Galaxy Zoo challenge winner, Dieleman, Willett & Dambre 2015, MNRAS 450, 1441,
  augmented with rotation, translation, scaling and flips).
- mixup (alpha 0.2, Zhang et al. 2018, arXiv:1710.09412) or cutmix (alpha 1.0, Yun et al. 2019,
  arXiv:1905.04899), one of the two on every batch, with torchvision's `transforms.v2` MixUp/CutMix.
- dihedral test-time augmentation at evaluation: the mean over the 8 flips/quarter turns
  (Dieleman et al. 2015 averaged over the same viewpoints); `make models` always evaluates with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs_per_t_max: float = 1.0  # default epochs = this x the spec's t_max
    warmup_epochs: float = 0.0  # > 0: per-batch warm-up + cosine over the run (else the seed's schedule)
    ema_decay: float | None = None
    scale_jitter: tuple | None = None  # (min, max) zoom
    translate: float = 0.0  # fraction of the side
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    tta: bool = False  # dihedral TTA at evaluation

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # The seed's: per-epoch cosine with the spec's T_max, flips and rotations, nothing else.
    "seed": Recipe("seed"),
    "strong": Recipe("strong", epochs_per_t_max=2.0, warmup_epochs=3.0, ema_decay=0.999, tta=True),
    # strong + jitter + mixup/cutmix: regularisers that cost 7-8 points each in a 12-epoch run and
    # are known to pay, if at all, only in long ones; kept to be measured on the real catalogue
    "augmented": Recipe("augmented", epochs_per_t_max=2.0, warmup_epochs=3.0, ema_decay=0.999,
                        scale_jitter=(0.9, 1.1), translate=0.05, mixup_alpha=0.2, cutmix_alpha=1.0,
                        tta=True),
}


# The training switches of a recipe that `--without` turns off, for ablations (training.ablate).
# "schedule" keeps the length but drops the warm-up and the per-batch cosine: a per-epoch cosine
# over the whole run instead.
SWITCHES = {
    "schedule": {"warmup_epochs": 0.0},
    "ema": {"ema_decay": None},
    "jitter": {"scale_jitter": None, "translate": 0.0},
    "mix": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
}


def get_recipe(name: str, without=()) -> Recipe:
    """A recipe by name, with the switches in `without` turned off (named NAME-no-SWITCH...)."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}") from None
    unknown = [w for w in without if w not in SWITCHES]
    if unknown:
        raise ValueError(f"unknown switch {', '.join(unknown)}: choose from {', '.join(SWITCHES)}")
    for w in without:
        recipe = replace(recipe, **SWITCHES[w])
    return replace(recipe, name="-no-".join([name, *without])) if without else recipe
