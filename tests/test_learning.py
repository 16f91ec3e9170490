"""Training learns: B0 from random initialisation tells two synthetic morphologies apart on CPU.

The whole path runs (HDF5 -> split -> train transform -> B0 -> loss -> AdamW -> checkpoint -> eval
transform), on 32 px images with the B0 spec at 32 px (`--input-size 32`) so that it fits in under a minute of one
core (about 45 s of CPU time measured). Chance is 1/2 and the held-out accuracy must reach 0.85
(1.0 measured; validation 0.5, 0.5, 0.89, 0.97, 1.0 over the five epochs): a loss that ignores the
labels, an optimiser that does not step, or a transform that scrambles images or labels stays at
chance.
"""
import json

import h5py
import numpy as np
import pytest
import torch

from galaxy_morph import specs
from galaxy_morph.data import load_split
from galaxy_morph.models import load_checkpoint
from simulation.synthetic import generate
from training import train
from training.evaluate import predict_split

# Round Smooth and Edge-on without Bulge: shapes a person tells apart at a glance, at any orientation.
CLASSES = (2, 8)
SIZE = 32
MIN_ACCURACY = 0.85


@pytest.fixture(scope="module")
def two_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    weights = [1.0 if c in CLASSES else 0.0 for c in range(10)]
    generate(root / "ten.h5", n=360, size=SIZE, class_weights=weights, seed=7)
    with h5py.File(root / "ten.h5", "r") as src, h5py.File(root / "two.h5", "w") as dst:
        ans = src["ans"][:]
        dst.create_dataset("images", data=src["images"][:])
        dst.create_dataset("ans", data=np.searchsorted(CLASSES, ans))
        for k in ("ra", "dec"):
            dst.create_dataset(k, data=src[k][:])
        dst.attrs["class_names"] = json.dumps([specs.GALAXY10_CLASSES[c] for c in CLASSES])
    return root / "two.h5"


def test_b0_learns_two_morphologies(two_shapes, tmp_path):
    out = tmp_path / "b0"
    assert train.main(["--model", "b0", "--data", str(two_shapes), "--out", str(out), "--epochs", "5",
                       "--t-max", "5", "--lr", "2e-3", "--batch-size", "16", "--workers", "0",
                       "--device", "cpu", "--input-size", str(SIZE)]) == 0
    ckpt = load_checkpoint(out)
    model, meta, small = ckpt.model, ckpt.meta, ckpt.spec
    assert (small.resize, small.crop, small.arch) == (SIZE, SIZE, "efficientnet_b0") and meta["num_classes"] == 2
    split, _ = load_split(out / "split.json")
    held_out = np.concatenate([split["val"], split["test"]])
    logp, y = predict_split(model, small, two_shapes, held_out, torch.device("cpu"), False, 64, 0)
    accuracy = float(np.mean(logp.argmax(1) == y))
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert accuracy >= MIN_ACCURACY, f"held-out accuracy {accuracy:.3f} (chance 0.5); history {history}"
