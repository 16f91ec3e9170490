"""Every dashboard page through streamlit.testing.v1.AppTest, against the real TorchServe fixture.

    .venv/bin/python -m pytest -q tests/test_dashboard.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import card_views, metrics_views, views
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
def served(monkeypatch, torchserve, similarity_index):
    point_at(monkeypatch, torchserve)
    monkeypatch.setenv("GALAXY_SIMILARITY_INDEX", str(similarity_index))
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
    # similar galaxies from the index: the upload is one of its samples, so itself first at d = 0
    assert any("Similar galaxies" in m.value for m in at.markdown)
    similar = [c for img in at.image for c in img.captions if " · d=" in c]
    assert len(similar) == 5 and similar[0] == "Round Smooth · d=0.000", similar
    distances = [float(c.rsplit("d=", 1)[1]) for c in similar]
    assert distances == sorted(distances)
    # another rule: the answer says which one it used
    at.selectbox(key="classify_rule").set_value("seed").run()
    no_failures(at)
    assert "rule seed" in at.caption[-1].value or any("rule seed" in c.value for c in at.caption)


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
    similar = [c for c in captions if " · d=" in c]  # in B0's own embedding space
    assert len(similar) == 5 and similar[0].startswith("Barred Spiral · d=0.000"), similar


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


def flat_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((96, 96, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_classify_warns_when_it_is_not_a_galaxy(served):
    """A flat grey cutout is answered, but the page says it does not look like a galaxy and marks
    the class as meaning little; a real sample gets no such warning."""
    at = app().run()
    at.radio(key="classify_model").set_value("B0 (EfficientNet-B0, 128 px)")
    at.file_uploader[0].set_value(("flat.png", flat_png(), "image/png")).run()
    assert not at.exception
    assert any(e.startswith(views.NOT_A_GALAXY) and "constant image" in e for e in texts(at.error))
    assert at.subheader[0].value.endswith("(?)")
    sample = SAMPLES / "class_2_0.jpg"
    at.file_uploader[0].set_value((sample.name, sample.read_bytes(), "image/jpeg")).run()
    no_failures(at)


def test_batch_marks_the_inputs_that_are_not_galaxies(served):
    at = page("pages/batch.py")
    at.radio(key="batch_model").set_value("B2 (EfficientNet-B2, 224 px)")
    sample = SAMPLES / "class_5_0.jpg"
    at.file_uploader(key="batch_upload").set_value([(sample.name, sample.read_bytes(), "image/jpeg"),
                                                    ("flat.png", flat_png(), "image/png")]).run()
    at.button(key="batch_run").click().run()
    assert not at.exception
    table = frames(at)[0]
    assert list(table["galaxy?"]) == ["yes", "NOT A GALAXY?"]
    assert any(w.startswith("1 of 2") for w in texts(at.warning))


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


def wait_for_workflow_metrics(ts, nodes=("b0", "b2")) -> None:
    """After a workflow request: until the server's metrics time each member (PredictionTime
    comes from the workers' logs, a moment after the answer); the page's 2 s metrics cache is
    emptied so that it reads them."""
    import time

    from dashboard import common

    client, deadline = ts.client(), time.time() + 30
    while True:
        table = metrics_views.per_model_latency(client.metrics()).set_index("model")
        if all(f"galaxy-ensemble / {n}" in table.index
               and pd.notna(table.loc[f"galaxy-ensemble / {n}", "last prediction ms"]) for n in nodes):
            break
        assert time.time() < deadline, f"no metrics for the workflow's models: {table}"
        time.sleep(0.5)
    common.metrics_samples.clear()


def test_metrics_page_counts_workflow_traffic(served):
    """An ensemble request alone: the workflow's models are in the latency chart and the table."""
    served.client().predict_workflow("galaxy-ensemble", (SAMPLES / "class_3_0.jpg").read_bytes())
    wait_for_workflow_metrics(served)
    at = page("pages/metrics.py")
    no_failures(at)
    table = frames(at)[0].set_index("model")
    for node in ("b0", "b2"):
        row = table.loc[f"galaxy-ensemble / {node}"]
        assert row["inference time s"] > 0 and row["last prediction ms"] > 0, row
    assert "galaxy-ensemble__b0" not in table.index  # attributed readably, not by raw name
    point = at.session_state["metrics_history"][-1]
    latency = {k[len("latency:"):]: v for k, v in point.items() if k.startswith("latency:")}
    assert any(k.startswith("galaxy-ensemble / b0") for k in latency), latency
    assert "No inference requests yet." not in texts(at.caption)
    assert any("not counted" in c for c in texts(at.caption))  # says why there is no mean
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    latency_spec = next(s for s in specs if s["encoding"]["color"]["title"] == "model")
    assert latency_spec["encoding"]["x"]["axis"]["format"] == "%H:%M:%S"
    assert latency_spec["encoding"]["x"]["title"].startswith("time")
    assert latency_spec["encoding"]["y"]["title"] == "ms"


