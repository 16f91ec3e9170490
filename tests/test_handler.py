"""Unit tests of the handler, the workflow functions, the archive card and the launcher config,
with a small fake TorchServe context (no server).

    .venv/bin/python -m pytest -q tests/test_handler.py
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

from pathlib import Path

import numpy as np
import pytest
import torch
import ts
from PIL import Image
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from galaxy_morph import ensemble
from galaxy_morph.models import build_model, save_checkpoint
from galaxy_morph.specs import GALAXY10_CLASSES, get_spec
from handlers import workflow
from handlers.galaxy_handler import GalaxyHandler


METRICS_YAML = str(Path(ts.__file__).parent / "configs" / "metrics.yaml")  # TorchServe's own


def image_bytes(mode="RGB", size=(64, 64), fmt="PNG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        arr = rng.integers(0, 255, (*size[::-1], bands), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def make_context(model_dir, rows, headers=None, name="galaxy-b0", yaml_config=None):
    ctx = Context(name, str(model_dir), {"model": {"modelName": name, "modelVersion": "1.0"}},
                  8, None, "0.12.0", metrics=MetricsCacheYamlImpl(METRICS_YAML),
                  model_yaml_config=yaml_config or {})
    headers = headers or [{} for _ in rows]
    ctx.request_processor = [RequestProcessor(dict(h)) for h in headers]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(rows))}
    return ctx


@pytest.fixture(scope="module")
def b0_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("b0")
    torch.manual_seed(0)
    model = build_model("b0")
    with torch.no_grad():
        model.classifier[-1].bias.normal_(0, 0.5)
    save_checkpoint(d, model, get_spec("b0"), GALAXY10_CLASSES, version="1.0",
                    data={"path": "random-init", "sha256": None, "n": 0})
    return d


@pytest.fixture(scope="module")
def handler(b0_dir):
    h = GalaxyHandler()
    h.initialize(make_context(b0_dir, [{}], yaml_config={"handler": {"spec": "b0", "cam_layer": "features.5"}}))
    return h


def test_spec_mismatch_refused(b0_dir):
    with pytest.raises(ValueError, match="spec"):
        GalaxyHandler().initialize(make_context(b0_dir, [{}], yaml_config={"handler": {"spec": "b2"}}))


def run(handler, b0_dir, rows, headers=None):
    ctx = make_context(b0_dir, rows, headers)
    out = [json.loads(o) for o in handler.handle(rows, ctx)]
    return out, [ctx.get_response_status(i)[0] for i in range(len(rows))]


def test_answers_every_input_form(handler, b0_dir):
    data = image_bytes()
    rows = [{"body": data}, {"data": bytearray(data)}, {"file": data},
            {"body": {"image": base64.b64encode(data).decode()}},
            {"body": json.dumps({"image": base64.b64encode(data).decode()}).encode()},
            {"body": base64.b64encode(data).decode()}]
    out, codes = run(handler, b0_dir, rows)
    assert codes == [200] * len(rows)
    first = out[0]
    assert set(first) == {"model", "version", "label", "class_name", "confidence", "probabilities", "calibrated",
                          "calibration", "in_distribution", "ood_score", "ood_reason"}
    # uniform noise: flagged by the cheap check before any model (this archive has no ood.npz)
    assert first["in_distribution"] is False and "no source" in first["ood_reason"] and first["ood_score"] is None
    assert first["calibrated"] is False and first["calibration"] is None  # no calibration.json: T = 1
    assert first["model"] == "galaxy-b0" and first["version"] == "1.0"
    assert list(first["probabilities"]) == list(GALAXY10_CLASSES)
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert first["class_name"] == GALAXY10_CLASSES[first["label"]]
    for o in out[1:]:
        assert o["probabilities"] == pytest.approx(first["probabilities"], abs=1e-6)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("I;16", "PNG"), ("RGBA", "PNG"), ("RGB", "JPEG"), ("L", "JPEG")])
def test_modes_and_formats(handler, b0_dir, mode, fmt):
    out, codes = run(handler, b0_dir, [{"body": image_bytes(mode, fmt=fmt)}])
    assert codes == [200] and out[0]["model"] == "galaxy-b0"


def big_png():
    buf = io.BytesIO()
    Image.new("L", (4200, 4100)).save(buf, "PNG")
    return buf.getvalue()


BAD = [
    ({"body": b""}, 400, "empty"),
    ({}, 400, "empty"),
    ({"body": b"definitely not an image"}, 400, "not an image"),
    ({"body": image_bytes(fmt="PNG", size=(200, 200))[:400]}, 400, "truncated"),
    ({"body": big_png()}, 413, "too large"),
    ({"body": image_bytes(size=(4, 4))}, 400, "too small"),
    ({"body": {"image": "*** not base64 ***"}}, 400, "base64"),
    ({"body": {"picture": "abc"}}, 400, '"image"'),
    ({"body": image_bytes(fmt="GIF")}, 400, "unsupported image format"),
]


@pytest.mark.parametrize("row,code,words", BAD, ids=[b[2] for b in BAD])
def test_every_bad_input(handler, b0_dir, row, code, words):
    out, codes = run(handler, b0_dir, [row])
    assert codes == [code]
    assert out[0]["code"] == code and words in out[0]["error"]


def test_batch_with_bad_images(handler, b0_dir):
    good = image_bytes(seed=1)
    rows = [{"body": good}, {"body": b""}, {"body": b"junk"}, {"body": good}, {"body": good[:100]}]
    out, codes = run(handler, b0_dir, rows)
    assert codes == [200, 400, 400, 200, 400]
    assert out[0] == out[3]
    assert all("error" in out[i] for i in (1, 2, 4))
    alone, codes = run(handler, b0_dir, [{"body": good}])  # still serving, same answer alone
    assert codes == [200] and alone[0]["label"] == out[0]["label"]
    assert alone[0]["probabilities"] == pytest.approx(out[0]["probabilities"], abs=1e-5)


def test_status_comes_from_the_error_type(handler, b0_dir):
    """413 only for an image over the pixel limit; a message that merely says "too large" is 400."""
    upstream = json.dumps({"error": "image too large for my taste", "code": 400}).encode()
    out, codes = run(handler, b0_dir, [{"body": big_png()}, {"body": upstream}])
    assert codes == [413, 400]


def test_embedding_on_request_is_the_penultimate_layer(handler, b0_dir, sample_images):
    """A multipart field, the X-Embedding header or a JSON field add the features the classifier read;
    without them the answer has none; a value that is not yes/no is a 400."""
    from galaxy_morph.models import features_and_logits

    data = sample_images[0].read_bytes()
    rows = [{"body": data, "embedding": b"true"}, {"body": data},
            {"body": {"image": base64.b64encode(data).decode(), "embedding": True}}, {"body": data},
            {"body": data, "embedding": b"maybe"}]
    out, codes = run(handler, b0_dir, rows, [{}, {"X-Embedding": "true"}, {}, {}, {}])
    assert codes == [200, 200, 200, 200, 400] and "embedding must be true or false" in out[4]["error"]
    assert "embedding" not in out[3]
    from galaxy_morph.imaging import decode_image

    x = handler.member.transform(decode_image(data)).unsqueeze(0)
    with torch.inference_mode():
        expected, _ = features_and_logits(handler.member.model, x)
    for o in out[:3]:
        assert len(o["embedding"]) == 1280
        assert np.allclose(o["embedding"], expected[0].numpy(), atol=1e-4)
        assert o["probabilities"] == pytest.approx(out[3]["probabilities"], abs=1e-6)


def test_mc_dropout_rates_of_the_two_architectures():
    from galaxy_morph.models import head_dropout_rate, mc_dropout_probabilities

    assert head_dropout_rate(build_model("b0")) == pytest.approx(0.2)  # torchvision's default
    b2 = build_model("b2")
    assert head_dropout_rate(b2) == 0.0  # timm's efficientnet_b2 is built with drop_rate 0
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_probabilities(b2, torch.zeros(1, 1408), 4)


def test_batch_mixing_predictions_and_explanations(handler, b0_dir):
    data = image_bytes(seed=5)
    out, codes = run(handler, b0_dir, [{"body": data}, {"body": data}, {"body": b""}],
                     [{}, {"explain": "True"}, {"explain": "True"}])
    assert codes == [200, 200, 400]
    assert "probabilities" in out[0] and "heatmap" not in out[0]
    assert "heatmap" in out[1] and out[1]["predicted"] == out[0]["label"]


def test_describe_returns_card(handler, b0_dir):
    ctx = make_context(b0_dir, [{}], [{"describe": "True"}])
    card = handler.handle([{}], ctx)[0]
    assert card["model"] == "galaxy-b0" and card["spec"]["name"] == "b0"
    assert card["data"]["path"] == "random-init"


def test_explain_shape_target_and_not_constant(handler, b0_dir):
    data = image_bytes(seed=3)
    out, codes = run(handler, b0_dir, [{"body": data}, {"body": {"image": base64.b64encode(data).decode(), "target": 4}}],
                     [{"explain": "True"}, {"explain": "True"}])
    assert codes == [200, 200]
    e, t = out
    assert e["layer"] == "features.5" and e["shape"] == [8, 8] and e["input_size"] == 128
    heat = np.array(e["heatmap"])
    assert heat.shape == (8, 8) and heat.min() >= 0 and heat.max() == pytest.approx(1) and heat.std() > 0
    assert e["target"] == e["predicted"] and t["target"] == 4
    out, codes = run(handler, b0_dir, [{"body": data}], [{"explain": "True", "X-Target-Class": "Merging"}])
    assert out[0]["target"] == 1
    out, codes = run(handler, b0_dir, [{"body": data}], [{"explain": "True", "x-target-class": "nope"}])
    assert codes == [400] and "unknown target" in out[0]["error"]


def test_explain_and_predict_in_one_batch(handler, b0_dir):
    data = image_bytes(seed=4)
    out, codes = run(handler, b0_dir, [{"body": data}, {"body": data}], [{"explain": "True"}, {}])
    assert codes == [200, 200] and "heatmap" in out[0] and "probabilities" in out[1]


def test_b2_default_cam_layer(tmp_path):
    torch.manual_seed(1)
    save_checkpoint(tmp_path, build_model("b2"), get_spec("b2"), GALAXY10_CLASSES, version="3.1")
    h = GalaxyHandler()
    h.initialize(make_context(tmp_path, [{}], name="galaxy-b2"))
    out, codes = run(h, tmp_path, [{"body": image_bytes(size=(96, 96))}], [{"explain": "True"}])
    assert codes == [200] and out[0]["layer"] == "conv_head" and out[0]["shape"] == [7, 7]


# --- workflow functions ------------------------------------------------------------------------
def wf_context(n, rule=None):
    ctx = Context("galaxy-ensemble__x", "/nonexistent", {}, 8, None, "0.12.0")
    ctx.request_processor = [RequestProcessor({"X-Ensemble-Rule": rule} if rule else {}) for _ in range(n)]
    return ctx


def fake_answer(p, model="galaxy-ensemble__b0"):
    label = int(np.argmax(p))
    return json.dumps({"model": model, "version": "1.0", "label": label, "class_name": GALAXY10_CLASSES[label],
                       "confidence": float(p[label]), "probabilities": dict(zip(GALAXY10_CLASSES, map(float, p)))}).encode()


def test_function_nodes_load_with_none():
    assert workflow.pre(None, wf_context(1)) is None
    assert workflow.ensemble(None, wf_context(1)) is None


def test_pre_forwards_base64_or_error():
    data = image_bytes()
    out = workflow.pre([{"body": data}, {"body": b""}], wf_context(2))
    assert base64.b64decode(json.loads(out[0])["image"]) == data
    assert json.loads(out[1]) == {"error": "empty image: the request carried no bytes", "code": 400}
    out = workflow.pre([{"body": data}], wf_context(1, "bogus"))
    assert "unknown ensemble rule" in json.loads(out[0])["error"]


def test_model_handler_passes_upstream_error_on(handler, b0_dir):
    out, codes = run(handler, b0_dir, [{"body": json.dumps({"error": "empty image", "code": 400}).encode()}])
    assert codes == [400] and out[0]["error"] == "empty image"


def probs(seed):
    p = np.random.default_rng(seed).random(10) ** 3
    return p / p.sum()


@pytest.mark.parametrize("rule", [None, "seed", "mean", "MEAN"])
def test_ensemble_applies_core_rule(rule):
    rows = [{"b0": fake_answer(probs(s)), "b2": fake_answer(probs(s + 100), "galaxy-ensemble__b2")} for s in range(6)]
    out = [json.loads(o) for o in workflow.ensemble(rows, wf_context(len(rows), rule))]
    for s, o in enumerate(out):
        want = ensemble.combine((rule or "mean").lower(), probs(s), probs(s + 100))  # no measured rule: mean
        assert o["label"] == want["label"] and o["source"] == want["source"] and o["rule"] == want["rule"]
        assert o["confidence"] == pytest.approx(want["confidence"])
        assert o["class_name"] == GALAXY10_CLASSES[want["label"]]
        assert o["b0"]["model"] == "galaxy-ensemble__b0" and o["b2"]["model"] == "galaxy-ensemble__b2"


@pytest.mark.parametrize("measured", ["seed", "weighted", "mean"])
def test_ensemble_default_is_the_archives_measured_rule(monkeypatch, measured):
    """ensemble.json's default_rule (training.evaluate's choice) answers when no header asks; a header
    still picks any rule."""
    f1 = {"b0": list(np.linspace(0.2, 0.9, 10)), "b2": list(np.linspace(0.9, 0.2, 10))}
    monkeypatch.setattr(workflow, "_settings", {"name": "galaxy-ensemble", "default_rule": measured,
                                                "val_per_class_f1": f1})
    rows = [{"b0": fake_answer(probs(s)), "b2": fake_answer(probs(s + 100))} for s in range(4)]
    out = [json.loads(o) for o in workflow.ensemble(rows, wf_context(len(rows)))]
    assert {o["rule"] for o in out} == {measured}
    for s, o in enumerate(out):
        assert o["label"] == ensemble.combine(measured, probs(s), probs(s + 100), f1["b0"], f1["b2"])["label"]
    seed = [json.loads(o) for o in workflow.ensemble(rows, wf_context(len(rows), "seed"))]
    assert [o["label"] for o in seed] == [int(np.argmax(probs(s))) for s in range(4)]  # B0's, always
    assert {o["rule"] for o in seed} == {"seed"}


def test_ensemble_weighted_needs_f1(monkeypatch):
    rows = [{"b0": fake_answer(probs(1)), "b2": fake_answer(probs(2))}]
    monkeypatch.setattr(workflow, "_settings", {"name": "galaxy-ensemble"})
    out = json.loads(workflow.ensemble(rows, wf_context(1, "weighted"))[0])
    assert out["code"] == 400 and "F1" in out["error"]
    f1 = {"b0": list(np.linspace(0.2, 0.9, 10)), "b2": list(np.linspace(0.9, 0.2, 10))}
    monkeypatch.setattr(workflow, "_settings", {"name": "galaxy-ensemble", "val_per_class_f1": f1})
    out = json.loads(workflow.ensemble(rows, wf_context(1, "weighted"))[0])
    want = ensemble.combine("weighted", probs(1), probs(2), f1["b0"], f1["b2"])
    assert out["rule"] == "weighted" and out["label"] == want["label"]
    assert out["confidence"] == pytest.approx(want["confidence"])


TRIO = {"name": "galaxy-trio", "models": {m: {"url": f"galaxy-{m}.mar"} for m in ("b0", "b2", "convnext")}}


def trio_row(s):
    return {m: fake_answer(probs(s + 100 * k), f"galaxy-trio__{m}") for k, m in enumerate(TRIO["models"])}


@pytest.mark.parametrize("rule", [None, "mean"])
def test_three_members_default_to_mean(monkeypatch, rule):
    monkeypatch.setattr(workflow, "_settings", dict(TRIO))
    out = [json.loads(o) for o in workflow.ensemble([trio_row(s) for s in range(3)], wf_context(3, rule))]
    for s, o in enumerate(out):
        want = ensemble.combine_models("mean", {m: probs(s + 100 * k) for k, m in enumerate(TRIO["models"])})
        assert o["rule"] == "mean" and o["label"] == want["label"] and o["source"] == want["source"]
        assert list(o["probabilities"].values()) == pytest.approx(want["probabilities"])
        assert [o[m]["model"] for m in TRIO["models"]] == ["galaxy-trio__b0", "galaxy-trio__b2", "galaxy-trio__convnext"]
        assert o["model"] == "galaxy-trio" and o["version"] == "b0 1.0 + b2 1.0 + convnext 1.0"


def test_three_members_refuse_seed_before_the_models(monkeypatch):
    monkeypatch.setattr(workflow, "_settings", dict(TRIO))
    refused = json.loads(workflow.pre([{"body": image_bytes()}], wf_context(1, "seed"))[0])
    assert refused["code"] == 400 and "seed rule is defined for exactly two models" in refused["error"]
    assert "got 3: b0, b2, convnext" in refused["error"] and "mean or weighted" in refused["error"]
    out = json.loads(workflow.ensemble([trio_row(0)], wf_context(1, "seed"))[0])
    assert out == refused


def test_three_members_weighted_needs_every_f1(monkeypatch):
    f1 = {"b0": list(np.linspace(0.2, 0.9, 10)), "b2": list(np.linspace(0.9, 0.2, 10))}
    monkeypatch.setattr(workflow, "_settings", {**TRIO, "val_per_class_f1": f1})
    out = json.loads(workflow.ensemble([trio_row(1)], wf_context(1, "weighted"))[0])
    assert out["code"] == 400 and "(missing: convnext)" in out["error"]
    f1["convnext"] = [0.5] * 10
    out = json.loads(workflow.ensemble([trio_row(1)], wf_context(1, "weighted"))[0])
    want = ensemble.weighted_rule({m: probs(1 + 100 * k) for k, m in enumerate(TRIO["models"])}, f1)
    assert out["rule"] == "weighted" and out["label"] == want["label"]
    assert out["confidence"] == pytest.approx(want["confidence"])


def test_ensemble_forwards_model_errors():
    err = json.dumps({"error": "truncated or corrupt image", "code": 400}).encode()
    out = json.loads(workflow.ensemble([{"b0": err, "b2": err}], wf_context(1))[0])
    assert out == {"error": "truncated or corrupt image", "code": 400}


# --- archive card and launcher configuration ---------------------------------------------------
def test_model_card_with_and_without_report(b0_dir, tmp_path):
    from torchserve_ops.archive import model_card
    from galaxy_morph.models import read_meta

    meta = read_meta(b0_dir)
    card = model_card("galaxy-b0", "1.0", b0_dir, meta, tmp_path)
    assert card["test"] is None and card["val_per_class_f1"] is None and "note" in card
    assert card["evaluated"] is False
    run = tmp_path / "run"
    (run / "b0").mkdir(parents=True)
    for f in ("model.pt", "meta.json"):
        (run / "b0" / f).write_bytes((b0_dir / f).read_bytes())
    report = {"accuracy": 0.8, "per_class": {c: {"precision": 0.8, "recall": 0.8, "f1": 0.7, "support": 5}
                                             for c in GALAXY10_CLASSES},
              "confusion_matrix": np.eye(10, dtype=int).tolist(), "val_per_class_f1": [0.5] * 10}
    (run / "b0" / "report.json").write_text(json.dumps(report))
    (run / "report.json").write_text(json.dumps({"models": {"b0": {"accuracy": 0.8}}, "ensemble": {"seed": 0.81}}))
    card = model_card("galaxy-b0", "1.0", run / "b0", meta, run)
    assert card["evaluated"] is True and card["test"]["accuracy"] == 0.8 and card["test"]["per_class_f1"]["Merging"] == 0.7
    assert card["test"]["confusion_matrix"][0][0] == 1 and card["val_per_class_f1"] == [0.5] * 10
    assert card["ensemble_comparison"]["ensemble"]["seed"] == 0.81
    # served with TTA, the card shows the TTA figures on the real samples
    (run / "report.json").write_text(json.dumps({
        "real_samples_accuracy": {"b0": 0.53, "b2": 0.52, "ensemble": 0.53, "n": 100},
        "real_samples_tta": {"accuracy": {"b0": 0.55, "b2": 0.52, "ensemble": 0.55, "ensemble_mean": 0.57}}}))
    (run / "b0" / "report.json").write_text(json.dumps({**report, "real_samples_accuracy": 0.53}))
    plain = model_card("galaxy-b0", "1.0", run / "b0", meta, run, {"spec": "b0", "tta": False})
    tta = model_card("galaxy-b0", "1.0", run / "b0", meta, run, {"spec": "b0", "tta": True})
    assert plain["real_samples_accuracy"] == 0.53 and plain["serving"] == {"tta": False}
    assert tta["real_samples_accuracy"] == 0.55 and tta["serving"] == {"tta": True}
    assert tta["ensemble_comparison"]["real_samples_accuracy"] == {"b0": 0.55, "b2": 0.52, "ensemble": 0.55}
    # figures measured with TTA (make models evaluates with it) are not shown for a plain archive
    (run / "b0" / "report.json").write_text(json.dumps({**report, "tta": True, "real_samples_accuracy": 0.6}))
    (run / "report.json").write_text(json.dumps({"tta": True, "real_samples_accuracy": {"b0": 0.6, "n": 100}}))
    plain = model_card("galaxy-b0", "1.0", run / "b0", meta, run, {"spec": "b0", "tta": False})
    assert "real_samples_accuracy" not in plain and "real_samples_accuracy" not in plain["ensemble_comparison"]
    tta = model_card("galaxy-b0", "1.0", run / "b0", meta, run, {"spec": "b0", "tta": True})
    assert tta["real_samples_accuracy"] == 0.6 and tta["ensemble_comparison"]["real_samples_accuracy"]["b0"] == 0.6


def test_archive_models_come_from_the_run(tmp_path, capsys):
    from torchserve_ops import archive

    for m in ("convnext", "b0", "notaspec"):
        (tmp_path / "run" / m).mkdir(parents=True)
        (tmp_path / "run" / m / "model.pt").write_bytes(b"w")
    from galaxy_morph.predictor import run_members
    assert run_members(tmp_path / "run") == ["b0", "convnext"]
    assert archive.workflow_members(["convnext", "b2", "b0"]) == ["b0", "convnext", "b2"]
    with pytest.raises(SystemExit, match="needs two or more models, got b0"):
        archive.build_all(tmp_path / "run", tmp_path / "store", models=["b0"])
    assert not (tmp_path / "store").exists()  # refused before building anything
    for argv, words in ((["--models", "b0,b7"], "unknown model 'b7': choose from b0, b2, convnext"),
                        (["--models", "b0,b0"], "names a model twice"),
                        ([], "no checkpoint in")):
        with pytest.raises(SystemExit):
            archive.main(["--run", str(tmp_path / ("run" if argv else "empty")), *argv])
        assert words in capsys.readouterr().err


def test_rendered_config(tmp_path):
    from torchserve_ops.server import render_config

    store = tmp_path / "my.store-1" / "model_store"
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    text = render_config(tmp_path / "c.properties", ports, store).read_text()
    props = dict(l.split("=", 1) for l in text.splitlines() if "=" in l and not l.startswith("#"))
    assert props["inference_address"] == "http://127.0.0.1:1"
    assert props["management_address"] == "http://127.0.0.1:2" and props["metrics_address"] == "http://127.0.0.1:3"
    assert props["grpc_inference_port"] == "4" and props["grpc_management_port"] == "5"
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "true"
    assert props["metrics_mode"] == "prometheus"
    assert "\\" not in props["allowed_urls"]  # a Java properties file would eat it
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{store.resolve()}/galaxy-b0.mar")
    for url in (f"file://{store.resolve()}/../x.mar", f"file://{store.resolve()}x/galaxy-b0.mar",
                "file:///etc/passwd", "http://example.com/galaxy-b0.mar", f"file://{store.resolve()}/sub/x.mar"):
        assert not allowed.fullmatch(url), url


def test_handler_module_defines_one_class():
    """TorchServe's loader refuses a handler file that defines more than one class."""
    from ts.utils.util import list_classes_from_module

    import handlers.galaxy_handler as module

    assert list_classes_from_module(module) == [GalaxyHandler]


