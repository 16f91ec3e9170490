"""The similarity index (prediction/similarity.py): exact search by numpy and faiss, leave-one-out by
hand, its file, and the CLI over real sample images embedded with the demo checkpoints."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from prediction import similarity
from prediction.similarity import BOTH, SimilarityError, SimilarityIndex, chance_level, main
from tests.conftest import REPO, SAMPLES

DEMO = REPO / "checkpoints" / "demo"


def random_index(n=300, seed=0) -> SimilarityIndex:
    rng = np.random.default_rng(seed)
    vectors = {"b0": rng.normal(size=(n, 12)), "b2": rng.normal(size=(n, 20))}
    return SimilarityIndex(vectors, [f"g{i}" for i in range(n)], [f"c{i % 7}" for i in range(n)])


def by_hand(index: SimilarityIndex, query: dict, k: int, space: str):
    """Cosine distances computed directly from the raw vectors."""
    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    if space == BOTH:
        d = [1 - (cos(index.vectors["b0"][i], query["b0"]) + cos(index.vectors["b2"][i], query["b2"])) / 2
             for i in range(len(index))]
    else:
        d = [1 - cos(index.vectors[space][i], query[space]) for i in range(len(index))]
    order = np.argsort(d, kind="stable")[:k]
    return [index.ids[i] for i in order], [d[i] for i in order]


@pytest.mark.parametrize("space", ["b0", "b2", BOTH])
def test_numpy_and_faiss_find_the_nearest_by_cosine_distance(space, monkeypatch):
    index = random_index()
    rng = np.random.default_rng(1)
    query = {"b0": rng.normal(size=12), "b2": rng.normal(size=20)}
    ids, distances = by_hand(index, query, 7, space)
    found = index.nearest(query, k=7, space=space)
    assert [n.id for n in found] == ids
    assert np.allclose([n.distance for n in found], distances, atol=1e-5)
    monkeypatch.setattr(similarity, "FAISS_MIN_ROWS", 1)  # the same index searched by faiss
    faiss_index = random_index()
    found = faiss_index.nearest(query, k=7, space=space)
    assert not isinstance(faiss_index._search[space], np.ndarray)  # a faiss index answered
    assert [n.id for n in found] == ids
    assert np.allclose([n.distance for n in found], distances, atol=1e-5)


def test_exclude_k_larger_than_the_index_and_bad_queries():
    index = random_index(n=5)
    q = index.embeddings_of("g3")
    found = index.nearest(q, k=10, exclude="g3")
    assert len(found) == 4 and "g3" not in [n.id for n in found]
    assert index.nearest(q, k=1)[0].id == "g3" and index.nearest(q, k=1)[0].distance < 1e-6
    with pytest.raises(SimilarityError, match="12 numbers, the query 3"):
        index.nearest({"b0": [1, 2, 3], "b2": np.ones(20)}, space="b0")
    with pytest.raises(SimilarityError, match="needs the b2 embedding"):
        index.nearest({"b0": np.ones(12)}, space=BOTH)
    with pytest.raises(SimilarityError, match="no id 'nope'"):
        index.embeddings_of("nope")
    with pytest.raises(SimilarityError, match="k must be"):
        index.nearest(q, k=0)


def test_leave_one_out_and_chance_by_hand():
    # five directions at angles 0, 0.10, 0.46, 0.61, 1.11 rad, labelled a a b b a
    x = np.array([[1, 0.0], [1, 0.1], [1, 0.5], [1, 0.7], [1, 2.0]])
    index = SimilarityIndex({"b0": x}, list("vwxyz"), ["a", "a", "b", "b", "a"])
    # nearest others: v->w (a, hit), w->v (hit), x->y (hit), y->x (hit), z->y (b, miss)
    assert index.leave_one_out("b0", 1) == pytest.approx(4 / 5)
    # 3 nearest: v: w x y (a b b: miss), w: v x y (miss), x: y w v (b a a: miss),
    # y: x z w (b a a: miss), z: y x w (b b a: miss)
    assert index.leave_one_out("b0", 3) == 0
    assert chance_level(np.array(["a", "a", "b", "b", "a"])) == pytest.approx((3 * 2 + 2 * 1) / (5 * 4))


def test_index_file_round_trip_and_a_foreign_file_is_refused(tmp_path):
    index = random_index(n=20)
    index.meta = {"versions": {"b0": "1.0"}}
    path = index.save(tmp_path / "i.npz")
    back = SimilarityIndex.load(path)
    assert list(back.ids) == list(index.ids) and back.meta == index.meta and back.spaces == ["b0", "b2", BOTH]
    q = index.embeddings_of("g4")
    assert [n.id for n in back.nearest(q, 3)] == [n.id for n in index.nearest(q, 3)]
    (tmp_path / "foreign.npz").write_bytes(b"not a zip")
    with pytest.raises(SimilarityError, match="is not a similarity index"):
        SimilarityIndex.load(tmp_path / "foreign.npz")
    with pytest.raises(SimilarityError, match="no similarity index at"):
        SimilarityIndex.load(tmp_path / "missing.npz")


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    """Two real samples of each class, and one file that is not an image."""
    d = tmp_path_factory.mktemp("samples")
    for p in sorted(SAMPLES.glob("class_*_[01].jpg")):
        shutil.copy2(p, d / p.name)
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


def test_cli_builds_queries_and_reports_leave_one_out(sample_folder, tmp_path, capsys):
    out = tmp_path / "samples.npz"
    assert main(["build", "--images", str(sample_folder), "--run", str(DEMO), "--out", str(out)]) == 0
    assert "indexed 20 galaxies" in capsys.readouterr().out  # broken.png skipped with a message
    index = SimilarityIndex.load(out)
    assert index.vectors["b0"].shape == (20, 1280) and index.vectors["b2"].shape == (20, 1408)
    assert index.labelled.all() and set(index.labels) >= {"Disturbed", "Edge-on with Bulge"}
    assert index.meta["versions"] == {"b0": "1.0", "b2": "1.0"}

    # an image of the index is its own nearest neighbour; --id leaves it out
    image = sample_folder / "class_5_0.jpg"
    assert main(["query", "--index", str(out), "--image", str(image), "--run", str(DEMO), "--k", "3",
                 "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(found) == 3 and found[0]["id"] == "class_5_0" and found[0]["distance"] < 1e-3
    assert found[0]["label"] == "Barred Spiral" and found[1]["distance"] >= found[0]["distance"]
    assert main(["query", "--index", str(out), "--id", "class_5_0", "--k", "4", "--space", "b2"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and "class_5_0" not in [r[0] for r in lines]
    distances = [float(r[2]) for r in lines]
    assert distances == sorted(distances) and distances[0] > 0

    assert main(["loo", "--index", str(out), "--markdown", str(tmp_path / "loo.md")]) == 0
    table = (tmp_path / "loo.md").read_text()
    assert "| both |" in table and "chance 0.05" in table  # 2 per class: 1 of 19 others

    # the same folder and checkpoints again: nothing to do
    assert main(["build", "--images", str(sample_folder), "--run", str(DEMO), "--out", str(out), "--if-stale"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_errors_exit_1_with_a_message(tmp_path, capsys):
    assert main(["query", "--index", str(tmp_path / "none.npz"), "--id", "x"]) == 1
    assert "no similarity index at" in capsys.readouterr().err
    assert main(["build", "--images", str(tmp_path), "--out", str(tmp_path / "i.npz")]) == 1
    assert "no JPEG, PNG or FITS images" in capsys.readouterr().err
    random_index(n=4).save(tmp_path / "i.npz")
    assert main(["query", "--index", str(tmp_path / "i.npz"), "--image", str(tmp_path / "nope.jpg")]) == 1
    assert "no image file" in capsys.readouterr().err
    assert main(["build", "--catalog", str(tmp_path / "i.npz"), "--out", str(tmp_path / "j.npz")]) == 1
    assert "not a Parquet catalogue" in capsys.readouterr().err
