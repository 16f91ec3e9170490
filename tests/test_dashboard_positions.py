"""The Classify page's sky-position input through Streamlit's AppTest, against the real TorchServe
fixture and a local stand-in for the Legacy Surveys cutout service (tests/cutout_service.py).

    .venv/bin/python -m pytest -q tests/test_dashboard_positions.py
"""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from galaxy_morph.specs import GALAXY10_CLASSES
from tests.cutout_service import LocalCutoutService

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")

pytestmark = pytest.mark.server


@pytest.fixture
def cutout_service(monkeypatch, torchserve, tmp_path):
    monkeypatch.setenv("TS_HOST", "127.0.0.1")
    monkeypatch.setenv("TS_INFERENCE_PORT", str(torchserve.ports["inference"]))
    monkeypatch.setenv("TS_MANAGEMENT_PORT", str(torchserve.ports["management"]))
    monkeypatch.setenv("TS_METRICS_PORT", str(torchserve.ports["metrics"]))
    monkeypatch.setenv("TS_KEY_FILE", str(torchserve.key_file))
    monkeypatch.setenv("GALAXY_CUTOUT_CACHE", str(tmp_path / "cache"))
    with LocalCutoutService() as svc:
        monkeypatch.setenv("GALAXY_CUTOUT_URL", svc.url("cutout.jpg"))
        yield svc


def position_page(model: str = "B0 (EfficientNet-B0, 128 px)") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.radio(key="classify_model").set_value(model)
    return at.segmented_control(key="classify_source").set_value("Sky position").run()


def no_failures(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("as_fits", [False, True])
def test_position_is_fetched_shown_and_classified(cutout_service, as_fits):
    at = position_page()
    at.toggle(key="classify_fits").set_value(as_fits)
    at.text_input(key="classify_ra").set_value("12:22:54.9")
    at.text_input(key="classify_dec").set_value("+15:49:20").run()
    no_failures(at)
    assert at.subheader[0].value in GALAXY10_CLASSES
    assert {m.label for m in at.metric} >= {"Confidence"}
    assert list(cutout_service.requests.values()) == [1], "one cutout fetched"
    (ra, dec), = cutout_service.requests
    assert ra == pytest.approx(185.72875, abs=1e-4) and dec == pytest.approx(15.82222, abs=1e-4)
    captions = [c for image in at.image for c in image.captions]
    assert any("RA 185.72875, Dec +15.82222" in c and ("FITS" if as_fits else "JPEG") in c for c in captions), captions


def test_outside_the_footprint_and_bad_text_are_messages(cutout_service):
    at = position_page()
    at.text_input(key="classify_ra").set_value("30")
    at.text_input(key="classify_dec").set_value("-80").run()
    no_failures(at)
    assert any("no survey data" in w.value for w in at.warning)
    assert not [h for h in at.subheader if h.value in GALAXY10_CLASSES], "nothing classified"
    at.text_input(key="classify_ra").set_value("twelve").run()
    no_failures(at)
    assert any("not an angle" in w.value for w in at.warning)
    at.text_input(key="classify_ra").set_value("30")
    at.text_input(key="classify_dec").set_value("95").run()
    assert any("outside -90..90" in w.value for w in at.warning)