def make_handler(model_dir, **config):
    h = GalaxyHandler()
    h.initialize(make_context(model_dir, [{}], yaml_config={"handler": {"spec": "b0", **config}}))
    return h


SHIPPED_B0 = Path(__file__).resolve().parents[1] / "checkpoints" / "demo" / "b0"
needs_shipped = pytest.mark.skipif(not (SHIPPED_B0 / "model.pt").is_file(), reason="no shipped demo models")


@needs_shipped
def test_tta_answers_do_not_depend_on_orientation(sample_images, tmp_path):
    """With tta the answer is the mean over the 8 flips/quarter turns, so it no longer depends on
    how the galaxy was turned or mirrored (the trained B0 on a real sample; its weights without the
    temperature, which applies to the plain answers only)."""
    b0 = tmp_path / "b0"
    b0.mkdir()
    for f in ("model.pt", "meta.json"):
        shutil.copy2(SHIPPED_B0 / f, b0 / f)
    plain, tta = make_handler(b0), make_handler(b0, tta=True)
    img = Image.open(sample_images[7]).convert("RGB")
    views = []
    T = Image.Transpose
    for op in (None, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270, T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM,
               T.TRANSPOSE, T.TRANSVERSE):  # the 8 symmetries of the square
        buf = io.BytesIO()
        (img if op is None else img.transpose(op)).save(buf, "PNG")
        views.append({"body": buf.getvalue()})
    out_plain, _ = run(plain, b0, views)
    out_tta, codes = run(tta, b0, views)
    assert codes == [200] * 8
    spread = lambda out: max(abs(o["probabilities"][c] - out[0]["probabilities"][c])
                             for o in out for c in GALAXY10_CLASSES)
    # One view: the answer moves with the orientation; the dihedral mean does not (up to PIL's
    # uint8 rounding of the resize, which differs for a turned image).
    assert spread(out_tta) < 0.1 * spread(out_plain)
    mean = np.mean([[o["probabilities"][c] for c in GALAXY10_CLASSES] for o in out_plain], 0)
    assert np.allclose(mean, [out_tta[0]["probabilities"][c] for c in GALAXY10_CLASSES], atol=1e-2)


