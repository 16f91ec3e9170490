"""Every dashboard page through streamlit.testing.v1.AppTest, against the real TorchServe fixture.

    .venv/bin/python -m pytest -q tests/test_dashboard.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import views
from galaxy_morph.specs import GALAXY10_CLASSES

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
SAMPLES = REPO / "samples" / "galaxy10_decals"
TIMEOUT = 180  # one run may wait for the ensemble and Grad-CAM on 2 busy cores

pytestmark = pytest.mark.server


def point_at(monkeypatch, ts, key_file=None):
    monkeypatch.setenv("TS_HOST", "127.0.0.1")
    monkeypatch.setenv("TS_INFERENCE_PORT", str(ts.ports["inference"]))
    monkeypatch.setenv("TS_MANAGEMENT_PORT", str(ts.ports["management"]))
    monkeypatch.setenv("TS_METRICS_PORT", str(ts.ports["metrics"]))
    monkeypatch.setenv("TS_KEY_FILE", str(key_file or ts.key_file))
    monkeypatch.setenv("TS_MODEL_STORE", str(ts.model_store))


def point_at_closed(monkeypatch, port: int):
    for var in ("TS_INFERENCE_PORT", "TS_MANAGEMENT_PORT", "TS_METRICS_PORT"):
        monkeypatch.setenv(var, str(port))


@pytest.fixture
def served(monkeypatch, torchserve):
    point_at(monkeypatch, torchserve)
    return torchserve


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def page(path: str) -> AppTest:
    at = app().run()
    return at.switch_page(path).run()


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def no_failures(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


# ----------------------------------------------------------------------------- pages

def test_classify_upload_shows_ensemble_prediction(served):
    at = app().run()
    assert at.title[0].value == "Classify a galaxy"
    sample = SAMPLES / "class_2_0.jpg"
    at.file_uploader[0].set_value((sample.name, sample.read_bytes(), "image/jpeg")).run()
    no_failures(at)
    assert at.subheader[0].value in GALAXY10_CLASSES
    labels = {m.label: m.value for m in at.metric}
    assert labels["Confidence"].endswith("%") and labels["Answer from"] in ("both", "b0")
    assert texts(at.success) == ["B0 and B2 agree."] or texts(at.warning) == ["B0 and B2 disagree."]
    members = frames(at)[0]
    assert list(members["model"]) == ["galaxy-ensemble__b0", "galaxy-ensemble__b2"]
    # another rule: the answer says which one it used
    at.selectbox(key="classify_rule").set_value("mean").run()
    no_failures(at)
    assert "rule mean" in at.caption[-1].value or any("rule mean" in c.value for c in at.caption)


def test_classify_gallery_b0_with_gradcam(served):
    at = app().run()
    at.radio(key="classify_model").set_value("B0 (EfficientNet-B0, 128 px)")
    at.segmented_control(key="classify_source").set_value("Sample gallery").run()
    no_failures(at)
    assert at.selectbox(key="gallery_class").value == GALAXY10_CLASSES[0]
    assert any("MIT License" in m.value for m in at.markdown)  # the samples' README and licence
    at.selectbox(key="gallery_class").set_value("Barred Spiral").run()
    at.toggle(key="classify_cam").set_value(True).run()
    no_failures(at)
    assert at.subheader[0].value in GALAXY10_CLASSES
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("Grad-CAM galaxy-b0 for ") for c in captions), captions


def test_classify_bad_image_shows_server_message(served):
    at = app().run()
    at.radio(key="classify_model").set_value("B2 (EfficientNet-B2, 224 px)")
    at.file_uploader[0].set_value(("broken.png", b"\x89PNG not really", "image/png")).run()
    assert not at.exception
    assert any("HTTP 400" in e and "not an image" in e for e in texts(at.error))
    assert texts(at.subheader) == ["Demo models"]  # no prediction shown, only the demo section


def test_batch_table_counts_and_csv(served):
    at = page("pages/batch.py")
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(SAMPLES.glob("class_[05]_0.jpg"))]
    files.append(("empty.jpg", b"", "image/jpeg"))
    at.radio(key="batch_model").set_value("B0 (EfficientNet-B0, 128 px)")
    at.file_uploader(key="batch_upload").set_value(files).run()
    at.button(key="batch_run").click().run()
    assert not at.exception and not at.error
    table = frames(at)[0]
    assert list(table["file"]) == ["class_0_0.jpg", "class_5_0.jpg", "empty.jpg"]
    assert table["class_name"].iloc[:2].isin(GALAXY10_CLASSES).all()
    assert "empty image" in table["error"].iloc[2]
    assert "2 of 3 classified" in at.subheader[0].value
    assert len(at.download_button) == 1


def test_server_page_lists_models_and_confirms_unregister(served):
    at = page("pages/server.py")
    no_failures(at)
    assert {m.label: m.value for m in at.metric}["Health"] == "Healthy"
    models = frames(at)[0]
    assert {"galaxy-b0", "galaxy-b2"} <= set(models["model"])
    assert models.set_index("model").loc["galaxy-b0", "status"] == "READY"
    assert "galaxy-ensemble" in set(frames(at)[1]["workflow"])
    # unregister asks first; cancelling changes nothing
    at.selectbox(key="unregister_model").set_value("galaxy-b2").run()
    at.button(key="unregister_ask").click().run()
    assert any("Unregister **galaxy-b2**" in w for w in texts(at.warning))
    at.button(key="unregister_no").click().run()
    assert not at.warning
    assert "galaxy-b2" in set(frames(at)[0]["model"])
    # registering an archive that is already served: the server's refusal is shown, not raised
    at.selectbox(key="register_archive").set_value("galaxy-b0.mar").run()
    at.button(key="register_go").click().run()
    assert not at.exception
    assert any("refused" in e and "HTTP" in e for e in texts(at.error))


def test_metrics_page_draws_history(served):
    at = page("pages/metrics.py")
    no_failures(at)
    labels = {m.label: m.value for m in at.metric}
    assert float(labels["2XX responses"]) >= 1
    assert len(at.session_state["metrics_history"]) >= 1
    n = len(at.session_state["metrics_history"])
    at.run()
    assert len(at.session_state["metrics_history"]) > n
    charts = at.get("vega_lite_chart")  # responses, latency, worker memory (+ host memory later)
    assert len(charts) >= 3
    assert any("Worker memory" in m.value for m in at.markdown)


def test_model_card_page(served):
    at = page("pages/model_card.py")
    no_failures(at)
    assert at.selectbox(key="card_model").value == "galaxy-b0"
    assert {m.label: m.value for m in at.metric}["Version"] == "1.0 (default)"
    assert "Training data" in texts(at.subheader)
    assert any("random-init" in i.value and "not measured" in i.value for i in at.info)
    assert "Demo models" in texts(at.subheader)
    at.selectbox(key="card_model").set_value("galaxy-b2").run()
    no_failures(at)
    assert any('"galaxy-b2"' in json.dumps(j.value) or "galaxy-b2" in str(j.value)
               for j in at.json)


# ----------------------------------------------------------------------------- failures

PAGES = ["pages/classify.py", "pages/batch.py", "pages/server.py", "pages/metrics.py",
         "pages/model_card.py"]


def test_every_page_explains_a_stopped_server_and_recovers(monkeypatch, torchserve, unused_port):
    point_at(monkeypatch, torchserve)
    point_at_closed(monkeypatch, unused_port)
    at = app().run()
    sample = SAMPLES / "class_7_0.jpg"
    at.file_uploader[0].set_value((sample.name, sample.read_bytes(), "image/jpeg")).run()
    for p in PAGES:
        at.switch_page(p).run()
        if p == "pages/batch.py":
            at.checkbox(key="batch_gallery").check().run()
            at.button(key="batch_run").click().run()
        assert not at.exception, (p, [e.value for e in at.exception])
        assert any("not reachable" in e and "make serve" in e for e in texts(at.error)), p
    # the server is back: the same session works again
    point_at(monkeypatch, torchserve)
    at.switch_page("pages/server.py").run()
    no_failures(at)
    assert "galaxy-b0" in set(frames(at)[0]["model"])


def test_rejected_token_is_explained(monkeypatch, torchserve, tmp_path):
    bad = json.loads(torchserve.key_file.read_text())
    for kind in ("inference", "management", "API"):
        bad[kind]["key"] = "wrong"
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(bad))
    point_at(monkeypatch, torchserve, key_file)
    at = page("pages/server.py")
    assert not at.exception
    assert any("refused the access token" in e for e in texts(at.error))


# ----------------------------------------------------------------------------- helpers

def test_views_helpers():
    g = views.gallery()
    assert len(g) == 100 and g[0]["class_name"] == "Disturbed"
    f = views.probabilities_frame({c: 0.1 * i for i, c in enumerate(GALAXY10_CLASSES)})
    assert list(f["class"]) == list(GALAXY10_CLASSES) and f["probability"].iloc[3] == pytest.approx(0.3)
    assert views.crop_box((256, 256), "galaxy-b2") == (18, 18, 238, 238)
    assert views.crop_box((256, 256), "galaxy-b0") == (0, 0, 256, 256)
    heat = views.heatmap_array({"heatmap": [[0, 1], [2, 4]]})
    assert heat.max() == 1.0 and heat.min() == 0.0
    from PIL import Image
    img = Image.new("RGB", (64, 64))
    out = views.overlay(img, heat, (8, 8, 56, 56))
    assert out.size == (64, 64) and out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((50, 50)) != (0, 0, 0)


def test_metrics_history_draws_only_reported_numbers():
    from torchserve_ops.client import parse_prometheus

    text = """# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="vm",} 3.0
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="galaxy-b0",model_version="default",hostname="vm",} 4.0
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{model_name="galaxy-b0",model_version="default",hostname="vm",} 8000.0
"""
    quiet, busy = views.snapshot([], 0), views.snapshot(parse_prometheus(text), 5)
    assert busy["2xx"] == 3 and busy["latency:galaxy-b0"] == pytest.approx(2.0)
    assert quiet["memory_used_mb"] is None and busy["memory_used_mb"] is None  # not reported yet
    assert not views.drawable(views.history_frame([quiet]))  # all zero: not drawn
    assert views.drawable(views.history_frame([quiet, busy]))
    assert list(views.history_frame([quiet, busy], "latency:").columns) == ["galaxy-b0"]
    assert views.history_frame([quiet, busy], "memory_used_mb").empty  # None throughout: no column


def test_worker_memory_from_psutil_only_for_local_servers():
    import os

    assert views.is_local("127.0.0.1") and views.is_local("localhost")
    assert not views.is_local("192.0.2.1")  # TEST-NET address: never this machine
    desc = {"galaxy-b0": [{"modelVersion": "1.0", "workers": [{"id": "9000", "pid": os.getpid(),
                                                               "status": "READY"}]}]}
    assert views.worker_rows(desc, local=True)[0]["memory MB"] > 10  # this test process
    assert "memory MB" not in views.worker_rows(desc, local=False)[0]
    assert "memory MB" not in views.models_table(desc, {"galaxy-b0": "1.0"}, local=False)


def test_comparison_table_formats_ece_and_provenance():
    report = {"models": {"b0": {"accuracy": 0.9, "macro": {"precision": 0.9, "recall": 0.9, "f1": 0.89},
                                "ece": {"uncalibrated": 0.077, "calibrated": 0.02}}},
              "ensemble": {"seed": {"accuracy": 0.9, "macro": {"precision": 0.9, "recall": 0.9, "f1": 0.9},
                                    "ece": 0.05}},
              "real_samples_accuracy": {"b0": 0.48, "ensemble": 0.47}}
    table = views.comparison_table(report).set_index("name")
    assert table.loc["b0", "ECE"] == 0.077 and table.loc["b0", "ECE after temperature scaling"] == 0.02
    assert table.loc["seed", "ECE"] == 0.05 and table.loc["seed", "real samples accuracy"] == 0.47
    assert table.map(lambda v: not isinstance(v, dict)).all().all()  # no raw dicts printed
    card = {"training_data": {"path": "data/synthetic.h5"}, "synthetic_training_data": True,
            "real_samples_accuracy": 0.48, "ensemble_comparison": report}
    text = views.provenance_text(views.provenance(card))
    assert "synthetic galaxies" in text and "48%" in text and "(#demo-models)" in text
    assert "47%" in views.provenance_text(views.provenance(card, "galaxy-ensemble"))
    assert "not measured" in views.provenance_text(views.provenance({"training_data": {"path": "x.h5"}}))
    assert "8 flips" not in text
    assert "8 flips" in views.provenance_text(views.provenance({**card, "serving": {"tta": True}}))
    assert "synthetic galaxies" in views.readme_section("Demo models")


# ----------------------------------------------------------------------------- management

@pytest.fixture(scope="module")
def versioned_server(tmp_path_factory, served_archives):
    """A TorchServe of its own serving galaxy-b0 1.0, with galaxy-b0-v2.0.mar in its store."""
    import shutil

    from torchserve_ops import server as ts_server
    from torchserve_ops.archive import build_model_archive

    run_dir, shared_store = served_archives
    root = tmp_path_factory.mktemp("versions")
    store = root / "store"
    store.mkdir()
    shutil.copy(shared_store / "galaxy-b0.mar", store)
    build_model_archive(run_dir, "b0", store, version="2.0", versioned_name=True)
    s = ts_server.start(store, root, ports=ts_server.free_ports(), models=("galaxy-b0.mar",), workflow=None,
                        log_dir=root / "logs", quiet=True)
    try:
        yield s
    finally:
        ts_server.stop(s.workdir, s.log_dir)


@pytest.mark.slow
def test_server_page_register_default_scale_unregister(monkeypatch, versioned_server):
    point_at(monkeypatch, versioned_server)

    def versions(at):
        t = frames(at)[0]
        return {r["version"]: r for r in t[t["model"] == "galaxy-b0"].to_dict("records")}

    at = page("pages/server.py")
    no_failures(at)
    assert list(versions(at)) == ["1.0"]
    at.selectbox(key="register_archive").set_value("galaxy-b0-v2.0.mar").run()
    at.button(key="register_go").click().run()
    no_failures(at)
    assert "registered" in texts(at.success)[0]
    v = versions(at)
    assert set(v) == {"1.0", "2.0"} and v["1.0"]["default"] and not v["2.0"]["default"]

    at.selectbox(key="default_version").set_value("2.0").run()
    at.button(key="default_go").click().run()
    no_failures(at)
    assert versions(at)["2.0"]["default"]

    at.selectbox(key="scale_version").set_value("2.0").run()
    at.number_input(key="scale_min").set_value(0).run()
    at.number_input(key="scale_max").set_value(1).run()
    at.button(key="scale_go").click().run()
    no_failures(at)
    assert versions(at)["2.0"]["min/max"] == "0/1"

    # roll back, then unregister 2.0 after confirming
    at.selectbox(key="default_version").set_value("1.0").run()
    at.button(key="default_go").click().run()
    at.selectbox(key="unregister_version").set_value("2.0").run()
    at.button(key="unregister_ask").click().run()
    at.button(key="unregister_yes").click().run()
    no_failures(at)
    assert "unregistered" in texts(at.success)[0]
    assert list(versions(at)) == ["1.0"] and versions(at)["1.0"]["default"]
