"""Integration tests against the real TorchServe started by the `torchserve` fixture (conftest.py).

    .venv/bin/python -m pytest -q tests/test_serving.py
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from galaxy_morph import ensemble
from galaxy_morph.specs import GALAXY10_CLASSES

pytestmark = pytest.mark.server

FIELDS = {"model", "version", "label", "class_name", "confidence", "probabilities", "calibrated",
          "in_distribution", "ood_score"}


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def synthetic_galaxy(size=96, angle=0.6, axis=0.5, seed=0) -> np.ndarray:
    """A smooth elliptical blob on a noisy dark sky, float 0..1, HxW."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size / 2
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    img = np.exp(-((u / (size / 6)) ** 2 + (v / (size * axis / 6)) ** 2))
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def synthetic_images() -> dict[str, bytes]:
    g = synthetic_galaxy()
    rgb = np.stack([g, g * 0.8, g * 0.6], -1)
    rgba = np.concatenate([rgb, np.ones_like(g)[..., None]], -1)
    return {
        "rgb_jpeg": jpeg(Image.fromarray((rgb * 255).astype(np.uint8))),
        "grey_png": png(Image.fromarray((g * 255).astype(np.uint8))),
        "grey16_png": png(Image.fromarray((g * 65535).astype(np.uint16))),
        "rgba_png": png(Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")),
    }


def predict(ts, body: bytes, model="galaxy-b0", headers=None, path="predictions"):
    h = {**ts.auth("inference"), "Content-Type": "application/octet-stream", **(headers or {})}
    return requests.post(f"{ts.inference_url}/{path}/{model}", data=body, headers=h, timeout=120)


def check_answer(a: dict, model: str):
    assert FIELDS <= set(a)
    assert a["model"] == model
    assert list(a["probabilities"]) == list(GALAXY10_CLASSES)
    p = np.array(list(a["probabilities"].values()))
    assert abs(p.sum() - 1) < 1e-4 and (p >= 0).all()
    assert a["label"] == int(p.argmax()) and a["class_name"] == GALAXY10_CLASSES[a["label"]]
    assert a["confidence"] == pytest.approx(p[a["label"]])


def test_ping(torchserve):
    r = requests.get(torchserve.inference_url + "/ping", headers=torchserve.auth("inference"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "Healthy"


@pytest.mark.parametrize("model", ["galaxy-b0", "galaxy-b2"])
def test_models_on_real_samples(torchserve, sample_images, model):
    paths = sample_images[::5]  # 20 images, 2 per class; concurrent so that they batch
    assert len(paths) >= 10
    with cf.ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda p: predict(torchserve, p.read_bytes(), model), paths))
    for r in answers:
        assert r.status_code == 200, r.text
        check_answer(r.json(), model)
        assert r.json()["version"] == "1.0"


@pytest.mark.parametrize("kind", list(synthetic_images()))
@pytest.mark.parametrize("model", ["galaxy-b0", "galaxy-b2"])
def test_models_on_synthetic_images(torchserve, model, kind):
    r = predict(torchserve, synthetic_images()[kind], model)
    assert r.status_code == 200, r.text
    check_answer(r.json(), model)


def test_request_forms_agree(torchserve, sample_images):
    data = sample_images[0].read_bytes()
    url = torchserve.inference_url + "/predictions/galaxy-b2"
    auth = torchserve.auth("inference")
    raw = predict(torchserve, data, "galaxy-b2").json()
    multipart = requests.post(url, files={"data": ("g.jpg", data, "image/jpeg")}, headers=auth, timeout=60).json()
    b64 = requests.post(url, json={"image": base64.b64encode(data).decode()}, headers=auth, timeout=60).json()
    put = requests.put(url, data=data, headers=auth, timeout=60).json()  # what `curl -T` sends
    for other in (multipart, b64, put):
        assert other["label"] == raw["label"]
        assert other["probabilities"] == pytest.approx(raw["probabilities"], abs=1e-6)


def wfpredict(ts, body: bytes, rule=None):
    h = {**ts.auth("inference"), "Content-Type": "application/octet-stream"}
    if rule:
        h["X-Ensemble-Rule"] = rule
    return requests.post(f"{ts.inference_url}/wfpredict/galaxy-ensemble", data=body, headers=h, timeout=120)


@pytest.mark.parametrize("rule", [None, "seed", "mean"])
def test_workflow_matches_core_rule(torchserve, sample_images, rule):
    for path in sample_images[:2]:
        data = path.read_bytes()
        p0 = list(predict(torchserve, data, "galaxy-b0").json()["probabilities"].values())
        p2 = list(predict(torchserve, data, "galaxy-b2").json()["probabilities"].values())
        r = wfpredict(torchserve, data, rule)
        assert r.status_code == 200
        got = r.json()
        assert "error" not in got, got
        want = ensemble.combine(rule or "mean", p0, p2)  # no measured rule in these archives: mean
        check_answer(got, "galaxy-ensemble")
        assert got["rule"] == want["rule"] and got["source"] == want["source"]
        assert got["label"] == want["label"]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
        assert list(got["probabilities"].values()) == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["b0"]["probabilities"] == pytest.approx(dict(zip(GALAXY10_CLASSES, p0)), abs=1e-6)
        assert got["b2"]["label"] == int(np.argmax(p2))


def test_workflow_errors_carry_the_reason(torchserve, sample_images):
    data = sample_images[0].read_bytes()
    for body, rule, words in [(data, "weighted", "F1"), (data, "median", "unknown ensemble rule"),
                              (b"not an image", None, "not an image"), (data[:2000], None, "truncated")]:
        r = wfpredict(torchserve, body, rule)
        doc = r.json()  # TorchServe 0.12 answers a finished workflow with 200 (docs/api.md)
        assert doc["code"] == 400 and words in doc["error"], doc
    assert "error" not in wfpredict(torchserve, data).json()


def big_png():
    return png(Image.new("L", (4100, 4100)))


BAD_INPUTS = {
    "empty": (lambda: b"", 400, "empty"),
    "not_an_image": (lambda: b"GIF89a but not really an image at all", 400, "not an image"),
    "truncated": (lambda: (SAMPLE_BYTES[0])[:3000], 400, "truncated"),
    "too_many_pixels": (big_png, 413, "too large"),
    "too_small": (lambda: png(Image.new("RGB", (4, 4))), 400, "too small"),
}
SAMPLE_BYTES = []


@pytest.fixture(autouse=True, scope="module")
def _sample_bytes(sample_images):
    SAMPLE_BYTES[:] = [sample_images[0].read_bytes()]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_4xx_json(torchserve, case):
    make, code, words = BAD_INPUTS[case]
    r = predict(torchserve, make(), "galaxy-b0")
    assert r.status_code == code
    assert r.json()["code"] == code and words in r.json()["error"]


def test_bad_json_bodies(torchserve):
    url = torchserve.inference_url + "/predictions/galaxy-b0"
    auth = torchserve.auth("inference")
    r = requests.post(url, json={"image": "%%% not base64 %%%"}, headers=auth, timeout=60)
    assert r.status_code == 400 and "base64" in r.json()["error"]
    r = requests.post(url, json={"picture": "abc"}, headers=auth, timeout=60)
    assert r.status_code == 400 and "image" in r.json()["error"]


def test_request_over_size_limit_refused(torchserve):
    r = predict(torchserve, b"\xff\xd8" + b"\0" * (17 << 20), "galaxy-b0")
    assert r.status_code == 413


def test_batch_with_bad_images_fails_only_those(torchserve, sample_images):
    good = [p.read_bytes() for p in sample_images[:4]]
    bodies = [good[0], b"", good[1], b"junk" * 10, good[2], good[3][:2500], good[3], good[0]]
    with cf.ThreadPoolExecutor(len(bodies)) as ex:
        rs = list(ex.map(lambda b: predict(torchserve, b, "galaxy-b0"), bodies))
    codes = [r.status_code for r in rs]
    assert codes == [200, 400, 200, 400, 200, 400, 200, 200]
    assert rs[0].json()["probabilities"] == pytest.approx(rs[-1].json()["probabilities"], abs=1e-6)
    assert predict(torchserve, good[0], "galaxy-b0").status_code == 200  # worker still serving


def test_missing_or_wrong_token_refused(torchserve):
    for url in (torchserve.inference_url + "/ping", torchserve.inference_url + "/predictions/galaxy-b0",
                torchserve.management_url + "/models"):
        assert requests.get(url, timeout=10).status_code in (400, 401)
        bad = {"Authorization": "Bearer not-the-key"}
        assert requests.get(url, headers=bad, timeout=10).status_code in (400, 401)
    # the inference key does not open the management API
    r = requests.get(torchserve.management_url + "/models", headers=torchserve.auth("inference"), timeout=10)
    assert r.status_code in (400, 401)
    r = requests.get(torchserve.management_url + "/models", headers=torchserve.auth("management"), timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("url", ["file:///etc/passwd.mar", "http://127.0.0.1:9/evil.mar",
                                 "https://example.com/galaxy-b0.mar", "file:///tmp/model_store/x.mar"])
def test_register_outside_allowed_urls_refused(torchserve, url):
    r = requests.post(torchserve.management_url + "/models", params={"url": url},
                      headers=torchserve.auth("management"), timeout=30)
    assert r.status_code in (400, 404)
    assert "allowed" in r.json()["message"]


def test_describe_returns_model_card(torchserve):
    r = requests.get(torchserve.management_url + "/models/galaxy-b2", params={"customized": "true"},
                     headers=torchserve.auth("management"), timeout=30)
    card = r.json()[0]["customizedMetadata"]
    card = json.loads(card) if isinstance(card, str) else card
    assert card["model"] == "galaxy-b2" and card["version"] == "1.0"
    assert card["spec"]["name"] == "b2" and card["class_names"] == list(GALAXY10_CLASSES)
    assert card["training_data"]["path"] == "random-init" and len(card["weights_sha256"]) == 64
    assert card["evaluated"] is False and "note" in card  # built without an evaluation report


@pytest.mark.parametrize("model,stride", [("galaxy-b0", 16), ("galaxy-b2", 32)])  # of the CAM layer
def test_explanation_shape_and_not_constant(torchserve, sample_images, model, stride):
    from tests.conftest import small_spec

    crop = small_spec(model.split("-")[1]).crop
    shape = [-(-crop // stride)] * 2  # (128 px: 8 x 8 for B0; 224 px: 7 x 7 for B2)
    data = sample_images[10].read_bytes()
    r = predict(torchserve, data, model, path="explanations")
    assert r.status_code == 200, r.text
    e = r.json()
    heat = np.array(e["heatmap"])
    assert list(heat.shape) == e["shape"] == shape
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() == pytest.approx(1)
    assert heat.std() > 0
    assert e["target"] == e["predicted"] and e["method"] == "captum.attr.LayerGradCam"
    r = predict(torchserve, data, model, path="explanations", headers={"X-Target-Class": "Merging"})
    assert r.json()["target"] == 1
    r = predict(torchserve, data, model, path="explanations", headers={"X-Target-Class": "42"})
    assert r.status_code == 400 and "out of range" in r.json()["error"]


def test_metrics_speak_prometheus(torchserve):
    predict(torchserve, synthetic_images()["rgb_jpeg"], "galaxy-b0")
    r = requests.get(torchserve.metrics_url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert "# TYPE" in r.text and "ts_inference_requests_total" in r.text
    assert 'model_name="galaxy-b0"' in r.text


def test_form_content_type_is_refused_by_torchserve_itself(torchserve, sample_images):
    """Image bytes labelled as a form never reach the handler: TorchServe's frontend answers 500
    (docs/api.md, "Image bytes sent as a form"). The same bytes with a proper type are answered."""
    url = torchserve.inference_url + "/predictions/galaxy-b0"
    data = sample_images[0].read_bytes()
    as_form = requests.post(url, data=data, timeout=60, headers={
        **torchserve.auth("inference"), "Content-Type": "application/x-www-form-urlencoded"})
    assert as_form.status_code == 500 and "ErrorDataDecoderException" in as_form.text
    as_bytes = requests.post(url, data=data, timeout=60, headers={
        **torchserve.auth("inference"), "Content-Type": "application/octet-stream"})
    assert as_bytes.status_code == 200 and as_bytes.json()["class_name"] in GALAXY10_CLASSES
