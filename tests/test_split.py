"""Split: stratified 80/10/10 per class, same (ra, dec) together, deterministic, saved and reloaded."""
import numpy as np
import pytest

from galaxy_morph.data import DataError, load_split, make_split, save_split


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_proportions_per_class():
    counts = [100, 200, 50, 30, 120]
    labels = np.random.default_rng(1).permutation(_labels(counts))  # rows need not be sorted by class
    split = make_split(labels, seed=42)
    allrows = np.concatenate([split[s] for s in ("train", "val", "test")])
    assert sorted(allrows.tolist()) == list(range(len(labels)))  # a partition
    for c, n in enumerate(counts):
        sizes = {s: int(np.sum(labels[split[s]] == c)) for s in split}
        assert sizes["val"] == round(0.1 * n) and sizes["test"] == round(0.1 * n)
        assert sizes["train"] == n - sizes["val"] - sizes["test"]


def test_deterministic_and_seed_dependent():
    labels = _labels([40] * 5)
    a, b, c = make_split(labels, seed=42), make_split(labels, seed=42), make_split(labels, seed=7)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])


def test_duplicate_positions_stay_together():
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 4, n)
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-20, 20, n)
    # 40 galaxies listed twice, with different labels, as in Galaxy10 DECaLS (tiny float noise too).
    for i in range(40):
        j = n - 1 - i
        ra[j], dec[j] = ra[i] + 1e-7, dec[i]
        labels[j] = (labels[i] + 1) % 4
    split = make_split(labels, ra, dec, seed=3)
    where = {int(r): s for s, rows in split.items() for r in rows}
    assert all(where[i] == where[n - 1 - i] for i in range(40))
    assert len(where) == n


def test_too_small_class():
    labels = _labels([30, 2, 30])
    with pytest.raises(DataError, match="class 'Merging' has only 2 distinct galaxies"):
        make_split(labels, class_names=["Disturbed", "Merging", "Round"])
    # Three rows at one position are one galaxy.
    labels = _labels([30, 3])
    ra, dec = np.arange(33.0), np.zeros(33)
    ra[31] = ra[32] = ra[30]
    with pytest.raises(DataError, match="only 1 distinct"):
        make_split(labels, ra, dec)


def test_save_and_load(tmp_path):
    split = make_split(_labels([20, 20]), seed=1)
    save_split(tmp_path / "split.json", split, data_sha256="abc", seed=1)
    loaded, meta = load_split(tmp_path / "split.json")
    assert meta == {"data_sha256": "abc", "seed": 1}
    assert all(np.array_equal(loaded[s], split[s]) for s in split)
