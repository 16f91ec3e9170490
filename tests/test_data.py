"""HDF5 reader: schema errors, class_names attribute, DataLoader-safe dataset. Also `make_h5` for other tests."""
import json

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from galaxy_morph import GALAXY10_CLASSES, get_spec
from galaxy_morph.data import DataError, GalaxyH5Dataset, file_sha256, inspect_h5
from galaxy_morph.transforms import eval_transform


def make_h5(path, n=60, size=64, num_classes=10, seed=0, class_names=None, learnable=True, **override):
    """A tiny Galaxy10-schema file: each class a different mean brightness, so a model can learn it."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    if learnable:
        images += (labels * (190 // num_classes)).astype(np.uint8)[:, None, None, None]
    data = {"images": images, "ans": labels.astype(np.uint8), "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-30, 30, n), "redshift": rng.uniform(0, 0.3, n), "pxscale": np.full(n, 0.262)}
    data.update(override)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
        if class_names is not None:
            f.attrs["class_names"] = json.dumps(list(class_names))
    return path


def test_inspect_default_classes(tmp_path):
    info = inspect_h5(make_h5(tmp_path / "d.h5", n=30, size=32))
    assert info["n"] == 30 and info["size"] == 32
    assert info["class_names"] == list(GALAXY10_CLASSES)
    assert info["labels"].tolist() == [i % 10 for i in range(30)]
    assert info["ra"].shape == (30,) and info["dec"].shape == (30,)


def test_class_names_attribute_sets_number_of_classes(tmp_path):
    names = ["smooth", "featured", "artifact"]
    info = inspect_h5(make_h5(tmp_path / "d.h5", n=12, size=69, num_classes=3, class_names=names))
    assert info["class_names"] == names and info["size"] == 69


@pytest.mark.parametrize("override, message", [
    ({"images": None}, "missing dataset 'images'"),
    ({"ans": None}, "missing dataset 'ans'"),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, "must be (N, S, S, 3)"),
    ({"images": np.zeros((4, 8, 6, 3), np.uint8)}, "must be (N, S, S, 3)"),
    ({"images": np.zeros((4, 8, 8, 3), np.float32)}, "must be uint8"),
    ({"ans": np.zeros(5, np.uint8)}, "'ans' must be (4,)"),
    ({"ans": np.zeros(4, np.float32)}, "integer class indices"),
    ({"ans": np.array([0, 1, 10, 3], np.int64)}, "labels out of range 0..9: [10]"),
    ({"ans": np.array([0, -1, 2, 3], np.int64)}, "labels out of range"),
])
def test_schema_errors(tmp_path, override, message):
    base = {"images": np.zeros((4, 8, 8, 3), np.uint8), "ans": np.arange(4), "ra": None, "dec": None,
            "redshift": None, "pxscale": None}
    base.update(override)
    path = make_h5(tmp_path / "bad.h5", n=4, **base)
    with pytest.raises(DataError) as e:
        inspect_h5(path)
    assert message in str(e.value)


def test_labels_out_of_range_for_own_class_names(tmp_path):
    path = make_h5(tmp_path / "d.h5", n=6, size=8, num_classes=3, class_names=["a", "b"])
    with pytest.raises(DataError, match="out of range 0..1"):
        inspect_h5(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        inspect_h5(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5"):
        inspect_h5(tmp_path / "junk.h5")


def test_dataset_with_workers(tmp_path):
    path = make_h5(tmp_path / "d.h5", n=10, size=64)
    spec = get_spec("b0")
    ds = GalaxyH5Dataset(path, [1, 3, 5], eval_transform(spec))
    assert len(ds) == 3
    x, y = ds[1]
    assert x.shape == (3, spec.crop, spec.crop) and y == 3
    # Workers open their own handle: this fails if an open h5py handle is pickled into them.
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.cat([b[1] for b in batches]).tolist() == [1, 3, 5]


def test_file_sha256(tmp_path):
    import hashlib
    p = tmp_path / "f.bin"
    p.write_bytes(b"galaxy" * 1000)
    assert file_sha256(p) == hashlib.sha256(b"galaxy" * 1000).hexdigest()
