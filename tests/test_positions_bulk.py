"""A survey catalogue of sky positions through `make classify` / torchserve_ops.bulk: cutouts from a
local stand-in for the Legacy Surveys cutout service (tests/cutout_service.py), the real TorchServe
fixture (token auth on), catalogue tables that astropy reads back, resume after a kill.

    .venv/bin/python -m pytest -q tests/test_positions_bulk.py
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from survey.catalog import output_format, working_csv
from torchserve_ops import bulk
from tests.cutout_service import LocalCutoutService, cube_to_fits, galaxy_cube

REPO = Path(__file__).resolve().parent.parent


def write_positions(path: Path, rows) -> Path:
    t = Table(rows=rows, names=("id", "ra", "dec"), dtype=(str, float, float))
    t["ra"].unit = t["dec"].unit = u.deg
    t.write(path, format=output_format(path), overwrite=True)
    return path


GOOD = [(f"LS-{i:02d}", 150.0 + 0.01 * i, 2.0 + 0.01 * i) for i in range(9)]
SURVEY = GOOD + [("south-pole", 30.0, -80.0), ("flaky", 151.5, 2.5), ("no-dec", 152.0, np.nan)]


def data_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f)]


def test_make_classify_positions_to_fits_catalog_resumes_after_kill(torchserve, tmp_path):
    positions = write_positions(tmp_path / "positions.csv", SURVEY)
    out = tmp_path / "catalog.fits"
    with LocalCutoutService(delay_s=0.4) as svc:
        svc.rules[(151.5, 2.5)] = "503x1"
        cmd = ["make", "-s", "classify", f"INPUT={positions}", f"OUT={out}", f"SERVERS={torchserve.inference_url}",
               f"CUTOUT_URL={svc.url('cutout.fits')}", f"CUTOUT_CACHE={tmp_path / 'cache'}", "CONCURRENCY=2",
               "MODEL=galaxy-b0"]
        env = {**os.environ, "TS_KEY_FILE": str(torchserve.key_file)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while len(data_rows(working_csv(out))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = [r["id"] for r in data_rows(working_csv(out))]
        assert 0 < len(before) < len(SURVEY), "killed mid-run"
        assert not out.exists(), "the table is written when the run completes"

        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        for rid in before:
            pos = next((ra, dec) for i, ra, dec in SURVEY if i == rid)
            if np.isfinite(pos[1]):
                assert svc.requests[(round(pos[0], 4), round(pos[1], 4))] <= 1, "rows before the kill not re-fetched"
        assert svc.requests[(151.5, 2.5)] >= 2, "the 503 was retried"

    t = Table.read(out)
    assert sorted(t["id"]) == sorted(i for i, _, _ in SURVEY), "one row per position, none twice"
    rows = {r["id"]: r for r in t}
    assert t["ra"].unit == u.deg and rows["LS-03"]["ra"] == pytest.approx(150.03)
    for rid, _, _ in GOOD + [("flaky", 0, 0)]:
        assert not rows[rid]["error"] and 0 <= rows[rid]["label"] <= 9, rows[rid]
    assert "no survey data" in rows["south-pole"]["error"]
    assert "no position" in rows["no-dec"]["error"]
    assert np.ma.is_masked(rows["south-pole"]["label"])
    assert {str(rows[i]["model"]) for i, _, _ in GOOD} == {"galaxy-b0"}
    assert "catalog.fits" in done.stderr


def test_positions_jpeg_votable_failures_are_rows(torchserve, tmp_path):
    positions = write_positions(tmp_path / "positions.vot", GOOD[:3] + [("broken", 160.0, 1.0), ("gone", 161.0, 1.0)])
    out = tmp_path / "catalog.vot"
    with LocalCutoutService() as svc:
        svc.rules[(160.0, 1.0)] = "500"
        svc.rules[(161.0, 1.0)] = "404"
        args = ["--input", str(positions), "--out", str(out), "--servers", torchserve.inference_url,
                "--key-file", str(torchserve.key_file), "--no-progress", "--model", "galaxy-ensemble",
                "--cutout-url", svc.url("cutout.jpg"), "--cache-dir", str(tmp_path / "cache"),
                "--cutout-retries", "1"]
        assert bulk.main(args) == 0
        assert svc.requests[(160.0, 1.0)] == 2 and svc.requests[(161.0, 1.0)] == 1
        t = Table.read(out, format="votable")
        rows = {r["id"]: r for r in t}
        assert len(t) == 5
        assert "HTTP 500" in rows["broken"]["error"] and "HTTP 404" in rows["gone"]["error"]
        assert rows["LS-00"]["source"] in ("both", "b0", "b2", "neither") and rows["LS-00"]["rule"] == "mean"
        assert t["dec"].unit == u.deg
        # run again: nothing re-fetched, nothing duplicated, the table is rewritten
        n = svc.total_requests
        assert bulk.main(args) == 0
        assert svc.total_requests == n and len(Table.read(out, format="votable")) == 5


def test_folder_of_fits_cutouts(torchserve, tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i in range(3):
        (folder / f"g{i}.fits").write_bytes(cube_to_fits(galaxy_cube(10.0 + i, 1.0, 64)))
    (folder / "blank.fits").write_bytes(cube_to_fits(np.zeros((3, 64, 64))))
    out = tmp_path / "catalog.ecsv"
    args = ["--input", str(folder), "--out", str(out), "--servers", torchserve.inference_url,
            "--key-file", str(torchserve.key_file), "--no-progress", "--model", "galaxy-b0"]
    assert bulk.main(args) == 0
    t = Table.read(out)
    rows = {r["id"]: r for r in t}
    assert sorted(rows) == ["blank.fits", "g0.fits", "g1.fits", "g2.fits"]
    assert "every pixel is 0" in rows["blank.fits"]["error"]
    assert not rows["g1.fits"]["error"] and rows["g1.fits"]["confidence"] > 0


def test_bad_positions_tables_exit_1_with_a_message(torchserve, tmp_path, capsys):
    base = ["--servers", torchserve.inference_url, "--key-file", str(torchserve.key_file), "--no-progress",
            "--out", str(tmp_path / "c.fits")]
    (tmp_path / "nora.csv").write_text("id,x,y\na,1,2\n")
    assert bulk.main(["--input", str(tmp_path / "nora.csv"), *base]) == 1
    assert "no ra/dec columns" in capsys.readouterr().err
    (tmp_path / "dup.csv").write_text("id,ra,dec\na,1,2\na,3,4\n")
    assert bulk.main(["--input", str(tmp_path / "dup.csv"), *base]) == 1
    assert "appears twice" in capsys.readouterr().err
    ok = write_positions(tmp_path / "ok.csv", GOOD[:1])
    assert bulk.main(["--input", str(ok), *base, "--size", "0"]) == 1
    assert "cutout size" in capsys.readouterr().err
    assert not (tmp_path / "c.fits").exists()