def demo_card(model: str = "b0", old: bool = False) -> dict:
    """The model card torchserve_ops.archive writes for the committed demo checkpoint; `old`: as
    archives built before model_card copied the report's macro F1 (then the card held the
    per-class scores only, and the page said "Macro F1 n/a")."""
    from torchserve_ops.archive import model_card

    ckpt = REPO / "checkpoints" / "demo" / model
    meta = json.loads((ckpt / "meta.json").read_text())
    card = json.loads(json.dumps(model_card(f"galaxy-{model}", "1.0", ckpt, meta, ckpt.parent)))
    if old:
        card["test"].pop("macro_f1", None)
    return card


def test_model_card_page_shows_macro_f1_of_an_evaluated_model(served, monkeypatch):
    """A card with a per-class F1 table (the demo checkpoint's) shows its macro F1, not "n/a"."""
    from dashboard import common

    card = demo_card("b0", old=True)
    report = json.loads((REPO / "checkpoints" / "demo" / "b0" / "report.json").read_text())
    monkeypatch.setattr(common, "card", lambda url, model, version: [{"modelName": model,
                                                                      "customizedMetadata": card}])
    at = page("pages/model_card.py")
    no_failures(at)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Macro F1"].value == f"{report['macro']['f1']:.3f}"
    assert "per-class F1" in metrics["Macro F1"].proto.help
    assert "Per-class scores (test)" in texts(at.subheader)
    shown = frames(at)[1]["f1"]  # the per-class table under the figure
    assert metrics["Macro F1"].value == f"{shown.mean():.3f}"


def test_model_card_page_shows_the_reliability_diagram(served, monkeypatch):
    """The demo B0's card is calibrated: the page shows T and the validation split's reliability
    bins before and after, as many points as non-empty bins."""
    from dashboard import common

    card = demo_card("b0")
    assert card["calibrated"] is True
    cal = card["calibration"]
    rel = card_views.reliability_frame(cal)
    nonempty = sum(1 for n in cal["reliability_before"]["count"] if n) + \
        sum(1 for n in cal["reliability_after"]["count"] if n)
    assert len(rel) == nonempty and rel["count"].sum() == 2 * cal["fitted_on"]["n"]
    assert rel["accuracy"].between(0, 1).all() and rel["confidence"].between(0, 1).all()
    monkeypatch.setattr(common, "card", lambda url, model, version: [{"modelName": model,
                                                                      "customizedMetadata": card}])
    at = page("pages/model_card.py")
    no_failures(at)
    assert "Calibration" in texts(at.subheader)
    served = card["calibration_served"]  # the fit on the real samples answers; both diagrams are shown
    assert any(f"T = {served['temperature']:.3f}, fitted on 100 real galaxies" in c.value for c in at.caption)
    assert any("On the training data's validation split" in c.value for c in at.caption)
    assert any("On 100 real galaxies (the fit served now)" in c.value for c in at.caption)
    card.pop("calibration_served")
    at = page("pages/model_card.py")
    assert any(f"T = {cal['temperature']:.3f}" in c.value for c in at.caption)
    card.pop("calibration")
    card["calibrated"] = False
    at = page("pages/model_card.py")
    assert any("Not calibrated" in c.value for c in at.caption)


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
    quiet, busy = metrics_views.snapshot([], 0), metrics_views.snapshot(parse_prometheus(text), 5)
    assert busy["2xx"] == 3 and busy["latency:galaxy-b0"] == pytest.approx(2.0)
    assert quiet["memory_used_mb"] is None and busy["memory_used_mb"] is None  # not reported yet
    assert not metrics_views.drawable(metrics_views.history_frame([quiet]))  # all zero: not drawn
    assert metrics_views.drawable(metrics_views.history_frame([quiet, busy]))
    assert list(metrics_views.history_frame([quiet, busy], "latency:").columns) == ["galaxy-b0"]
    assert metrics_views.history_frame([quiet, busy], "memory_used_mb").empty  # None throughout: no column