@needs_shipped
def test_gpu_settings_answer_as_the_cpu_settings(sample_images):
    """The GPU archive's handler settings (bf16 autocast, JPEG decoded by torchvision on the
    model's device), run here on the CPU: the trained B0 gives the same labels on the real samples
    and nearly the same probabilities."""
    from torchserve_ops.archive import DEVICE_CONFIG

    ref = make_handler(SHIPPED_B0, **{**DEVICE_CONFIG["cpu"]["handler"], "runtime": "torch"})  # fp32, PIL
    gpu_like = make_handler(SHIPPED_B0, **DEVICE_CONFIG["cuda"]["handler"])
    assert gpu_like.member.autocast_dtype == torch.bfloat16 and gpu_like.decoder == "device"
    # a fifth of the samples, two of each class: bf16 on a CPU is slow (~0.25 s an image)
    rows = [{"body": p.read_bytes()} for p in sample_images[::5]]
    out_ref, _ = run(ref, SHIPPED_B0, rows)
    out_dev, codes = run(gpu_like, SHIPPED_B0, rows)
    assert codes == [200] * len(rows)
    same = sum(a["label"] == b["label"] for a, b in zip(out_ref, out_dev))
    assert same >= 0.95 * len(rows)
    diff = max(abs(a["probabilities"][c] - b["probabilities"][c])
               for a, b in zip(out_ref, out_dev) for c in GALAXY10_CLASSES)
    assert 0 < diff < 0.1  # bf16 is not fp32, and not far from it
    # inputs the device decoder does not take go PIL's way; bad ones are refused the same way
    for row, code, words in BAD:
        out, codes = run(gpu_like, SHIPPED_B0, [row])
        assert codes == [code] and words in out[0]["error"], words
    for mode, fmt in (("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG")):
        out, codes = run(gpu_like, SHIPPED_B0, [{"body": image_bytes(mode, fmt=fmt)}])
        assert codes == [200], (mode, fmt)
    truncated = (sample_images[0].read_bytes())[:-600]
    out, codes = run(gpu_like, SHIPPED_B0, [{"body": truncated}])
    assert codes == [400] and "truncated" in out[0]["error"]


