"""Offline classification on a real local Ray (ray.init(num_cpus=2)) against the handler in-process.

    .venv/bin/python -m pytest -q tests/test_predict_ray.py

The checkpoints are made as the session's are (tests/conftest.py make_checkpoints): random-init
B0/B2 whose batch-norm statistics are fitted on a few real samples and whose heads are random;
unlike plain random-init ones they give different labels to different galaxies, so equal labels
mean something. (The same answers through the server, the Predictor, Ray and the queue:
tests/test_one_answer_path.py.) The reference is the TorchServe handler itself
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

from prediction import ray_predict, similarity

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "samples" / "galaxy10_decals").glob("class_*.jpg"))
SUBSET = SAMPLES[::5]  # 20 images, 2 per class


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from tests.conftest import make_checkpoints  # B0 and B2 that tell galaxies apart

    return make_checkpoints(tmp_path_factory.mktemp("ray_run"))


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