# From a test server's :8082/metrics (TorchServe 0.12, metrics_mode=prometheus) after one
# POST /wfpredict/galaxy-ensemble and one POST /predictions/galaxy-b0 (the families of models only).
WORKFLOW_METRICS = """\
# HELP ts_queue_latency_microseconds Torchserve prometheus counter metric with unit: Microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{model_name="galaxy-ensemble__ensemble",model_version="default",hostname="vm",} 177.653
ts_queue_latency_microseconds{model_name="galaxy-ensemble__pre",model_version="default",hostname="vm",} 322.755
ts_queue_latency_microseconds{model_name="galaxy-ensemble__b0",model_version="default",hostname="vm",} 15690.458
ts_queue_latency_microseconds{model_name="galaxy-b0",model_version="default",hostname="vm",} 28509.023
ts_queue_latency_microseconds{model_name="galaxy-ensemble__b2",model_version="default",hostname="vm",} 52010.541
# HELP PredictionTime Torchserve prometheus gauge metric with unit: ms
# TYPE PredictionTime gauge
PredictionTime{ModelName="galaxy-ensemble__ensemble",Level="Model",Hostname="vm",} 5.89
PredictionTime{ModelName="galaxy-ensemble__pre",Level="Model",Hostname="vm",} 158.1
PredictionTime{ModelName="galaxy-ensemble__b2",Level="Model",Hostname="vm",} 270.09
PredictionTime{ModelName="galaxy-ensemble__b0",Level="Model",Hostname="vm",} 223.75
PredictionTime{ModelName="galaxy-b0",Level="Model",Hostname="vm",} 107.34
# HELP ts_inference_latency_microseconds Torchserve prometheus counter metric with unit: Microseconds
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{model_name="galaxy-ensemble__ensemble",model_version="default",hostname="vm",} 14935.233
ts_inference_latency_microseconds{model_name="galaxy-ensemble__pre",model_version="default",hostname="vm",} 180693.196
ts_inference_latency_microseconds{model_name="galaxy-ensemble__b0",model_version="default",hostname="vm",} 245564.02
ts_inference_latency_microseconds{model_name="galaxy-b0",model_version="default",hostname="vm",} 148230.021
ts_inference_latency_microseconds{model_name="galaxy-ensemble__b2",model_version="default",hostname="vm",} 339285.8
# HELP HandlerTime Torchserve prometheus gauge metric with unit: ms
# TYPE HandlerTime gauge
HandlerTime{ModelName="galaxy-ensemble__b2",Level="Model",Hostname="vm",} 269.03
HandlerTime{ModelName="galaxy-ensemble__b0",Level="Model",Hostname="vm",} 223.43
HandlerTime{ModelName="galaxy-b0",Level="Model",Hostname="vm",} 106.02
# HELP Requests2XX Torchserve prometheus counter metric with unit: Count
# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="vm",} 129.0
# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="galaxy-b0",model_version="default",hostname="vm",} 1.0
"""