@needs_shipped
def test_mc_dropout_on_request(sample_images, monkeypatch):
    """X-MC-Dropout: N answers N head passes with the model's own dropout and their BALD score
    (the trained B0: a random-init head answers with its bias alone); the plain answer is
    unchanged; N outside 2..64 is refused, as is a model without dropout."""
    from labelling.acquisition import bald

    handler, b0_dir = make_handler(SHIPPED_B0), SHIPPED_B0
    data = sample_images[3].read_bytes()
    out, codes = run(handler, b0_dir, [{"body": data}, {"body": data}, {"body": data, "mc_dropout": b"1"},
                                       {"body": data, "mc_dropout": b"lots"}],
                     [{"X-MC-Dropout": "16"}, {}, {}, {}])
    assert codes == [200, 200, 400, 400] and "2..64" in out[2]["error"] and "number of passes" in out[3]["error"]
    mc = out[0]["mc_dropout"]
    assert mc["passes"] == 16 and len(mc["probabilities"]) == 16 and "mc_dropout" not in out[1]
    assert all(sum(p) == pytest.approx(1, abs=1e-4) for p in mc["probabilities"])
    assert len({tuple(p) for p in mc["probabilities"]}) == 16  # a fresh dropout mask each pass
    assert mc["bald"] == pytest.approx(float(bald(np.array(mc["probabilities"])[:, None])[0]), abs=1e-5)
    assert mc["bald"] > 0
    assert out[0]["probabilities"] == pytest.approx(out[1]["probabilities"], abs=1e-6)
    monkeypatch.setattr(handler.member.model.classifier[0], "p", 0.0)  # a head trained without dropout
    out, codes = run(handler, b0_dir, [{"body": data}], [{"X-MC-Dropout": "8"}])
    assert codes == [400] and "without dropout" in out[0]["error"]


