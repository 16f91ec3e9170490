"""The synthetic Galaxy10 generator: schema, classes, determinism, image content, positions, mosaic."""
import h5py
import numpy as np
import pytest

from simulation import synthetic
from galaxy_morph.data import inspect_h5
from galaxy_morph.specs import GALAXY10_CLASSES

N = 60
SIZE = 96


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "syn.h5", N, seed=3, size=SIZE, chunk=16)


def test_schema_dtypes_and_shapes(h5):
    with h5py.File(h5, "r") as f:
        assert f["images"].shape == (N, SIZE, SIZE, 3)
        assert f["images"].dtype == np.uint8
        assert f["ans"].shape == (N,)
        assert np.issubdtype(f["ans"].dtype, np.integer)
        for key in ("ra", "dec"):
            assert f[key].shape == (N,) and f[key].dtype == np.float64
        assert f["redshift"].shape == (N,) and np.issubdtype(f["redshift"].dtype, np.floating)
        assert np.allclose(f["pxscale"][:], 0.262)
        assert np.all((f["dec"][:] >= -90) & (f["dec"][:] <= 90))
    info = inspect_h5(h5)
    assert info["n"] == N and info["size"] == SIZE
    assert info["class_names"] == list(GALAXY10_CLASSES)


def test_all_classes_present_and_balanced(h5):
    with h5py.File(h5, "r") as f:
        counts = np.bincount(f["ans"][:], minlength=10)
    assert len(counts) == 10
    assert counts.min() == counts.max() == N // 10


