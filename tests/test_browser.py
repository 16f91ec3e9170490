"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real server.

    make browser                      # apt chromium, once
    .venv/bin/python -m pytest -q tests/test_browser.py

Starts Streamlit on a free port pointed at the `torchserve` fixture, sends a few requests, then
visits every page as a user would (uploads a real Galaxy10 sample, runs a batch, watches the
metrics) and saves a screenshot of each: classify.png, batch.png, review.png, server.png, metrics.png,
model_card.png in $SCREENSHOT_DIR (set it to keep them) or the test's tmp dir.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests


REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "galaxy10_decals" / "class_5_0.jpg"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture
def review_store(served_archives, tmp_path) -> Path:
    """A label store with four real samples queued, classified with the served checkpoints."""
    from labelling.queue import add_images
    from labelling.store import LabelStore
    from galaxy_morph import Predictor

    clf = Predictor.from_run(served_archives[0], "ensemble", device="cpu")
    items = [(p.name, p.read_bytes()) for p in sorted(SAMPLE.parent.glob("class_[0-3]_4.jpg"))]
    add_images(LabelStore(tmp_path / "labels.db"), items, "samples", clf)
    return tmp_path / "labels.db"


@pytest.fixture
def dashboard_url(torchserve, similarity_index, review_store, tmp_path, unused_port):
    port = unused_port
    env = {**os.environ,
           "TS_HOST": "127.0.0.1",
           "TS_INFERENCE_PORT": str(torchserve.ports["inference"]),
           "TS_MANAGEMENT_PORT": str(torchserve.ports["management"]),
           "TS_METRICS_PORT": str(torchserve.ports["metrics"]),
           "TS_KEY_FILE": str(torchserve.key_file),
           "TS_MODEL_STORE": str(torchserve.model_store),
           "GALAXY_SIMILARITY_INDEX": str(similarity_index),
           "GALAXY_LABELS": str(review_store)}
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


def screenshot_dir(tmp_path: Path) -> Path:
    """$SCREENSHOT_DIR when set (to look at them after the run: whole pages), else the test's tmp
    dir (the visible part only: a full-page screenshot costs seconds)."""
    d = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


CLOCK = re.compile(r"^\d\d:\d\d:\d\d$")


def axis_labels(chart, axis: str) -> list[str]:
    """The tick labels of a Vega chart's X or Y axis (Streamlit draws them as SVG)."""
    group = chart.locator(f"g.role-axis[aria-label^='{axis}-axis']")
    return [t.text_content() for t in group.locator(".role-axis-label text").all()]


def check_metrics_page(page) -> None:
    """After the ensemble request: the latency chart lists the workflow's models by readable name,
    the table's note names them, and every time axis is titled and labelled HH:MM:SS."""
    latency = page.locator(".vega-embed svg").filter(has=page.locator("text", has_text="galaxy-ensemble / b0"))
    latency.first.wait_for(timeout=30_000)
    legend = [t.text_content() for t in latency.first.locator(".role-legend text").all()]
    for node in ("b0", "b2"):
        assert any(t.startswith(f"galaxy-ensemble / {node}") for t in legend), legend
    assert not any("__" in t for t in legend), legend  # not the raw galaxy-ensemble__b0
    note = page.get_by_text("the calls a workflow makes to")
    assert "galaxy-ensemble / b0" in note.inner_text() and "galaxy-ensemble / b2" in note.inner_text()
    charts = page.locator(".vega-embed svg").all()
    assert len(charts) >= 3
    for chart in charts:
        assert chart.locator("text", has_text="time (HH:MM:SS)").count() == 1
        labels = axis_labels(chart, "X")
        assert labels and all(CLOCK.match(t) for t in labels), labels  # never ".500"


