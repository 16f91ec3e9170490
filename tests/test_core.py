"""Specs and transforms: the seed's constants, and training and evaluation sharing them."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from galaxy_morph import GALAXY10_CLASSES, SPECS, get_spec
from galaxy_morph.specs import ALL_SPECS, EXTRA_SPECS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from galaxy_morph.transforms import eval_transform, to_pil, torchvision_eval_transform, train_transform


def test_classes():
    assert len(GALAXY10_CLASSES) == 10 == len(set(GALAXY10_CLASSES))
    assert GALAXY10_CLASSES[0] == "Disturbed" and GALAXY10_CLASSES[9] == "Edge-on with Bulge"


def test_seed_specs():
    b0, b2 = get_spec("b0"), get_spec("b2")
    assert (b0.library, b0.arch, b0.resize, b0.crop) == ("torchvision", "efficientnet_b0", 128, 128)
    assert b0.mean == b0.std == (0.5, 0.5, 0.5)
    assert (b0.lr, b0.t_max, b0.label_smoothing, b0.batch_size) == (3e-4, 30, 0.05, 64)
    assert (b2.library, b2.arch, b2.resize, b2.crop) == ("timm", "efficientnet_b2", 260, 224)
    assert (b2.mean, b2.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (b2.lr, b2.t_max, b2.label_smoothing, b2.batch_size) == (2e-4, 30, 0.0, 32)
    for s in ALL_SPECS.values():
        assert s.hflip_p == 0.5 and s.rotation_deg == 180
        assert ModelSpec.from_dict(s.to_dict()) == s
    assert list(SPECS) == ["b0", "b2"] and list(EXTRA_SPECS) == ["convnext"]


def test_convnext_spec_builds_and_has_a_cam_layer():
    from galaxy_morph.models import build_model, classifier_layer

    spec = get_spec("convnext")
    assert (spec.library, spec.arch, spec.resize, spec.crop) == ("timm", "convnext_nano", 224, 224)
    model = build_model(spec, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, spec.crop, spec.crop)).shape == (1, 4)
    assert classifier_layer(model) is model.stages[-1]


def test_unknown_spec():
    with pytest.raises(ValueError, match="unknown model 'b7'"):
        get_spec("b7")
    with pytest.raises(ValueError, match="choose one of b0, b2, convnext"):
        get_spec("resnet")


def _params(tf, kind):
    return [t for t in tf.transforms if isinstance(t, kind)]


@pytest.mark.parametrize("name", sorted(ALL_SPECS))
def test_train_and_eval_share_constants(name):
    spec = get_spec(name)
    tr, ev = train_transform(spec), torchvision_eval_transform(spec)
    for tf in (tr, ev):
        (resize,), (crop,), (norm,) = _params(tf, T.Resize), _params(tf, T.CenterCrop), _params(tf, T.Normalize)
        assert resize.size == spec.resize and list(crop.size) == [spec.crop, spec.crop]
        assert tuple(norm.mean) == spec.mean and tuple(norm.std) == spec.std
    (flip,), (rot,) = _params(tr, T.RandomHorizontalFlip), _params(tr, T.RandomRotation)
    assert flip.p == spec.hflip_p and list(rot.degrees) == [-spec.rotation_deg, spec.rotation_deg]
    assert not _params(ev, T.RandomHorizontalFlip) and not _params(ev, T.RandomRotation)


@pytest.mark.parametrize("name, size", [("b0", 256), ("b0", 69), ("b2", 256), ("b2", 64), ("convnext", 256)])
def test_output_shapes(name, size):
    spec = get_spec(name)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    for tf in (train_transform(spec), eval_transform(spec)):
        x = tf(img)
        assert x.shape == (3, spec.crop, spec.crop) and x.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(ALL_SPECS))
def test_eval_transform_without_torchvision_computes_torchvisions_tensors(name):
    """galaxy_morph.preprocess (what an ONNX worker runs) against torchvision's Resize, CenterCrop,
    ToTensor, Normalize: equal, for the real samples and odd shapes, at the spec's and a small size."""
    from pathlib import Path

    from galaxy_morph.imaging import decode_image

    samples = sorted((Path(__file__).resolve().parents[1] / "samples" / "galaxy10_decals").glob("class_*_[05].jpg"))
    rng = np.random.default_rng(1)
    images = [decode_image(p.read_bytes()) for p in samples] + [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
        ((100, 333), (257, 64), (300, 300), (128, 128), (97, 131), (8, 9))]
    for spec in (get_spec(name), ModelSpec.from_dict({**get_spec(name).to_dict(), "resize": 76, "crop": 64})):
        ours, theirs = eval_transform(spec), torchvision_eval_transform(spec)
        for im in images:
            assert torch.equal(ours(im), theirs(im)), (spec.resize, spec.crop, im.size)


def test_eval_normalisation_values():
    spec = get_spec("b0")
    x = eval_transform(spec)(Image.new("RGB", (256, 256), (255, 0, 128)))
    # (v/255 - 0.5) / 0.5
    assert torch.allclose(x[:, 64, 64], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-5)


def test_to_pil():
    arr = np.zeros((8, 8, 3), np.uint8)
    assert to_pil(arr).mode == "RGB" and to_pil(arr).size == (8, 8)
    assert to_pil(Image.new("L", (4, 4))).mode == "RGB"


def test_strong_jitter_is_one_affine_warp_from_the_spec():
    spec = get_spec("b2")
    tf = train_transform(spec, scale=(0.9, 1.1), translate=0.05)
    (affine,) = _params(tf, T.RandomAffine)
    assert list(affine.degrees) == [-spec.rotation_deg, spec.rotation_deg]
    assert tuple(affine.scale) == (0.9, 1.1) and tuple(affine.translate) == (0.05, 0.05)
    assert not _params(tf, T.RandomRotation)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert tf(img).shape == (3, spec.crop, spec.crop)
