"""Positions tables and polite cutout fetching (survey.cutouts) against a local HTTP server
that plays the Legacy Surveys cutout service (tests/cutout_service.py); catalogue tables
(survey.catalog). Nothing here touches the internet.

    .venv/bin/python -m pytest -q tests/test_cutouts.py
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from survey import catalog
from survey.cutouts import CutoutError, CutoutFetcher, CutoutParams, NoSurveyData, position_loaders
from survey.positions import PositionsError, parse_angle, read_positions
from galaxy_morph.fits_image import read_bands
from galaxy_morph.imaging import decode_image
from galaxy_morph.specs import GALAXY10_CLASSES
from tests.cutout_service import LocalCutoutService

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def service():
    with LocalCutoutService() as svc:
        yield svc


def fetcher(svc, tmp_path, name="cutout.jpg", **kw) -> CutoutFetcher:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 2)
    return CutoutFetcher(CutoutParams(url=svc.url(name)), cache_dir=tmp_path / "cache", **kw)


def test_url_carries_the_galaxy10_defaults():
    p = CutoutParams()
    q = parse_qs(urlsplit(p.url_for(184.846, 5.7975)).query)
    assert p.url.startswith("https://www.legacysurvey.org/viewer/cutout.jpg")
    assert {k: v[0] for k, v in q.items()} == {"ra": "184.846000", "dec": "5.797500", "layer": "ls-dr10-grz",
                                              "pixscale": "0.262", "size": "256"}
    fits_q = parse_qs(urlsplit(CutoutParams(url="https://x/viewer/cutout.fits").url_for(1, 2)).query)
    assert fits_q["bands"] == ["grz"]
    templ = CutoutParams(url="http://mirror/cut/{ra}/{dec}.jpg?s={size}")
    assert templ.url_for(1.5, -2) == "http://mirror/cut/1.500000/-2.000000.jpg?s=256"
    with pytest.raises(ValueError):
        CutoutParams(url="ftp://x")
    with pytest.raises(ValueError):
        CutoutParams(size=0)


def test_jpeg_and_fits_answers_are_cached_by_position_and_parameters(service, tmp_path):
    jpg = fetcher(service, tmp_path)
    a = jpg.fetch(10.0, 5.0)
    assert decode_image(a).size == (256, 256)
    assert jpg.fetch(10.0, 5.0) == a and service.requests[(10.0, 5.0)] == 1, "second time from the cache"
    assert jpg.stats.cache_hits == 1 and jpg.cache_path(10.0, 5.0).is_file()
    fits_bytes = fetcher(service, tmp_path, "cutout.fits").fetch(10.0, 5.0)
    assert read_bands(fits_bytes).shape == (3, 256, 256)
    assert service.requests[(10.0, 5.0)] == 2, "another format is another cache entry"
    small = CutoutFetcher(CutoutParams(url=service.url(), size=64), cache_dir=tmp_path / "cache")
    assert decode_image(small.fetch(10.0, 5.0)).size == (64, 64)
    assert service.requests[(10.0, 5.0)] == 3, "another size is another cache entry"
    assert not list((tmp_path / "cache").rglob(".*.tmp")), "no temporary files left behind"


def test_retries_with_backoff_then_succeeds(service, tmp_path):
    service.rules[(20.0, 1.0)] = "503x2"
    data = fetcher(service, tmp_path, retries=3).fetch(20.0, 1.0)
    assert decode_image(data).size == (256, 256)
    assert service.requests[(20.0, 1.0)] == 3


def test_failures_say_why_and_are_not_cached(service, tmp_path):
    f = fetcher(service, tmp_path, retries=1)
    service.rules[(21.0, 1.0)] = "500"
    with pytest.raises(CutoutError) as e:
        f.fetch(21.0, 1.0)
    assert "HTTP 500" in str(e.value) and not isinstance(e.value, NoSurveyData)
    assert service.requests[(21.0, 1.0)] == 2, "one retry"
    service.rules[(22.0, 1.0)] = "404"
    with pytest.raises(CutoutError, match="HTTP 404"):
        f.fetch(22.0, 1.0)
    assert service.requests[(22.0, 1.0)] == 1, "4xx is not retried"
    service.rules[(23.0, 1.0)] = "garbage"
    with pytest.raises(CutoutError, match="not an image"):
        f.fetch(23.0, 1.0)
    bad_layer = CutoutFetcher(CutoutParams(url=service.url(), layer="ls-dr99"), cache_dir=tmp_path / "c2")
    with pytest.raises(CutoutError, match="HTTP 400.*Unknown layer ls-dr99"):
        bad_layer.fetch(1.0, 1.0)
    service.rules[(21.0, 1.0)] = ""
    assert f.fetch(21.0, 1.0), "a failure was not cached: the next run gets the cutout"


@pytest.mark.parametrize("name,ra,dec,rule", [
    ("cutout.jpg", 30.0, -80.0, ""),       # black JPEG
    ("cutout.fits", 30.0, -80.0, ""),      # header with OVERLAP = F, no data
    ("cutout.fits", 31.0, 1.0, "nan"),     # NaN-only cube
    ("cutout.jpg", 32.0, 1.0, "text"),     # "No overlap" text answer
])
def test_outside_the_footprint_is_no_survey_data_and_is_cached(service, tmp_path, name, ra, dec, rule):
    service.rules[(ra, dec)] = rule
    f = fetcher(service, tmp_path, name)
    for _ in range(2):
        with pytest.raises(NoSurveyData, match="no survey data at RA"):
            f.fetch(ra, dec)
    assert service.requests[(ra, dec)] == 1, "the answer 'no data here' is cached"


def test_timeouts_are_retried_then_reported(tmp_path):
    with LocalCutoutService(slow_s=2.0) as svc:
        svc.rules[(40.0, 1.0)] = "slow"
        f = CutoutFetcher(CutoutParams(url=svc.url()), cache_dir=tmp_path, retries=1, backoff=0.01,
                          timeout=0.3)
        with pytest.raises(CutoutError, match="timed out"):
            f.fetch(40.0, 1.0)
        assert svc.requests[(40.0, 1.0)] == 2


def test_requests_in_flight_are_bounded(tmp_path):
    with LocalCutoutService(delay_s=0.2) as svc:
        f = CutoutFetcher(CutoutParams(url=svc.url(), size=32), cache_dir=tmp_path, max_in_flight=2)
        threads = [threading.Thread(target=f.fetch, args=(50.0 + i, 1.0)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert svc.total_requests == 8
        assert svc.max_in_flight <= 2 and f.stats.max_in_flight <= 2


def test_unreachable_service_is_a_cutout_error(tmp_path):
    with LocalCutoutService() as svc:
        url = svc.url()
    f = CutoutFetcher(CutoutParams(url=url), cache_dir=tmp_path, retries=1, backoff=0.01)
    with pytest.raises(CutoutError, match="cannot reach the cutout service"):
        f.fetch(1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Positions tables


def positions_table() -> Table:
    t = Table()
    t["ID"] = ["NGC4321", "M51", "far-south", "empty"]
    t["RA"] = np.array([185.72875, 202.46958, 30.0, np.nan]) * u.deg
    t["Dec"] = np.array([15.82231, 47.19526, -80.0, 2.0]) * u.deg
    return t


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits", ".vot"])
def test_positions_from_every_table_format(tmp_path, suffix):
    path = tmp_path / f"positions{suffix}"
    positions_table().write(path, format=catalog.output_format(path))
    got = read_positions(path)
    assert [p.id for p in got] == ["NGC4321", "M51", "far-south", "empty"]
    assert got[0].ra == pytest.approx(185.72875) and got[1].dec == pytest.approx(47.19526)
    assert got[3].problem == "no position: ra or dec is empty" and not got[0].problem


def test_positions_units_sexagesimal_row_index_and_bad_rows(tmp_path):
    t = Table()
    t["ra_rad"] = np.radians([185.72875, 10.0]) * u.rad
    t["de"] = np.array([15.82231, 95.0]) * u.deg
    path = tmp_path / "p.ecsv"
    t.write(path)
    got = read_positions(path, ra_col="RA_RAD", dec_col="de")
    assert [p.id for p in got] == ["0", "1"], "no id column: the row index"
    assert got[0].ra == pytest.approx(185.72875)
    assert "outside -90..90" in got[1].problem
    csv = tmp_path / "s.csv"
    csv.write_text("name,ra,dec\nNGC4321,12:22:54.9,+15:49:20\nbad,twelve,1\n")
    got = read_positions(csv, id_col="name")
    assert got[0].id == "NGC4321"
    assert got[0].ra == pytest.approx(185.72875, abs=1e-4) and got[0].dec == pytest.approx(15.82222, abs=1e-4)
    assert got[1].problem.startswith("bad position") and got[1].ra is None
    assert parse_angle("12h22m54.9s", "ra") == pytest.approx(185.72875, abs=1e-4)
    assert parse_angle(-10.0, "ra") == 350.0


def test_unusable_positions_tables_are_refused(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(PositionsError, match="no ra/dec columns"):
        read_positions(p)
    with pytest.raises(PositionsError, match="no column 'alpha'"):
        read_positions(p, ra_col="alpha")
    p.write_text("id,ra,dec\nA,1,1\nA,2,2\n")
    with pytest.raises(PositionsError, match="'A' appears twice"):
        read_positions(p)
    with pytest.raises(PositionsError, match="not a positions table"):
        read_positions(tmp_path / "x.txt")
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = nonsense")
    with pytest.raises(PositionsError, match="cannot read it"):
        read_positions(tmp_path / "broken.fits")


def test_position_loaders_turn_problems_into_cutout_errors(service, tmp_path):
    path = tmp_path / "p.ecsv"
    positions_table().write(path)
    loaders = dict(position_loaders(read_positions(path), fetcher(service, tmp_path), skip={"M51"}))
    assert list(loaders) == ["NGC4321", "far-south", "empty"]
    assert decode_image(loaders["NGC4321"]()).size == (256, 256)
    with pytest.raises(NoSurveyData):
        loaders["far-south"]()
    with pytest.raises(OSError, match="no position"):
        loaders["empty"]()


def test_cutouts_cli_saves_one_cutout(service, tmp_path):
    out = tmp_path / "g.fits"
    r = subprocess.run([sys.executable, "-m", "survey.cutouts", "--ra", "12:22:54.9", "--dec",
                        "+15:49:20", "--out", str(out), "--cutout-url", service.url("cutout.fits"),
                        "--cache-dir", str(tmp_path / "c")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_bands(out.read_bytes()).shape == (3, 256, 256)
    r = subprocess.run([sys.executable, "-m", "survey.cutouts", "--ra", "1", "--dec", "-80",
                        "--out", str(out), "--cutout-url", service.url(), "--cache-dir", str(tmp_path / "c")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no survey data" in r.stderr


# ---------------------------------------------------------------------------------------------
# Catalogue tables

CLASSES = list(GALAXY10_CLASSES)


def catalog_csv(path: Path) -> Path:
    header = ["id", "label", "class_name", "confidence", "error", *CLASSES, "model", "version", "source", "rule"]
    probs = [0.05] * 10
    probs[5] = 0.55
    rows = [["NGC4321", "5", CLASSES[5], "0.55", "", *map(str, probs), "galaxy-ensemble", "1.0", "both", "seed"],
            ["far-south", "", "", "", "cannot read input: no survey data", *[""] * 14]]
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".fits", ".vot", ".ecsv"])
def test_catalogue_tables_have_units_descriptions_and_masks(tmp_path, suffix):
    src = catalog_csv(tmp_path / "c.csv")
    pos = tmp_path / "p.ecsv"
    positions_table().write(pos)
    out = catalog.convert(src, tmp_path / f"c{suffix}", catalog.positions_for(pos))
    t = Table.read(out)
    assert len(t) == 2 and list(t["id"]) == ["NGC4321", "far-south"]
    assert t["ra"].unit == u.deg and t["dec"].unit == u.deg
    assert t["ra"][0] == pytest.approx(185.72875)
    assert t["p_barred_spiral"][0] == pytest.approx(0.55)
    assert "Barred Spiral" in t["p_barred_spiral"].description
    assert t["label"][0] == 5 and np.ma.is_masked(t["label"][1]), "no label for an error row"
    assert "no survey data" in t["error"][1]
    assert {"model", "version", "source", "rule", "class_name", "confidence"} <= set(t.colnames)


def test_fits_catalogue_has_topcat_column_cards(tmp_path):
    from astropy.io import fits

    out = catalog.convert(catalog_csv(tmp_path / "c.csv"), tmp_path / "c.fits")
    h = fits.getheader(out, 1)
    n = [h[f"TTYPE{i}"] for i in range(1, h["TFIELDS"] + 1)].index("confidence") + 1
    assert h[f"TUCD{n}"] == "stat.probability" and "predicted class" in h[f"TCOMM{n}"]
    assert h["CLASS5"] == "Barred Spiral"


def test_catalog_cli_converts_and_refuses_bad_input(tmp_path):
    src = catalog_csv(tmp_path / "c.csv")
    pos = tmp_path / "p.csv"
    positions_table().write(pos)
    run = lambda *a: subprocess.run([sys.executable, "-m", "survey.catalog", *map(str, a)], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    r = run(src, tmp_path / "c.vot", "--positions", pos)
    assert r.returncode == 0, r.stderr
    assert Table.read(tmp_path / "c.vot")["dec"][0] == pytest.approx(15.82231)
    r = run(src, tmp_path / "c.txt")
    assert r.returncode == 1 and "unknown table format" in r.stderr
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    r = run(tmp_path / "other.csv", tmp_path / "o.fits")
    assert r.returncode == 1 and "not a catalogue" in r.stderr
    assert not (tmp_path / "o.fits").exists()