def test_every_page_in_chromium(torchserve, dashboard_url, review_store, tmp_path):
    """Each page as a user sees it, after a few requests; a screenshot of each. Charts are drawn
    only from real numbers: the Metrics page must draw its charts, not say they are empty."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("no Chromium: make browser")
    client = torchserve.client()
    expected = client.predict_workflow("galaxy-ensemble", SAMPLE.read_bytes())["class_name"]
    for sample in sorted(SAMPLE.parent.glob("class_[0-4]_0.jpg")):
        client.predict("galaxy-b0", sample.read_bytes())
    client.predict("galaxy-b2", SAMPLE.read_bytes())
    # an ensemble request as any client sends it: its models' latency must reach the Metrics page
    r = requests.post(torchserve.inference_url + "/wfpredict/galaxy-ensemble",
                      data=(SAMPLE.parent / "class_6_0.jpg").read_bytes(),
                      headers=torchserve.auth("inference"), timeout=180)
    assert r.ok and r.json()["model"] == "galaxy-ensemble", r.text

    shots, asked = screenshot_dir(tmp_path), bool(os.environ.get("SCREENSHOT_DIR"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})

            def shoot(name: str):
                page.wait_for_timeout(500)  # an exception drawn after the awaited element
                assert page.locator("[data-testid=stException]").count() == 0, name
                assert page.locator("[data-testid=stAlertContentError]").count() == 0, name
                if asked:  # to look at: let tables and charts finish drawing, the whole page
                    page.wait_for_timeout(1000)
                page.screenshot(path=str(shots / f"{name}.png"), full_page=asked)

            page.goto(dashboard_url, timeout=60_000)
            page.get_by_role("heading", name="Classify a galaxy").wait_for(timeout=60_000)
            page.set_input_files("input[type=file]", str(SAMPLE))
            page.locator("h3", has_text=expected).first.wait_for(timeout=120_000)
            page.get_by_text("B0 and B2").first.wait_for(timeout=30_000)
            page.get_by_text("trained").first.wait_for(timeout=30_000)  # what the demo is
            page.locator(".vega-embed canvas, .vega-embed svg").first.wait_for(timeout=30_000)
            page.get_by_text("Similar galaxies").first.wait_for(timeout=30_000)
            # the sample is in the index: its own thumbnail comes first, at distance 0
            page.get_by_text("Barred Spiral · d=0.000").first.wait_for(timeout=30_000)
            assert page.get_by_text(re.compile(r" · d=\d\.\d{3}$")).count() == 5
            shoot("classify")

            page.goto(f"{dashboard_url}/batch", timeout=60_000)
            page.get_by_role("heading", name="Classify a batch").wait_for(timeout=60_000)
            page.set_input_files("input[type=file]", [str(SAMPLE), str(SAMPLE.parent / "class_2_0.jpg")])
            page.get_by_role("button", name="Classify 2 images").click()
            page.get_by_text("2 of 2 classified").wait_for(timeout=120_000)
            page.locator(".vega-embed canvas, .vega-embed svg").first.wait_for(timeout=30_000)
            shoot("batch")

            # Review: a name, then one key press labels the first galaxy of the queue
            page.goto(f"{dashboard_url}/review", timeout=60_000)
            page.get_by_role("heading", name="Review").wait_for(timeout=60_000)
            name = page.get_by_role("textbox", name="Your name")
            name.fill("carol")
            name.press("Enter")
            page.get_by_role("button", name=re.compile(r"^3 In-between Round Smooth")).wait_for(timeout=30_000)
            page.get_by_role("heading", name="Review").click()  # focus off the text box
            page.keyboard.press("3")
            from labelling.store import LabelStore

            deadline = time.time() + 20
            while not LabelStore(review_store).labels() and time.time() < deadline:
                time.sleep(0.5)
            labels = LabelStore(review_store).labels()
            assert [(lab["class_index"], lab["labeller"]) for lab in labels] == [(3, "carol")], labels
            for model in ("galaxy-b0", "galaxy-b2"):  # the next galaxy's heatmaps, drawn after the buttons
                page.get_by_text(f"Grad-CAM {model} for").first.wait_for(timeout=60_000)
            shoot("review")

            page.goto(f"{dashboard_url}/server", timeout=60_000)
            page.get_by_role("heading", name="Models").wait_for(timeout=60_000)
            shoot("server")

            page.goto(f"{dashboard_url}/metrics", timeout=60_000)
            page.get_by_role("heading", name="Metrics").wait_for(timeout=60_000)
            page.get_by_text("2 points,").wait_for(timeout=60_000)  # two polls: a line, not a dot
            for title in ("Responses by status", "Mean inference latency", "Worker memory"):
                page.get_by_text(title).first.wait_for(timeout=10_000)
            for empty in ("No responses yet.", "No inference requests yet.", "No worker processes visible."):
                assert page.get_by_text(empty).count() == 0, empty
            assert page.locator(".vega-embed").count() >= 3
            check_metrics_page(page)
            shoot("metrics")

            page.goto(f"{dashboard_url}/model_card", timeout=60_000)
            page.get_by_role("heading", name="Training data").wait_for(timeout=60_000)
            page.get_by_text("trained").first.wait_for(timeout=30_000)
            shoot("model_card")
        finally:
            browser.close()
    for name in ("classify", "batch", "review", "server", "metrics", "model_card"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
    print(f"screenshots: {shots}")