def test_bad_handler_settings_are_refused(b0_dir):
    for config in ({"precision": "fp8"}, {"decode": "gpu"}):
        with pytest.raises(ValueError, match="precision must be one of fp32, bf16 and decode one of pil, device"):
            make_handler(b0_dir, **config)


def test_onnx_runtime_needs_the_archives_checked_export(b0_dir, tmp_path):
    with pytest.raises(ValueError, match="no model.onnx checked against its weights"):
        make_handler(b0_dir, runtime="onnx")
    from galaxy_morph.runtimes import ensure_onnx

    d = tmp_path / "b0"
    shutil.copytree(b0_dir, d)
    ensure_onnx(d)
    h = make_handler(d, runtime="onnx", cam_layer="features.5")
    body = image_bytes(size=(96, 96), fmt="JPEG")
    out, codes = run(h, d, [{"body": body}, {"body": b"nope"}])
    want, _ = run(make_handler(d, cam_layer="features.5"), d, [{"body": body}])
    assert codes == [200, 400] and out[0]["label"] == want[0]["label"]
    assert np.allclose(list(out[0]["probabilities"].values()), list(want[0]["probabilities"].values()), atol=1e-4)


def test_archive_settings_per_device():
    from torchserve_ops import archive

    cpu = archive.model_config_for("b0", "b0", "cpu")
    cuda = archive.model_config_for("b2", "b2", "cuda", tta=True, overrides={"batchSize": 4})
    assert "deviceType" not in cpu and (cpu["minWorkers"], cpu["maxWorkers"], cpu["batchSize"]) == (2, 2, 4)
    assert cpu["handler"] == {"spec": "b0", "precision": "fp32", "decode": "pil", "runtime": "onnx", "tta": False,
                              "cam_layer": "features.5"}
    assert cuda["deviceType"] == "gpu" and cuda["batchSize"] == 4  # overrides win
    assert cuda["handler"] == {"spec": "b2", "precision": "bf16", "decode": "device", "runtime": "torch", "tta": True}
    with pytest.raises(ValueError, match="unknown serving device 'tpu'"):
        archive.model_config_for("b0", "b0", "tpu")
    assert cuda["minWorkers"] == cuda["maxWorkers"] == 1
    # the workflow's own copies of the models run as the device's archives do
    assert archive.workflow_config_for("cpu") == {"min-workers": 2, "max-workers": 2, "batch-size": 4,
                                                  "max-batch-delay": 3}
    assert archive.workflow_config_for("cuda", {"batch-size": 4}) == {"min-workers": 1, "max-workers": 1,
                                                                      "batch-size": 4, "max-batch-delay": 5}

