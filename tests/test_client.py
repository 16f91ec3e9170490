"""torchserve_ops.client: the Prometheus parser, key handling, and every call against a real TorchServe.

    .venv/bin/python -m pytest -q tests/test_client.py
"""
from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import pytest
import requests

from torchserve_ops.client import (AuthError, NotReady, Sample, ServerError, ServerTimeout,
                                   ServerUnavailable, TorchServeClient,
                                   locate_key_file, metric_total, parse_prometheus, read_key_file)
from galaxy_morph.specs import GALAXY10_CLASSES

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "galaxy10_decals" / "class_2_0.jpg"

# As TorchServe 0.12 writes it (note the trailing comma inside the braces).
TS_METRICS = """\
# HELP Requests2XX Torchserve prometheus counter metric with unit: Count
# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="vm",} 118.0
# HELP ts_inference_latency_microseconds Cumulative inference duration in microseconds
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{uuid="a1b2",model_name="galaxy-b0",model_version="default",} 22845.6
ts_inference_latency_microseconds{uuid="a1b2",model_name="galaxy-b2",model_version="default",} 16646.5
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{uuid="a1b2",model_name="galaxy-b0",model_version="default",} 7.0
ts_inference_requests_total{uuid="a1b2",model_name="galaxy-b2",model_version="default",} 9.0
# HELP MemoryUsed Torchserve prometheus gauge metric with unit: Megabytes
# TYPE MemoryUsed gauge
MemoryUsed{Level="Host",Hostname="vm",} 12067.4
"""


# ----------------------------------------------------------------------------- parser

def test_parse_torchserve_metrics():
    samples = parse_prometheus(TS_METRICS)
    assert len(samples) == 6
    # prometheus_client names every counter sample NAME_total, whatever the exposition says
    assert samples[0] == Sample("Requests2XX_total", {"Level": "Host", "Hostname": "vm"}, 118.0)
    assert metric_total(samples, "ts_inference_requests_total") == 16.0
    assert metric_total(samples, "ts_inference_requests_total", model_name="galaxy-b0") == 7.0
    assert metric_total(samples, "ts_inference_latency_microseconds_total",
                        model_name="galaxy-b2") == pytest.approx(16646.5)
    assert metric_total(samples, "MemoryUsed") == pytest.approx(12067.4)
    assert metric_total(samples, "absent") == 0.0



def test_parse_escapes_special_values_and_timestamps():
    text = (
        '# a free comment\n\n'
        'm{path="C:\\\\dir",msg="say \\"hi\\"\\nbye", empty=""} 1.5e3 1700000000000\n'
        'nan_metric NaN\n'
        'up{a="x"} +Inf\n'
        'down -Inf\n'
    )
    s = parse_prometheus(text)
    assert s[0].labels == {"path": "C:\\dir", "msg": 'say "hi"\nbye', "empty": ""}
    assert s[0].value == 1500.0
    assert math.isnan(s[1].value)
    assert s[2].value == math.inf and s[3].value == -math.inf


@pytest.mark.parametrize("bad", ['m{a="x" 1', "m{a=x} 1", "m", 'm{a="x"} one', "{a=\"x\"} 1"])
def test_parse_rejects_malformed_lines(bad):
    with pytest.raises(ValueError):
        parse_prometheus("ok 1\n" + bad)


# ----------------------------------------------------------------------------- keys, no server

