"""What `make queue` reads besides a folder: a table of sky positions (cutouts from a local server that
plays the Legacy Surveys service) and a `make classify` / `make predict` catalogue, whose least
certain rows are queued from the images it was made from."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from galaxy_morph.specs import GALAXY10_CLASSES
from labelling import acquisition
from labelling.queue import main
from labelling.store import LabelStore
from tests.conftest import REPO, SAMPLES
from tests.cutout_service import LocalCutoutService

DEMO = str(REPO / "checkpoints" / "demo")


def test_positions_table_is_queued_with_its_cutouts_and_positions(tmp_path, capsys):
    table = tmp_path / "positions.csv"
    table.write_text("id,ra,dec\nngc4321,185.7288,15.8223\nm51,202.4696,47.1952\nnowhere,,\nsouth,10.0,-80.0\n")
    store = tmp_path / "labels.db"
    with LocalCutoutService() as svc:
        assert main(["add", "--store", str(store), "--input", str(table), "--run", DEMO,
                     "--cutout-url", svc.url("cutout.jpg"), "--cache-dir", str(tmp_path / "cache"),
                     "--cutout-retries", "1"]) == 0
    err = capsys.readouterr().err
    assert "refused nowhere:" in err and "refused south:" in err  # no position; outside the footprint
    s = LabelStore(store)
    cands = {s.candidate(i)["item_key"]: s.candidate(i) for i in s.unlabelled()}
    assert sorted(cands) == ["m51", "ngc4321"]
    assert (cands["ngc4321"]["ra"], cands["ngc4321"]["dec"]) == pytest.approx((185.7288, 15.8223))
    assert cands["m51"]["image"][:2] == b"\xff\xd8" and len(s.answers()) == 4  # B0 and B2 for each
    table.write_text("id,ra,dec\nnowhere,,\n")
    assert main(["add", "--store", str(store), "--input", str(table), "--run", DEMO]) == 1  # nothing queued


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_catalogue_queues_its_least_certain_rows_from_the_images(tmp_path, capsys, suffix):
    images = tmp_path / "cutouts"
    images.mkdir()
    files = sorted(SAMPLES.glob("class_[0-5]_0.jpg"))
    for p in files:
        shutil.copy2(p, images / p.name)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(10, 0.3), len(files) + 2)
    ids = [p.name for p in files] + ["missing.jpg", "failed.jpg"]
    rows = pd.DataFrame(probs, columns=list(GALAXY10_CLASSES))
    rows.insert(0, "id", ids)
    rows["error"] = [""] * (len(files) + 1) + ["cannot decode"]
    rows.loc[len(files) + 1, list(GALAXY10_CLASSES)] = np.nan
    catalogue = tmp_path / f"catalog{suffix}"
    rows.to_csv(catalogue, index=False) if suffix == ".csv" else rows.to_parquet(catalogue)
    answered = probs[:len(files) + 1]
    top3 = [ids[k] for k in acquisition.rank(acquisition.entropy(answered))[:3]]

    store = tmp_path / "labels.db"
    assert main(["add", "--store", str(store), "--input", str(catalogue), "--images", str(images), "--top", "3",
                 "--run", DEMO]) == 0
    s = LabelStore(store)
    assert sorted(s.candidate(i)["item_key"] for i in s.unlabelled()) == sorted(k for k in top3 if k != "missing.jpg")
    if "missing.jpg" in top3:
        assert "missing.jpg: in the catalogue but not in" in capsys.readouterr().err

    assert main(["add", "--store", str(store), "--input", str(catalogue), "--run", DEMO]) == 1
    assert "give the images it was made from" in capsys.readouterr().err
    assert main(["add", "--store", str(store), "--input", str(images), "--images", str(images), "--run", DEMO]) == 1
    assert "--images is for a catalogue input" in capsys.readouterr().err