def test_workflow_models_are_attributed_and_timed():
    """The workflow's models (galaxy-ensemble__b0 ...) have latency counters and PredictionTime but
    no ts_inference_requests_total: they are still in the table and the latency chart."""
    from torchserve_ops.client import parse_prometheus

    assert metrics_views.model_label("galaxy-ensemble__b0") == "galaxy-ensemble / b0"
    assert metrics_views.model_label("galaxy-b0") == "galaxy-b0"
    samples = parse_prometheus(WORKFLOW_METRICS)
    table = metrics_views.per_model_latency(samples)
    assert list(table["model"]) == ["galaxy-b0", "galaxy-ensemble / b0", "galaxy-ensemble / b2",
                                    "galaxy-ensemble / ensemble", "galaxy-ensemble / pre"]
    rows = table.set_index("model")
    assert rows.loc["galaxy-b0", "requests"] == 1
    assert rows.loc["galaxy-b0", "mean inference ms"] == pytest.approx(148.23)
    assert rows.loc["galaxy-b0", "mean queue ms"] == pytest.approx(28.509)
    b2 = rows.loc["galaxy-ensemble / b2"]
    assert pd.isna(b2["requests"]) and pd.isna(b2["mean inference ms"])  # not counted: no mean
    assert b2["inference time s"] == pytest.approx(0.339, abs=1e-3)
    assert b2["last prediction ms"] == pytest.approx(270.09)
    assert metrics_views.uncounted_models(table) == ["galaxy-ensemble / b0", "galaxy-ensemble / b2",
                                             "galaxy-ensemble / ensemble", "galaxy-ensemble / pre"]

    point = metrics_views.snapshot(samples, 10)
    assert point["latency:galaxy-b0"] == pytest.approx(148.23, abs=0.01)
    assert point["latency:galaxy-ensemble / b0 (latest)"] == pytest.approx(223.75)
    frame = metrics_views.history_frame([metrics_views.snapshot([], 5), point], "latency:")
    assert "galaxy-ensemble / b2 (latest)" in frame.columns and metrics_views.drawable(frame)
    # the workflow alone (no /predictions request at all): the chart is still drawn
    wf_only = [s for s in samples if s.labels.get("model_name", s.labels.get("ModelName", ""))
               .startswith("galaxy-ensemble__")]
    assert metrics_views.drawable(metrics_views.history_frame([metrics_views.snapshot(wf_only, 0)], "latency:"))
    assert len(metrics_views.per_model_latency(wf_only)) == 4


def test_time_axes_are_clock_times():
    """Two polls 4.5 s apart: the x axis is titled, labelled HH:MM:SS, with whole-second ticks
    (Vega's default ticks for a few seconds are 500 ms apart, labelled ".500")."""
    import datetime as dt

    t0 = 1_700_000_000.25
    history = [{"time": t0, "2xx": 1.0, "4xx": 0.0, "5xx": 0.0},
               {"time": t0 + 4.5, "2xx": 3.0, "4xx": 0.0, "5xx": 0.0}]
    frame = metrics_views.history_frame(history)
    assert frame.index[0] == dt.datetime.fromtimestamp(t0)  # local clock, as the page's caption
    spec = metrics_views.time_chart(frame, "responses", "status").to_dict()
    x = spec["encoding"]["x"]
    assert x["type"] == "temporal" and x["title"] == "time (HH:MM:SS)"
    assert x["axis"]["format"] == "%H:%M:%S" and x["scale"]["type"] == "utc"
    # ticks on whole seconds of the local clock (as DateTime objects read as UTC)
    start = dt.datetime.fromtimestamp(t0)
    whole = [start.replace(microsecond=0) + dt.timedelta(seconds=s) for s in range(1, 5)]
    assert x["axis"]["values"] == [{"year": w.year, "month": w.month, "date": w.day, "hours": w.hour,
                                    "minutes": w.minute, "seconds": w.second, "utc": True}
                                   for w in whole]
    assert spec["encoding"]["y"]["title"] == "responses"
    data = next(iter(spec["datasets"].values()))
    assert {d["clock"] for d in data} == {dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")
                                          for t in (t0, t0 + 4.5)}
    assert sorted(d["status"] for d in data) == ["2xx", "2xx", "4xx", "4xx", "5xx", "5xx"]
    assert [metrics_views.tick_step(s) for s in (0, 4.5, 25, 600, 3600)] == [1, 1, 5, 120, 900]
    one = metrics_views.history_frame(history[:1])
    assert metrics_views.clock_ticks(one.index[0], one.index[0]) == [pd.Timestamp(start).floor("s")]


