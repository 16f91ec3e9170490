"""Checkpoint round trip: same outputs after save/load; meta describes the model; local weights file."""
import pytest
import torch

from galaxy_morph import get_spec
from galaxy_morph.specs import ModelSpec
from galaxy_morph.models import build_model, classifier_layer, load_checkpoint, read_meta, save_checkpoint


def test_round_trip_same_outputs(tmp_path):
    spec = get_spec("b0")
    torch.manual_seed(0)
    model = build_model(spec, num_classes=3).eval()
    names = ["a", "b", "c"]
    save_checkpoint(tmp_path / "ck", model, spec, names, version="1.0",
                    data={"path": "x.h5", "sha256": "f" * 64, "n": 9}, split_file="split.json",
                    hparams={"lr": 1e-3}, metrics={"val_acc": 0.5}, epoch=2)
    ckpt = load_checkpoint(tmp_path / "ck")
    loaded, meta = ckpt.model, ckpt.meta
    assert ckpt.spec == spec and ckpt.class_names == names and ckpt.version == "1.0"
    assert not loaded.training
    x = torch.randn(2, 3, spec.crop, spec.crop)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["num_classes"] == 3 and meta["class_names"] == names and meta["model"] == "b0"
    assert ModelSpec.from_dict(meta["spec"]) == spec and meta["version"] == "1.0" and meta["epoch"] == 2
    assert read_meta(tmp_path / "ck") == meta
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["meta.json", "model.pt"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint meta"):
        load_checkpoint(tmp_path)


def test_weights_file_skips_mismatched_head(tmp_path):
    spec = get_spec("b0")
    torch.manual_seed(1)
    donor = build_model(spec, num_classes=5)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    model = build_model(spec, num_classes=3, weights=tmp_path / "w.pt")
    own = model.state_dict()
    assert torch.equal(own["features.0.0.weight"], donor.state_dict()["features.0.0.weight"])
    assert own["classifier.1.weight"].shape == (3, 1280)
    with pytest.raises(FileNotFoundError):
        build_model(spec, weights=tmp_path / "nope.pt")


def test_classifier_layer():
    m = build_model("b0")
    assert classifier_layer(m) is m.features[-1]
