"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real server.

    make browser                      # apt chromium, once
    .venv/bin/python -m pytest -q tests/test_browser.py

Starts Streamlit on a free port pointed at the `torchserve` fixture, uploads a real Galaxy10 sample,
waits for the predicted class name and saves a screenshot (dashboard.png in the test's tmp dir).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from galaxy_morph.client import TorchServeClient

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "galaxy10_decals" / "class_5_0.jpg"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.server]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard_url(torchserve, tmp_path):
    port = _free_port()
    env = {**os.environ,
           "TS_HOST": "127.0.0.1",
           "TS_INFERENCE_PORT": str(torchserve.ports["inference"]),
           "TS_MANAGEMENT_PORT": str(torchserve.ports["management"]),
           "TS_METRICS_PORT": str(torchserve.ports["metrics"]),
           "TS_KEY_FILE": str(torchserve.key_file),
           "TS_MODEL_STORE": str(torchserve.model_store)}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
         "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
         "--client.toolbarMode", "minimal"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            try:
                if requests.get(url + "/_stcore/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("streamlit did not answer in 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_upload_in_chromium_shows_prediction(torchserve, dashboard_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("no Chromium: make browser")
    client = TorchServeClient(torchserve.inference_url, torchserve.management_url,
                              torchserve.metrics_url, key_file=torchserve.key_file)
    expected = client.predict_workflow("galaxy-ensemble", SAMPLE.read_bytes())["class_name"]

    shot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(dashboard_url, timeout=60_000)
            page.get_by_role("heading", name="Classify a galaxy").wait_for(timeout=60_000)
            page.set_input_files("input[type=file]", str(SAMPLE))
            page.locator("h3", has_text=expected).first.wait_for(timeout=120_000)
            page.get_by_text("B0 and B2").first.wait_for(timeout=30_000)
            page.locator(".vega-embed canvas, .vega-embed svg").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the table and chart finish drawing
            assert page.locator("[data-testid=stException]").count() == 0
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