def test_macro_f1_from_the_per_class_scores_of_a_model_card():
    """A card without "macro_f1" (archives built before model_card copied the report's
    "macro": {"f1"}) shows the mean of the per-class F1 it holds; a card with it shows that."""
    report = json.loads((REPO / "checkpoints" / "demo" / "b2" / "report.json").read_text())
    assert card_views.card_summary(demo_card("b2"))["macro_f1"] == pytest.approx(report["macro"]["f1"])
    card = demo_card("b2", old=True)
    assert "macro_f1" not in card["test"] and card["test"]["per_class"]  # what said "n/a"
    info = card_views.card_summary(card)
    assert info["macro_f1"] == pytest.approx(report["macro"]["f1"], abs=1e-9)
    assert info["macro_f1"] == pytest.approx(card_views.per_class_table(info["per_class"])["f1"].mean())
    assert info["macro_f1_source"] == "mean of the per-class F1"
    assert card_views.card_summary({"test": {"macro_f1": 0.5, "per_class_f1": {"a": 1.0}}})["macro_f1"] == 0.5
    assert card_views.macro_f1({"macro": {"f1": 0.25}}) == (0.25, "report")
    assert card_views.macro_f1({"per_class_f1": {"a": 0.5, "b": 1.0}}) == (0.75, "mean of the per-class F1")
    assert card_views.card_summary({"test": None, "note": "no evaluation report"})["macro_f1"] is None
    assert card_views.macro_f1({"per_class": {"a": {"f1": None}}}) == (None, None)


def test_model_card_names_the_generator_where_it_lives_now():
    """The demo checkpoints record their data's source as galaxy_morph.synthetic (what the
    generator writes into its files); the Training data table names simulation.synthetic."""
    card = demo_card("b0")
    assert card["training_data"]["source"] == "galaxy_morph.synthetic"  # the shipped record, unchanged
    assert card_views.card_summary(card)["data"]["source"] == "simulation.synthetic"
    assert card["training_data"]["source"] == "galaxy_morph.synthetic"  # not edited in place
    assert card_views.card_summary({"training_data": {"source": "mine"}})["data"] == {"source": "mine"}


def test_workflow_metrics_of_the_real_server(torchserve):
    """POST /wfpredict/galaxy-ensemble with the inference token: the server names the workflow's
    models galaxy-ensemble__b0 and galaxy-ensemble__b2, and the table shows them readably."""
    import requests

    r = requests.post(torchserve.inference_url + "/wfpredict/galaxy-ensemble",
                      data=(SAMPLES / "class_4_0.jpg").read_bytes(),
                      headers=torchserve.auth("inference"), timeout=180)
    assert r.ok, r.text
    wait_for_workflow_metrics(torchserve)
    samples = torchserve.client().metrics()
    names = {s.labels.get("model_name") for s in samples if s.name == metrics_views.INFERENCE_US}
    assert {"galaxy-ensemble__b0", "galaxy-ensemble__b2"} <= names, names
    table = metrics_views.per_model_latency(samples).set_index("model")
    for node in ("b0", "b2"):
        row = table.loc[f"galaxy-ensemble / {node}"]
        assert row["inference time s"] > 0
        assert pd.notna(row["mean inference ms"]) or pd.notna(row["last prediction ms"])


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
    table = card_views.comparison_table(report).set_index("name")
    assert table.loc["b0", "ECE"] == 0.077 and table.loc["b0", "ECE after temperature scaling"] == 0.02
    assert table.loc["seed", "ECE"] == 0.05 and table.loc["seed", "real samples accuracy"] == 0.47
    assert table.map(lambda v: not isinstance(v, dict)).all().all()  # no raw dicts printed
    card = {"training_data": {"path": "data/synthetic.h5"}, "synthetic_training_data": True,
            "real_samples_accuracy": 0.48, "ensemble_comparison": report}
    text = card_views.provenance_text(card_views.provenance(card))
    assert "synthetic galaxies" in text and "48%" in text and "(#demo-models)" in text
    assert "47%" in card_views.provenance_text(card_views.provenance(card, "galaxy-ensemble"))
    assert "not measured" in card_views.provenance_text(card_views.provenance({"training_data": {"path": "x.h5"}}))
    assert "8 flips" not in text
    assert "8 flips" in card_views.provenance_text(card_views.provenance({**card, "serving": {"tta": True}}))
    assert "synthetic galaxies" in card_views.readme_section("Demo models")