def test_read_key_file(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text(json.dumps({"management": {"key": "M", "expiration time": "x"},
                             "inference": {"key": "I", "expiration time": "x"}, "API": {"key": "A"}}))
    assert read_key_file(f) == {"management": "M", "inference": "I", "API": "A"}
    assert read_key_file(tmp_path / "missing.json") == {}


def test_from_env(tmp_path):
    c = TorchServeClient.from_env({"TS_HOST": "127.0.0.2", "TS_INFERENCE_PORT": "1",
                                   "TS_MANAGEMENT_PORT": "2", "TS_METRICS_PORT": "3",
                                   "TS_KEY_FILE": str(tmp_path / "k.json")})
    assert (c.inference_url, c.management_url, c.metrics_url) == (
        "http://127.0.0.2:1", "http://127.0.0.2:2", "http://127.0.0.2:3")
    assert c.key_file == tmp_path / "k.json"
    d = TorchServeClient.from_env({})
    assert d.inference_url.endswith(":8080") and d.key_file == REPO / "key_file.json"


def test_locate_key_file(tmp_path, monkeypatch):
    assert locate_key_file({"TS_KEY_FILE": "/x/k.json"}) == Path("/x/k.json")
    monkeypatch.chdir(tmp_path)
    assert locate_key_file({}) == REPO / "key_file.json"  # none here: the repository's
    (tmp_path / "key_file.json").write_text("{}")
    assert locate_key_file({}) == Path("key_file.json")


def test_closed_port_is_server_unavailable(unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    c = TorchServeClient(url, url, url, key_file=None)
    for call in (c.ping, c.list_models, c.metrics, lambda: c.predict("galaxy-b0", b"x")):
        with pytest.raises(ServerUnavailable, match="cannot connect"):
            call()


def test_wait_until_ready_gives_up_with_the_reason(unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    c = TorchServeClient(url, url, url, key_file=None, timeout=(0.5, 0.5))
    with pytest.raises(NotReady, match="not ready after 1 s: cannot connect"):
        c.wait_until_ready(["galaxy-b0"], timeout=1.0)


def test_silent_server_is_timeout():
    with socket.socket() as srv:  # accepts connections (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        c = TorchServeClient(url, url, url, key_file=None, timeout=(1.0, 0.5))
        with pytest.raises(ServerTimeout):
            c.ping()


# ----------------------------------------------------------------------------- real server

@pytest.fixture(scope="module")
def client(torchserve):
    return TorchServeClient(torchserve.inference_url, torchserve.management_url,
                            torchserve.metrics_url, key_file=torchserve.key_file)


@pytest.mark.server
def test_ping_and_models(client):
    assert client.ping()["status"] == "Healthy"
    names = {m["modelName"] for m in client.list_models()}
    assert {"galaxy-b0", "galaxy-b2"} <= names
    assert "galaxy-ensemble" in {w["workflowName"] for w in client.list_workflows()}


@pytest.mark.server
@pytest.mark.parametrize("model", ["galaxy-b0", "galaxy-b2"])
def test_predict_real_sample(client, model):
    r = client.predict(model, SAMPLE.read_bytes())
    assert r["model"] == model and r["version"] == "1.0"
    assert r["class_name"] == GALAXY10_CLASSES[r["label"]]
    assert list(r["probabilities"]) == list(GALAXY10_CLASSES)
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r["confidence"] == pytest.approx(r["probabilities"][r["class_name"]])
    assert client.predict(model, SAMPLE.read_bytes(), version="1.0")["label"] == r["label"]


@pytest.mark.server
def test_predict_bad_image_is_client_error(client):
    with pytest.raises(ServerError) as e:
        client.predict("galaxy-b0", b"this is not an image")
    assert e.value.status == 400 and e.value.is_client_error
    assert "not an image" in e.value.message
    with pytest.raises(ServerError) as e:
        client.predict("no-such-model", SAMPLE.read_bytes())
    assert e.value.status == 404


@pytest.mark.server
def test_workflow_rules_and_errors(client):
    data = SAMPLE.read_bytes()
    default = client.predict_workflow("galaxy-ensemble", data)  # no measured rule in these archives: mean
    assert default["rule"] == "mean" and default["source"] in ("both", "b0", "b2", "neither")
    assert default["b0"]["class_name"] and default["b2"]["class_name"]
    seed = client.predict_workflow("galaxy-ensemble", data, rule="seed")
    assert seed["rule"] == "seed" and seed["label"] == seed["b0"]["label"]  # the seed system: B0 answers
    mean = client.predict_workflow("galaxy-ensemble", data, rule="mean")
    assert mean["rule"] == "mean"
    assert sum(mean["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # TorchServe answers a failed workflow with 200 + {"error"}: the client raises it.
    with pytest.raises(ServerError, match="unknown ensemble rule") as e:
        client.predict_workflow("galaxy-ensemble", data, rule="bogus")
    assert e.value.status == 400
    with pytest.raises(ServerError, match="not an image"):
        client.predict_workflow("galaxy-ensemble", b"\x00" * 64)


@pytest.mark.server
def test_explain(client):
    e = client.explain("galaxy-b0", SAMPLE.read_bytes(), target=3)
    assert e["target"] == 3
    heat = e["heatmap"]
    assert [len(heat), len(heat[0])] == e["shape"]


@pytest.mark.server
def test_describe_model_card(client):
    d = client.describe("galaxy-b0")
    assert d[0]["modelName"] == "galaxy-b0" and d[0]["modelVersion"] == "1.0"
    card = d[0]["customizedMetadata"]
    assert isinstance(card, dict) and card["model"] == "galaxy-b0"
    assert client.default_version("galaxy-b0") == "1.0"
    assert [v["modelVersion"] for v in client.versions("galaxy-b0")] == ["1.0"]
    assert all(w["status"] == "READY" for w in d[0]["workers"])


@pytest.mark.server
def test_management_errors_are_typed(client):
    with pytest.raises(ServerError) as e:
        client.describe("no-such-model")
    assert e.value.status == 404 and "no-such-model" in e.value.message
    with pytest.raises(ServerError) as e:  # already registered
        client.register("galaxy-b0.mar")
    assert e.value.is_client_error


@pytest.mark.server
def test_metrics(client):
    client.predict("galaxy-b0", SAMPLE.read_bytes())
    samples = client.metrics()
    assert metric_total(samples, "Requests2XX_total") >= 1
    assert metric_total(samples, "ts_inference_requests_total", model_name="galaxy-b0") >= 1
    # the names dashboard/views.py reads: cumulative latency counters, one per model
    assert metric_total(samples, "ts_inference_latency_microseconds_total", model_name="galaxy-b0") > 0
    assert all(isinstance(s.value, float) for s in samples)


@pytest.mark.server
def test_stale_keys_then_key_file_fixed(torchserve, tmp_path):
    """A refused key: the client re-reads the key file; it works once the file is right."""
    real = json.loads(torchserve.key_file.read_text())
    stale = json.loads(json.dumps(real))
    for kind in ("inference", "management", "API"):
        stale[kind]["key"] = "stale" + kind
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(stale))
    c = TorchServeClient(torchserve.inference_url, torchserve.management_url,
                         torchserve.metrics_url, key_file=key_file)
    with pytest.raises(AuthError) as e:
        c.ping()
    assert "refused the token" in str(e.value)
    with pytest.raises(AuthError):
        c.list_models()
    key_file.write_text(json.dumps(real))  # e.g. the server restarted and wrote new keys
    assert c.ping()["status"] == "Healthy"
    assert any(m["modelName"] == "galaxy-b0" for m in c.list_models())


@pytest.mark.server
def test_wrong_key_in_memory_reloads(client, torchserve):
    client._keys["inference"] = "wrong"
    assert client.ping()["status"] == "Healthy"
    assert client._key("inference") == torchserve.inference_key()


@pytest.fixture(scope="module")
def short_token_server(tmp_path_factory):
    """A TorchServe without models whose keys expire after 6 seconds."""
    from torchserve_ops import server as ts_server

    if not ts_server.TEMPLATE.is_file():
        pytest.skip("no config.properties")
    root = tmp_path_factory.mktemp("short_token")
    template = root / "config.properties"
    lines = [l for l in ts_server.TEMPLATE.read_text().splitlines()
             if not l.startswith("token_expiration_min=")]
    template.write_text("\n".join(lines + ["token_expiration_min=0.1"]) + "\n")
    store = root / "store"
    store.mkdir()
    s = ts_server.start(store, root, ports=ts_server.free_ports(), models=(), workflow=None,
                        log_dir=root / "logs", template=template, quiet=True)  # returns once /ping answers
    try:
        yield s
    finally:
        ts_server.stop(s.workdir, s.log_dir)


@pytest.mark.server
def test_expired_keys_are_renewed_with_token_api(short_token_server):
    s = short_token_server
    c = TorchServeClient(s.inference_url, s.management_url, s.metrics_url, key_file=s.key_file)
    first = c._key("inference")
    assert c.ping()["status"] == "Healthy"
    time.sleep(7)  # both keys expire; the key file still holds them
    assert requests.get(s.inference_url + "/ping", headers={"Authorization": f"Bearer {first}"},
                        timeout=5).status_code == 400
    assert c.ping()["status"] == "Healthy"  # refused -> same key in file -> token API -> retry
    assert c._key("inference") != first
    assert c.list_models() == []  # the management key is renewed the same way


@pytest.mark.server
def test_renew_key_invalidates_old_key(short_token_server):
    s = short_token_server
    a = TorchServeClient(s.inference_url, s.management_url, s.metrics_url, key_file=s.key_file)
    b = TorchServeClient(s.inference_url, s.management_url, s.metrics_url, key_file=s.key_file)
    old = a._key("inference")
    new = a.renew_key("inference")
    assert new and new != old and s.inference_key() == new
    assert requests.get(s.inference_url + "/ping", headers={"Authorization": f"Bearer {old}"},
                        timeout=5).status_code == 400
    assert b.ping()["status"] == "Healthy"  # b held the old key: refused, re-read, retried
