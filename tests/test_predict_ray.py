"""Offline classification on a real local Ray (ray.init(num_cpus=2)) against the handler in-process.

    .venv/bin/python -m pytest -q tests/test_predict_ray.py

The checkpoints are the session's (tests/conftest.py make_checkpoints): random-init B0/B2 whose
batch-norm statistics are fitted on a few real samples and whose heads are random; unlike plain
random-init ones they give different labels to different galaxies, so equal labels mean something. The reference is the TorchServe handler itself
(handle() with a real ts Context) and galaxy_morph.ensemble, as the workflow combines them.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from galaxy_morph.specs import GALAXY10_CLASSES
from prediction import ray_predict, similarity

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "samples" / "galaxy10_decals").glob("class_*.jpg"))
SUBSET = SAMPLES[::5]  # 20 images, 2 per class


@pytest.fixture(scope="module")
def run_dir(served_archives) -> Path:
    return served_archives[0]  # conftest.make_checkpoints: B0 and B2 that tell galaxies apart


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def handler_answers(ckpt: Path, name: str, images: list[bytes], embedding: bool = False) -> list[dict]:
    """What the server's handler answers for these image bytes (one batch, real ts Context)."""
    from handlers.galaxy_handler import GalaxyHandler
    from tests.test_handler import make_context

    ctx = make_context(ckpt, images, name=name)
    h = GalaxyHandler()
    h.initialize(ctx)
    out = h.handle([{"body": b, **({"embedding": b"true"} if embedding else {})} for b in images], ctx)
    return [json.loads(o) if isinstance(o, (str, bytes)) else o for o in out]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(*args) -> int:
    return ray_predict.main([*map(str, args), "--quiet"])


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_hdf5_to_parquet_resumes_by_shard(tmp_path, run_dir, local_ray, capsys):
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in SUBSET[:12]])
    h5 = tmp_path / "survey.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = pixels
        f["ans"] = np.zeros(len(pixels), dtype=np.int64)
    out = tmp_path / "survey.parquet"
    args = ("--input", h5, "--out", out, "--run", run_dir, "--model", "b0", "--shard-size", 5, "--embeddings")

    assert run_cli(*args, "--max-shards", 1) == 3  # stopped early: one shard of three written
    assert not out.exists()
    first = out.with_name(out.name + ".parts") / "shard-000000.parquet"
    table = pq.read_table(first)
    marked = table.set_column(table.schema.get_field_index("error"), "error",
                              [["kept from the first run"] * table.num_rows])
    pq.write_table(marked, first)

    assert run_cli(*args) == 0
    result = pq.read_table(out).to_pylist()
    assert [r["id"] for r in result] == [str(i) for i in range(12)]
    assert [r["error"] for r in result[:5]] == ["kept from the first run"] * 5  # not classified again
    assert all(r["error"] == "" for r in result[5:])
    assert not out.with_name(out.name + ".parts").exists()
    # The server gets each HDF5 row as PNG (bulk classifier): same labels from those bytes.
    expected = handler_answers(run_dir / "b0", "galaxy-b0", [png(a) for a in pixels])
    assert [r["label"] for r in result] == [e["label"] for e in expected]
    assert isinstance(result[0]["confidence"], float) and result[0]["model"] == "galaxy-b0"

    # --embeddings (make predict EMBEDDINGS=1): the handler's own embedding, and a similarity index
    # over the catalogue answers the k nearest from the CLI
    served = handler_answers(run_dir / "b0", "galaxy-b0", [png(pixels[7])], embedding=True)
    assert len(result[7]["embedding_b0"]) == 1280
    assert np.allclose(result[7]["embedding_b0"], served[0]["embedding"], atol=1e-3)
    index_file = tmp_path / "survey.npz"
    assert similarity.main(["build", "--catalog", str(out), "--out", str(index_file)]) == 0
    capsys.readouterr()
    assert similarity.main(["query", "--index", str(index_file), "--id", "7", "--k", "3", "--space", "b0",
                            "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(found) == 3 and "7" not in [f["id"] for f in found]
    assert all(f["label"] == result[int(f["id"])]["class_name"] for f in found)
    assert [f["distance"] for f in found] == sorted(f["distance"] for f in found)
    # CSV has no list column: refused with a message before anything runs
    assert run_cli("--input", h5, "--out", tmp_path / "c.csv", "--run", run_dir, "--embeddings") == 1
    assert "Parquet only" in capsys.readouterr().err
    make = subprocess.run(["make", "-n", "predict", "INPUT=x", "OUT=y.parquet", "EMBEDDINGS=1"], cwd=REPO,
                          capture_output=True, text=True)
    assert "--embeddings" in make.stdout, make.stdout + make.stderr


def test_parquet_shards_input(tmp_path, run_dir, local_ray):
    import pyarrow as pa

    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        part = SUBSET[k * 3:(k + 1) * 3]
        pq.write_table(pa.table({"id": [p.stem for p in part], "image": [p.read_bytes() for p in part]}),
                       shards / f"part-{k}.parquet")
    out = tmp_path / "b2.csv"
    assert run_cli("--input", shards, "--out", out, "--run", run_dir, "--model", "b2") == 0
    rows = read_csv(out)
    assert [r["id"] for r in rows] == [p.stem for p in SUBSET[:6]]
    expected = handler_answers(run_dir / "b2", "galaxy-b2", [p.read_bytes() for p in SUBSET[:6]])
    assert [int(r["label"]) for r in rows] == [e["label"] for e in expected]


@pytest.mark.parametrize("case, message", [
    ("missing-input", "input not found"),
    ("bad-suffix", "must end in .csv or .parquet"),
    ("no-checkpoint", "no b2 checkpoint"),
    ("out-exists", "already exists"),
    ("weighted-without-f1", "weighted rule needs"),
    ("not-h5", "not a readable HDF5 file"),
])
def test_bad_arguments_exit_1_with_a_message(tmp_path, run_dir, capsys, case, message):
    only_b0 = tmp_path / "only_b0"
    shutil.copytree(run_dir / "b0", only_b0 / "b0")
    (tmp_path / "exists.csv").write_text("id\n")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5")
    samples = REPO / "samples" / "galaxy10_decals"
    args = {
        "missing-input": ["--input", tmp_path / "nope", "--out", tmp_path / "a.csv"],
        "bad-suffix": ["--input", samples, "--out", tmp_path / "a.json"],
        "no-checkpoint": ["--input", samples, "--out", tmp_path / "a.csv", "--run", only_b0],
        "out-exists": ["--input", samples, "--out", tmp_path / "exists.csv", "--run", run_dir],
        "weighted-without-f1": ["--input", samples, "--out", tmp_path / "a.csv", "--run", run_dir,
                                "--rule", "weighted"],
        "not-h5": ["--input", tmp_path / "fake.h5", "--out", tmp_path / "a.csv"],
    }[case]
    assert ray_predict.main([str(a) for a in args]) == 1
    assert message in capsys.readouterr().err


def test_cli_process_exit_status_and_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prediction.ray_predict", "--input", str(tmp_path / "none"),
                        "--out", str(tmp_path / "x.csv")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: input not found")


def assert_same_answers(got: list[dict], want: list[dict], what: str) -> None:
    """Labels identical, probabilities within 1e-4, the same in_distribution (and members, for the workflow)."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["label"] == w["label"], f"{what}: image {i}"
        assert list(g["probabilities"]) == list(w["probabilities"]), what
        assert np.allclose(list(g["probabilities"].values()), list(w["probabilities"].values()), atol=1e-4), \
            f"{what}: image {i}"
        assert g["in_distribution"] == w["in_distribution"], f"{what}: image {i}"
        for k in ("model", "version", "calibrated", "source", "rule"):
            assert g.get(k) == w.get(k), f"{what}: image {i} {k}: {g.get(k)} != {w.get(k)}"
        for m in ("b0", "b2"):
            if m in w:
                assert_same_answers([g[m]], [w[m]], f"{what} member {m}")


@pytest.mark.server
def test_one_answer_path_everywhere(torchserve, served_archives, local_ray, tmp_path):
    """The 100 real samples through /predictions, /wfpredict, Predictor.answer, make predict (Ray) and
    the answers make queue stores: the same labels, probabilities within 1e-4, the same
    in_distribution; /explanations' "predicted" is /predictions' label for the same image."""
    from concurrent.futures import ThreadPoolExecutor

    from galaxy_morph import Predictor
    from labelling import queue
    from labelling.store import LabelStore

    run, _ = served_archives
    images = [p.read_bytes() for p in SAMPLES]
    client = torchserve.client()
    with ThreadPoolExecutor(8) as pool:
        served = {m: list(pool.map(lambda b, m=m: client.predict(f"galaxy-{m}", b), images)) for m in ("b0", "b2")}
        served["ensemble"] = list(pool.map(lambda b: client.predict_workflow("galaxy-ensemble", b), images))
        seed = list(pool.map(lambda b: client.predict_workflow("galaxy-ensemble", b, rule="seed"), images[::5]))
        explained = list(pool.map(lambda b: client.explain("galaxy-b0", b), images[::25]))
    assert len({a["label"] for a in served["ensemble"]}) >= 3, "the test checkpoints should tell galaxies apart"

    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.rule == served["ensemble"][0]["rule"] == "mean"
    assert_same_answers([predictor.answer(b) for b in images[:3]], served["ensemble"][:3], "Predictor.answer")
    ours = predictor.answer_batch(images)
    assert_same_answers(ours, served["ensemble"], "/wfpredict")
    for m in ("b0", "b2"):  # the members answer as the standalone models do (under the workflow's node names)
        assert_same_answers([{**a[m], "model": f"galaxy-{m}"} for a in ours], served[m], f"/predictions {m}")
        assert Predictor.from_run(run, m, device="cpu").answer(images[0])["probabilities"] == \
            pytest.approx(served[m][0]["probabilities"], abs=1e-4)
    seed_predictor = Predictor.from_run(run, rule="seed", device="cpu")
    assert_same_answers([seed_predictor.combine({m: a[m] for m in ("b0", "b2")}) for a in ours[::5]], seed,
                        "/wfpredict seed")
    assert all(a["label"] == a["b0"]["label"] for a in seed)  # the seed system: B0 answers
    for e, a in zip(explained, served["b0"][::25]):
        assert e["predicted"] == a["label"]

    # make predict: Ray's model actors over a folder with a subfolder and a broken file, written to a
    # catalogue (6 significant digits)
    folder = tmp_path / "cutouts"
    (folder / "deep").mkdir(parents=True)
    for i, p in enumerate(SAMPLES):
        shutil.copy(p, (folder / "deep" if i % 4 == 0 else folder) / p.name)
    (folder / "broken.jpg").write_bytes(images[0][:300])  # truncated JPEG
    out = tmp_path / "catalog.csv"
    assert run_cli("--input", folder, "--out", out, "--run", run, "--shard-size", 32) == 0
    rows = {Path(r["id"]).name: r for r in read_csv(out)}
    assert len(rows) == len(SAMPLES) + 1 and "deep/" + SAMPLES[0].name in {r["id"] for r in rows.values()}
    assert "image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["label"] == ""
    for p, a in zip(SAMPLES, served["ensemble"]):
        r = rows[p.name]
        assert int(r["label"]) == a["label"] and r["rule"] == a["rule"] and r["source"] == a["source"]
        assert np.allclose([float(r[c]) for c in GALAXY10_CLASSES], list(a["probabilities"].values()), atol=1e-4)
        assert r["in_distribution"] == str(a["in_distribution"]).lower()
        assert r["model"] == "galaxy-ensemble" and r["version"] == "b0 1.0 + b2 1.0"

    # make queue: the answers it stores for B0 and B2
    store_file = tmp_path / "labels.db"
    assert queue.main(["add", "--store", str(store_file), "--input", str(SAMPLES[0].parent), "--run", str(run),
                       "--source", "samples"]) == 0
    with LabelStore(store_file) as store:
        keys = {c["id"]: c["item_key"] for c in map(store.candidate, store.unlabelled("samples"))}
        stored = {(keys[a["candidate_id"]], a["model"]): a for a in store.answers()}
    assert len(keys) == len(SAMPLES)
    for m in ("b0", "b2"):
        for p, a in zip(SAMPLES, served[m]):
            s = stored[(p.name, f"galaxy-{m}")]
            assert np.allclose(s["probabilities"], list(a["probabilities"].values()), atol=1e-4)
            assert int(np.argmax(s["probabilities"])) == a["label"]