# ----------------------------------------------------------------------------- management

@pytest.fixture(scope="module")
def versioned_server(torchserve):
    """The session TorchServe (galaxy-b0 1.0 served), with galaxy-b0-v2.0.mar in its store. After the
    module: 1.0 is the default again, 2.0 is not registered and its archive is gone."""
    from torchserve_ops.archive import build_model_archive
    from torchserve_ops.client import ServerError

    mar = build_model_archive(torchserve.run_dir, "b0", torchserve.model_store, version="2.0", versioned_name=True)
    try:
        yield torchserve
    finally:
        client = torchserve.client()
        try:
            if client.default_version("galaxy-b0") != "1.0":
                client.set_default("galaxy-b0", "1.0")
            if "2.0" in {v.get("modelVersion") for v in client.versions("galaxy-b0")}:
                client.unregister("galaxy-b0", "2.0")
        except ServerError:
            pass
        finally:
            client.close()
            mar.unlink(missing_ok=True)


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


def test_demo_models_section_comes_from_the_docs_page():
    """The README keeps only a link to docs/demo_models.md: the dashboard's "Demo models" section
    is that page's part about the shipped models, headings under the page's subheader."""
    text = card_views.readme_section("Demo models")
    assert "**They were trained only on synthetic galaxies**" in text and "0.53" in text
    assert text.startswith("#### What is shipped")
    assert "#### Scores" in text and "The synthetic galaxies" not in text  # stops there
    assert "](training.md)" not in text and "`docs/training.md`" in text  # no dead links
    assert text.endswith("More in `docs/demo_models.md`.")
    assert card_views.readme_section("Quick start").startswith("On a fresh Debian machine")  # README's own


def test_retrained_card_reads_as_fine_tuned_and_compares_versions():
    held = {"labels": "labels.db", "n": 21, "from": "checkpoints/demo", "n_labels": 100,
            "this": {"version": "1.1", "accuracy": 0.476, "macro_f1": 0.4, "nll": 2.6, "ece": 0.44},
            "previous": {"version": "1.0", "accuracy": 0.429, "macro_f1": 0.37, "nll": 2.5, "ece": 0.40}}
    new = {"version": "1.1", "held_out_labels": held, "training_data": {"path": "runs/retrain/1.1/labels.h5", "n": 100},
           "test": {"accuracy": 0.476, "macro_f1": 0.4}, "calibrated": True}
    old = {"version": "1.0", "training_data": {"path": "data/synthetic_demo.h5", "n": 30000},
           "test": {"accuracy": 0.926, "macro_f1": 0.92}, "calibrated": True}
    text = card_views.provenance_text(card_views.provenance(new))
    assert "fine-tuned from `checkpoints/demo` (1.0)" in text and "100 galaxies" in text and "48%" in text
    assert card_views.card_summary(new)["accuracy_kind"] == "held-out labels"
    table = card_views.held_out_frame(new).set_index("metric")
    assert table.loc["accuracy"].tolist() == [0.429, 0.476] and "flagged out of distribution" not in table.index
    assert card_views.held_out_frame(old) is None
    versions = card_views.versions_frame({"1.0": old, "1.1": new}, "1.0").set_index("version")
    assert versions.loc["1.0", "default"] and not versions.loc["1.1", "default"]
    assert versions.loc["1.1", "evaluated on"] == "21 held-out labels" and versions.loc["1.0", "evaluated on"] == "test"
    assert versions.loc["1.1", "fine-tuned from"] == "checkpoints/demo (1.0)"