def test_store_stamp_follows_every_input(tmp_path, monkeypatch):
    """The store's stamp changes with a checkpoint file, the run's ensemble settings, the options and
    the shipped code; and not with a file's time."""
    import os

    from torchserve_ops import archive

    run = tmp_path / "run"
    for m in ("b0", "b2"):
        (run / m).mkdir(parents=True)
        (run / m / "model.pt").write_bytes(m.encode())
    stamp = archive.built_from(run, ["b0", "b2"])
    assert re.fullmatch(r"[0-9a-f]{16}", stamp) and archive.built_from(run, ["b0", "b2"]) == stamp
    os.utime(run / "b0" / "model.pt", (1, 1))
    assert archive.built_from(run, ["b0", "b2"]) == stamp
    changed = {archive.built_from(run, ["b0", "b2"], "cuda"), archive.built_from(run, ["b0", "b2"], tta=True),
               archive.built_from(run, ["b0"])}
    (run / "ensemble.json").write_text('{"default_rule": "mean"}')
    changed.add(archive.built_from(run, ["b0", "b2"]))
    (run / "b2" / "model.pt").write_bytes(b"retrained")
    changed.add(archive.built_from(run, ["b0", "b2"]))
    code = tmp_path / "code"
    code.mkdir()
    (code / "__init__.py").write_text("")
    monkeypatch.setattr(archive, "SHIPPED", (type("M", (), {"__file__": str(code / "__init__.py")}),))
    changed.add(archive.built_from(run, ["b0", "b2"]))
    assert stamp not in changed and len(changed) == 6