def test_class_weights_change_the_mix(tmp_path):
    weights = [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    path = synthetic.generate(tmp_path / "w.h5", 20, seed=1, size=64, class_weights=weights)
    with h5py.File(path, "r") as f:
        assert set(f["ans"][:].tolist()) <= {2, 9}


def test_same_seed_gives_identical_bytes(h5, tmp_path):
    # other chunking and two worker processes: still the same file
    again = synthetic.generate(tmp_path / "again.h5", N, seed=3, size=SIZE, chunk=7, workers=2)
    with h5py.File(h5, "r") as a, h5py.File(again, "r") as b:
        for key in ("images", "ans", "ra", "dec"):
            assert np.array_equal(a[key][:], b[key][:])
        assert np.array_equal(a["redshift"][:], b["redshift"][:], equal_nan=True)


def test_different_seeds_differ():
    a = synthetic.render_galaxy(5, np.random.default_rng(1), 64)
    b = synthetic.render_galaxy(5, np.random.default_rng(2), 64)
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def test_redshift_has_some_nan_and_positive_values(tmp_path):
    path = synthetic.generate(tmp_path / "z.h5", 200, seed=0, size=32)
    with h5py.File(path, "r") as f:
        z = f["redshift"][:]
    assert np.isnan(z).any()
    assert (z[~np.isnan(z)] > 0).all()


def test_images_have_dark_sky_and_bright_centre(h5):
    with h5py.File(h5, "r") as f:
        images = f["images"][:].astype(np.float32)
        labels = f["ans"][:]
    c, r = SIZE // 2, SIZE // 16
    for img, label in zip(images, labels):
        grey = img.mean(axis=2)
        sky = np.median(np.concatenate([grey[:SIZE // 8].ravel(), grey[-SIZE // 8:].ravel()]))
        centre = grey[c - r:c + r, c - r:c + r].mean()
        assert 15 < sky < 60, f"class {label}: sky level {sky}"
        assert centre > sky + 40, f"class {label}: centre {centre} not brighter than sky {sky}"
        assert grey.std() > 3, f"class {label}: blank image"


def test_sky_has_noise_and_centre_is_yellower_than_disk_for_spirals():
    rng = np.random.default_rng(0)
    img = synthetic.render_galaxy(6, rng, 256).astype(np.float32)
    corner = img[:40, :40].reshape(-1, 3)
    assert corner.std(axis=0).min() > 3  # noise, not a flat background
    centre = img[124:132, 124:132].reshape(-1, 3).mean(axis=0)
    r = np.hypot(*(np.indices(img.shape[:2]) - 127.5))
    disk = img[(r > 15) & (r < 30)].mean(axis=0)
    # bulge: redder (z minus g) than the disk around it, even where its core clips to white
    assert centre[0] - centre[2] > disk[0] - disk[2] + 10


def test_every_class_renders_and_rejects_unknown_class():
    rng = np.random.default_rng(0)
    for cls in range(10):
        img = synthetic.render_galaxy(cls, rng, 64)
        assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    with pytest.raises(ValueError):
        synthetic.render_galaxy(10, rng, 64)


def test_duplicate_positions_exist(tmp_path):
    path = synthetic.generate(tmp_path / "dup.h5", 700, seed=0, size=32)
    with h5py.File(path, "r") as f:
        pos = np.stack([f["ra"][:], f["dec"][:]], axis=1)
    _, counts = np.unique(pos, axis=0, return_counts=True)
    repeated = int((counts > 1).sum())
    assert 1 <= repeated <= 5  # about 0.3 % of rows, as in the real catalogue


def test_mosaic_written(h5, tmp_path):
    from PIL import Image

    png = synthetic.save_mosaic(h5, tmp_path / "mosaic.png", per_class=3, thumb=48)
    assert png.is_file() and png.stat().st_size > 1000
    with Image.open(png) as im:
        w, h = im.size
    assert h >= 10 * 48 and w > 3 * 48


def test_cli_writes_file(tmp_path):
    out = tmp_path / "cli.h5"
    assert synthetic.main(["--out", str(out), "--n", "10", "--size", "48", "--seed", "2"]) == 0
    assert inspect_h5(out)["n"] == 10
    assert not list(tmp_path.glob(".*.tmp"))


def test_sky_is_grey_and_images_are_jpeg_like():
    # The real cutouts' sky is neutral grey (the stretch adds one offset to every band) and they are
    # JPEGs: re-encoding at the same quality leaves an already-compressed image almost unchanged.
    import io

    from PIL import Image

    for cls in range(10):
        img = synthetic.render_galaxy(cls, np.random.default_rng(cls), 128, jpeg_quality=synthetic.JPEG_QUALITY)
        sky = np.median(img[:16].reshape(-1, 3).astype(np.float32), axis=0)
        assert sky.max() - sky.min() < 8, f"class {cls}: coloured sky {sky}"
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=synthetic.JPEG_QUALITY)
        again = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.abs(again.astype(np.float32) - img).mean() < 2.0


def test_sim_stats_measure_what_the_generator_draws():
    # simulation.stats is how the generator is matched to real galaxies: check it sees the
    # difference the classes are built from (edge-ons are thin, round smooth galaxies are round)
    from simulation.stats import central_source_stats, summary

    edge_on = summary([central_source_stats(synthetic.render_galaxy(8, np.random.default_rng(i))) for i in range(6)])
    round_ = summary([central_source_stats(synthetic.render_galaxy(2, np.random.default_rng(i))) for i in range(6)])
    assert edge_on["axis_ratio"][0] < 0.4 < 0.75 < round_["axis_ratio"][0]
    blank = np.full((128, 128, 3), 30, np.uint8)
    assert central_source_stats(blank) is None


def test_cas_asymmetry_and_clumpiness_separate_what_they_should():
    # A smooth round source is its own 180-degree turn and has nothing above its smoothed copy; the
    # same source with a companion on one side is asymmetric, and knots on it make it clumpy.
    from simulation.stats import cas_asymmetry_clumpiness

    yy, xx = np.indices((96, 96), dtype=np.float32)
    smooth = 100 * np.exp(-np.hypot(yy - 47.5, xx - 47.5) / 6)
    lopsided = smooth + 60 * np.exp(-np.hypot(yy - 47.5, xx - 62) ** 2 / 18)
    knots = smooth.copy()
    for y, x in ((40, 52), (55, 44), (50, 56), (42, 41)):
        knots += 80 * np.exp(-np.hypot(yy - y, xx - x) ** 2 / 2)
    a_smooth, s_smooth = cas_asymmetry_clumpiness(smooth, 47.5, 47.5, 15, noise=0.0)
    a_lopsided, _ = cas_asymmetry_clumpiness(lopsided, 47.5, 47.5, 15, noise=0.0)
    _, s_knots = cas_asymmetry_clumpiness(knots, 47.5, 47.5, 15, noise=0.0)
    assert abs(a_smooth) < 0.01 and a_lopsided > 0.1
    assert s_knots > 2 * s_smooth
