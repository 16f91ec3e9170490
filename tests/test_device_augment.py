"""Device-side augmentation (galaxy_morph.transforms.DeviceAugment), checked on CPU against the
PIL path and torch.rot90; the strong recipe and --gpu-augment through training.train, resumed."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from galaxy_morph import get_spec
from galaxy_morph.transforms import (DeviceAugment, affine_crop, eval_transform, random_hflip, random_rot90,
                                     uint8_transform)
from tests.test_data import make_h5
from training import loop, train


def image(size, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name, size", [("b0", 256), ("b2", 256), ("b2", 69), ("convnext", 256)])
def test_eval_mode_equals_the_pil_eval_transform(name, size):
    spec = get_spec(name)
    img = image(size)
    x = uint8_transform(spec)(img)
    assert x.dtype == torch.uint8 and x.shape == (3, spec.resize, spec.resize)
    got = DeviceAugment(spec).eval()(x[None])[0]
    assert torch.allclose(got, eval_transform(spec)(img), atol=1e-5)


def test_affine_crop_identity_and_quarter_turn():
    x = torch.randn(2, 3, 10, 10)
    centre = x[..., 2:8, 2:8]
    assert torch.allclose(affine_crop(x, torch.zeros(2), 6), centre, atol=1e-5)
    # +90 degrees is torch.rot90's direction; the other sign is the other way round.
    assert torch.allclose(affine_crop(x, torch.full((2,), 90.0), 6), torch.rot90(centre, 1, (2, 3)), atol=1e-4)
    assert torch.allclose(affine_crop(x, torch.full((2,), -90.0), 6), torch.rot90(centre, 3, (2, 3)), atol=1e-4)
    # Zoom 2x: the central 3x3 pixels fill the 6x6 crop (the middle value is kept).
    zoomed = affine_crop(x, torch.zeros(2), 6, scale=torch.full((2,), 2.0))
    assert zoomed.shape == (2, 3, 6, 6) and not torch.allclose(zoomed, centre)


def test_flips_and_quarter_turns_are_dihedral_and_random():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 5, 5)
    flipped = random_hflip(x, 0.5, g)
    is_flip = torch.tensor([torch.equal(a, b.flip(2)) for a, b in zip(flipped, x)])
    assert all(torch.equal(a, b) or f for a, b, f in zip(flipped, x, is_flip))
    assert 0.35 < is_flip.float().mean() < 0.65
    turned = random_rot90(x, g)
    ks = []
    for a, b in zip(turned, x):
        k = [q for q in range(4) if torch.equal(a, torch.rot90(b, q, (1, 2)))]
        assert len(k) == 1
        ks.append(k[0])
    assert sorted(set(ks)) == [0, 1, 2, 3] and max(np.bincount(ks)) < 80


def test_train_mode_keeps_the_centre_and_normalises():
    spec = get_spec("b0")
    aug = DeviceAugment(spec, scale=(0.9, 1.1), translate=0.0).train()
    x = torch.full((16, 3, spec.resize, spec.resize), 200, dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, spec.crop, spec.crop) and out.dtype == torch.float32
    # A uniform image stays uniform near the centre whatever the flip, rotation or zoom.
    want = (200 / 255 - 0.5) / 0.5
    c = spec.crop // 2
    assert torch.allclose(out[:, :, c - 8:c + 8, c - 8:c + 8], torch.full((16, 3, 16, 16), want), atol=1e-4)
    # Arbitrary rotations leave black corners on some images (zeros before normalisation).
    assert (out[:, :, 0, 0] == (0 - 0.5) / 0.5).any()


def test_strong_recipe_with_device_augmentation_resumes_exactly(tmp_path):
    data = make_h5(tmp_path / "tiny.h5", n=50, size=48)
    common = ["--model", "b0", "--data", str(data), "--limit-train", "16", "--batch-size", "8",
              "--workers", "0", "--device", "cpu", "--recipe", "augmented", "--gpu-augment"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main([*common, "--out", str(a), "--epochs", "2"]) == 0
    assert train.main([*common, "--out", str(b), "--epochs", "1", "--t-max", "2"]) == 0
    assert train.main([*common, "--out", str(b), "--epochs", "2", "--t-max", "2", "--resume"]) == 0
    hist_a, hist_b = (json.loads((d / "history.json").read_text()) for d in (a, b))
    for ha, hb in zip(hist_a, hist_b, strict=True):
        for k in ("train_loss", "val_loss", "lr"):
            assert ha[k] == pytest.approx(hb[k], rel=1e-4, abs=1e-6), k
    hp = json.loads((a / "meta.json").read_text())["hparams"]
    assert hp["recipe"] == "augmented" and hp["gpu_augment"] is True and hp["t_max"] == 2
    assert hp["recipe_settings"]["ema_decay"] == 0.999 and hp["recipe_settings"]["mixup_alpha"] == 0.2
    assert hist_a[1]["lr"] < hist_a[0]["lr"]  # cosine over the run, stepped per batch
    last = torch.load(a / "last.pt", weights_only=False)
    assert last["ema"]["updates"] == 4  # two steps per epoch, two epochs
    # The saved checkpoint is the EMA of the weights, not the last weights.
    saved = torch.load(a / "model.pt", weights_only=True)
    assert any(not torch.equal(saved[k], v) for k, v in last["model"].items() if v.dtype.is_floating_point)
    # An augmented run does not resume as a seed run.
    assert train.main([*common[:-3], "--out", str(a), "--epochs", "3", "--resume"]) == 2


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = loop.warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.5) and lrs[12:] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_recipe_switches_turn_off_one_at_a_time(capsys):
    from training import ablate
    from training.recipes import RECIPES, SWITCHES, get_recipe

    full = RECIPES["augmented"]
    no_ema = get_recipe("augmented", ["ema"])
    assert no_ema.name == "augmented-no-ema" and no_ema.ema_decay is None
    assert no_ema.mixup_alpha == full.mixup_alpha > 0 and no_ema.scale_jitter == full.scale_jitter
    # strong is augmented without the two switches that measured harmful
    assert get_recipe("augmented", ["jitter", "mix"]) == dataclasses.replace(RECIPES["strong"], name="augmented-no-jitter-no-mix")
    bare = get_recipe("augmented", list(SWITCHES))
    assert (bare.warmup_epochs, bare.ema_decay, bare.scale_jitter, bare.translate, bare.mixup_alpha,
            bare.cutmix_alpha) == (0.0, None, None, 0.0, 0.0, 0.0)
    assert bare.epochs_per_t_max == full.epochs_per_t_max  # the same length: only switches go
    with pytest.raises(ValueError, match="unknown switch dropout: choose from schedule, ema, jitter, mix"):
        get_recipe("strong", ["dropout"])
    assert ablate.recipe_args("augmented-no-ema") == ["--recipe", "augmented", "--without", "ema"]
    assert ablate.recipe_args("strong") == ["--recipe", "strong"]
    assert ablate.recipe_args("seed") == ["--recipe", "seed"]
    assert ablate.main(["--data", "x.h5", "--epochs", "1", "--variants", "strong-no-tta"]) == 2
    assert "unknown variant(s) strong-no-tta" in capsys.readouterr().err
