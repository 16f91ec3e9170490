"""ImageNet weights through the libraries' own caches, offline: a state dict made here and placed
where torchvision / timm look for it is what the model starts from; without it the command stops
before anything is written, naming the cause and the way on."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from galaxy_morph.models import PretrainedUnavailable, build_model, pretrained_source
from tests.test_data import make_h5
from training import train


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty torch and Hugging Face caches, and HF_HUB_OFFLINE=1: nothing may be downloaded."""
    env = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def place_torchvision_b0(seed=0) -> dict:
    """An ImageNet-shaped (1000 classes) efficientnet_b0 state dict in torchvision's hub cache."""
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    path = pretrained_source("b0")["cache"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def test_torchvision_weights_come_from_its_cache(offline_caches):
    placed = place_torchvision_b0()
    assert pretrained_source("b0")["cache"].startswith(offline_caches["TORCH_HOME"])
    assert pretrained_source("b0")["cache"].endswith("efficientnet_b0_rwightman-7f5810bc.pth")
    model = build_model("b0", num_classes=10, pretrained=True)
    own = model.state_dict()
    # The backbone is the placed one; the 10-class head is new.
    assert torch.equal(own["features.0.0.weight"], placed["features.0.0.weight"])
    assert torch.equal(own["features.7.0.block.1.0.weight"], placed["features.7.0.block.1.0.weight"])
    assert own["classifier.1.weight"].shape == (10, 1280) != placed["classifier.1.weight"].shape
    fresh = build_model("b0", num_classes=10)
    assert not torch.equal(fresh.state_dict()["features.0.0.weight"], placed["features.0.0.weight"])


def test_training_starts_from_cached_weights(offline_caches, tmp_path):
    placed = place_torchvision_b0(seed=1)
    data = make_h5(tmp_path / "tiny.h5", n=40, size=32)
    out = tmp_path / "run"
    assert train.main(["--model", "b0", "--data", str(data), "--out", str(out), "--epochs", "1",
                       "--limit-train", "8", "--batch-size", "8", "--lr", "1e-9", "--device", "cpu",
                       "--pretrained"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["hparams"]["pretrained"] is True
    saved = torch.load(out / "model.pt", weights_only=True)
    # One step at lr 1e-9 leaves the first convolution where the ImageNet weights put it.
    assert torch.allclose(saved["features.0.0.weight"], placed["features.0.0.weight"], atol=1e-6)


def test_offline_without_cache_stops_before_training(offline_caches, tmp_path, capsys):
    data = make_h5(tmp_path / "tiny.h5", n=40, size=32)
    out = tmp_path / "run"
    with pytest.raises(PretrainedUnavailable):
        build_model("b0", pretrained=True)
    assert train.main(["--model", "b0", "--data", str(data), "--out", str(out), "--pretrained",
                       "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: ImageNet weights for b0" in err and "efficientnet_b0_rwightman-7f5810bc.pth" in err
    assert "PRETRAINED=0" in err and "--weights FILE" in err
    assert not out.exists()
    assert train.main(["--model", "b0", "--data", str(data), "--out", str(out), "--pretrained",
                       "--weights", str(tmp_path / "w.pt")]) == 2
    assert "choose one of --weights FILE and --pretrained" in capsys.readouterr().err


def test_cli_offline_exit_code(offline_caches, tmp_path):
    data = make_h5(tmp_path / "tiny.h5", n=40, size=32)
    r = subprocess.run([sys.executable, "-m", "training.train", "--model", "b0", "--data", str(data),
                        "--out", str(tmp_path / "run"), "--pretrained"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **offline_caches})
    assert r.returncode == 2 and "could not be downloaded" in r.stderr and "PRETRAINED=0" in r.stderr
    assert not (tmp_path / "run").exists()


TIMM_CHECK = textwrap.dedent("""
    import json, pathlib, sys
    import safetensors.torch, timm, torch
    from galaxy_morph.models import PretrainedUnavailable, build_model, pretrained_source

    out = {}
    for name in ("b2", "convnext"):
        try:
            build_model(name, pretrained=True)
            out[name + "_without_cache"] = "loaded"
        except PretrainedUnavailable as e:
            out[name + "_without_cache"] = str(e)
    # timm asks huggingface_hub for model.safetensors of its hf_hub_id: place one in the hub cache.
    src = pretrained_source("b2")
    torch.manual_seed(3)
    placed = timm.create_model("efficientnet_b2").state_dict()
    repo = pathlib.Path(src["cache"]).parents[2]
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in placed.items()},
                                repo / "snapshots" / commit / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = build_model("b2", num_classes=7, pretrained=True)
    out["stem_equal"] = torch.equal(model.conv_stem.weight, placed["conv_stem.weight"])
    out["head"] = model.classifier.out_features
    out["repo"] = str(repo)
    print(json.dumps(out))
""")


def test_timm_weights_from_hf_cache_offline(offline_caches, tmp_path):
    r = subprocess.run([sys.executable, "-c", TIMM_CHECK], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **offline_caches}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["repo"] == os.path.join(offline_caches["HF_HOME"], "hub", "models--timm--efficientnet_b2.ra_in1k")
    assert out["stem_equal"] is True and out["head"] == 7
    for name in ("b2", "convnext"):
        assert out[f"{name}_without_cache"].startswith(f"ImageNet weights for {name}")
        assert "PRETRAINED=0" in out[f"{name}_without_cache"]
    assert "convnext_nano" in out["convnext_without_cache"]
