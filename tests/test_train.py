"""training.train on tiny files: one-epoch smoke, resume, split reuse, own class names, DDP with gloo, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from galaxy_morph.data import load_split
from galaxy_morph.models import load_checkpoint
from tests.test_data import make_h5
from training import train

FAST = ["--batch-size", "16", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_h5(tmp_path_factory.mktemp("data") / "tiny.h5", n=50, size=64)


def run(*argv):
    return train.main([*map(str, argv), *FAST])


def test_one_epoch_smoke_and_resume(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("--model", "b0", "--data", tiny, "--out", a, "--epochs", "2", "--limit-train", "16") == 0
    assert run("--model", "b0", "--data", tiny, "--out", b, "--epochs", "1", "--limit-train", "16") == 0
    assert sorted(p.name for p in b.iterdir()) == ["history.csv", "history.json", "last.pt", "meta.json",
                                                  "model.pt", "split.json"]
    meta = json.loads((b / "meta.json").read_text())
    assert meta["version"] == "1.0" and meta["epoch"] == 1 and meta["split_file"] == "split.json"
    assert meta["data"]["path"] == str(tiny) and meta["data"]["n"] == 50 and len(meta["data"]["sha256"]) == 64
    assert meta["hparams"]["lr"] == 3e-4 and meta["hparams"]["t_max"] == 30  # the spec's defaults
    assert meta["hparams"]["limit_train"] == 16
    assert set(meta["metrics"]) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert (b / "history.csv").read_text().splitlines()[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"

    assert run("--model", "b0", "--data", tiny, "--out", b, "--epochs", "2", "--limit-train", "16", "--resume") == 0
    assert run("--model", "b0", "--data", tiny, "--out", b, "--epochs", "3", "--resume", "--input-size", "32") == 2
    hist_a, hist_b = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert [h["epoch"] for h in hist_b] == [1, 2]
    # A resumed run is the uninterrupted run: same shuffles, augmentations, optimizer and schedule.
    for ha, hb in zip(hist_a, hist_b):
        for k in ("train_loss", "val_loss", "lr"):
            assert ha[k] == pytest.approx(hb[k], rel=1e-4, abs=1e-5), k
    best = max(hist_b, key=lambda h: h["val_acc"])
    assert json.loads((b / "meta.json").read_text())["metrics"]["val_acc"] == best["val_acc"]

    # The split was reused, and the model loads with the data's number of classes.
    assert (a / "split.json").read_text() == (b / "split.json").read_text()
    model = load_checkpoint(b).model
    assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 10)


def test_class_names_flow_into_model(tmp_path):
    data = make_h5(tmp_path / "three.h5", n=30, size=48, num_classes=3, class_names=["smooth", "disk", "odd"])
    assert run("--model", "b0", "--data", data, "--out", tmp_path / "o", "--epochs", "1",
               "--limit-train", "16") == 0
    ckpt = load_checkpoint(tmp_path / "o")
    model, meta = ckpt.model, ckpt.meta
    assert meta["num_classes"] == 3 and ckpt.class_names == ["smooth", "disk", "odd"]
    assert model.classifier[-1].out_features == 3
    split, smeta = load_split(tmp_path / "o" / "split.json")
    assert smeta["class_names"] == ["smooth", "disk", "odd"]
    assert sum(len(v) for v in split.values()) == 30


def test_given_split_is_used_and_copied(tiny, tmp_path):
    first = tmp_path / "first"
    # A split with a different seed, passed explicitly, wins over making one.
    from galaxy_morph.data import inspect_h5, make_split, save_split, file_sha256
    info = inspect_h5(tiny)
    split = make_split(info["labels"], info["ra"], info["dec"], seed=5)
    save_split(tmp_path / "s.json", split, data_sha256=file_sha256(tiny))
    assert run("--model", "b0", "--data", tiny, "--out", first, "--epochs", "1", "--split", tmp_path / "s.json",
               "--limit-train", "16") == 0
    got, _ = load_split(first / "split.json")
    assert np.array_equal(got["test"], split["test"])


def test_bad_input_clear_message_and_nothing_written(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--model", "b0", "--data", tmp_path / "missing.h5", "--out", out) == 2
    assert "data file not found" in capsys.readouterr().err
    bad = make_h5(tmp_path / "bad.h5", n=10, size=16, ans=np.full(10, 12))
    assert run("--model", "b0", "--data", bad, "--out", out) == 2
    assert "labels out of range" in capsys.readouterr().err
    small = make_h5(tmp_path / "small.h5", n=12, size=16, num_classes=6)  # 2 galaxies per class
    assert run("--model", "b0", "--data", small, "--out", out) == 2
    assert "at least 3 are needed" in capsys.readouterr().err
    assert run("--model", "b0", "--data", tiny, "--out", out, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert run("--model", "b0", "--data", tiny, "--out", out, "--split", tmp_path / "nope.json") == 2
    assert "split file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run("--model", "b7", "--data", tiny, "--out", out)
    assert e.value.code == 2 and "invalid choice: 'b7'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run("--model", "b0", "--data", tiny, "--out", out, "--input-size", "8")
    assert e.value.code == 2 and "--input-size 8: choose 16 to 1024 px" in capsys.readouterr().err
    assert not out.exists()


def test_cli_process_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.train", "--model", "b0", "--data", str(tmp_path / "x.h5"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: data file not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_distributed_two_processes_gloo(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "--model", "b0", "--data", str(tiny), "--out", str(out), "--epochs", "1", *FAST]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["hparams"]["world_size"] == 2
    assert len(json.loads((out / "history.json").read_text())) == 1
    load_checkpoint(out)
