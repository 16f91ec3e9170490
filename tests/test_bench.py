"""The serving bench's logic (bench.raw, bench.report, bench.ray_rate), bench.gpu_serving and
bench.handler on tiny models and made-up figures (no timing assertions), and the FastAPI peer
(bench.peers) on a real port against Predictor.answer."""
from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from bench import common, raw, ray_rate, report
from galaxy_morph.imaging import decode_image
from galaxy_morph.specs import get_spec
from galaxy_morph.transforms import eval_transform

from .conftest import SAMPLES


def tiny_members() -> dict:
    """{"b0": (model, transform), "b2": ...}: the real eval transforms, models of a few weights."""
    out = {}
    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(i)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 10)).eval()
        out[name] = (model.to(memory_format=torch.channels_last), eval_transform(get_spec(name)))
    return out


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    files = sorted(SAMPLES.glob("*.jpg"))[:16]
    assert files, f"no sample images in {SAMPLES}"
    return [f.read_bytes() for f in files]


def test_classify_bytes_is_decode_transform_forward(payloads):
    members = tiny_members()
    timings = {}
    got = raw.classify_bytes(payloads[:4], {"b2": members["b2"]}, timings)
    model, tf = members["b2"]
    with torch.inference_mode():
        x = torch.stack([tf(decode_image(p)) for p in payloads[:4]])
        want = torch.softmax(model(x.contiguous(memory_format=torch.channels_last)), 1).tolist()
    assert list(got) == ["b2"] and len(got["b2"]) == 4
    assert torch.allclose(torch.tensor(got["b2"]), torch.tensor(want), atol=1e-6)
    assert set(timings) == {"decode", "transform", "forward"} and all(v >= 0 for v in timings.values())


def test_classify_bytes_ensemble_decodes_each_image_once(payloads, monkeypatch):
    import galaxy_morph.imaging

    calls = []
    real = galaxy_morph.imaging.decode_image
    monkeypatch.setattr(galaxy_morph.imaging, "decode_image", lambda data: calls.append(1) or real(data))
    timings = {}
    got = raw.classify_bytes(payloads[:3], tiny_members(), timings)
    assert len(calls) == 3  # once per image, not once per model
    assert list(got) == ["b0", "b2"] and all(len(v) == 3 for v in got.values())
    # accumulates over calls, as the throughput loop uses it
    before = dict(timings)
    raw.classify_bytes(payloads[:3], tiny_members(), timings)
    assert all(timings[k] >= before[k] for k in before)


def test_raw_throughput_reports_both_rates_per_target(payloads):
    out = raw.raw_throughput(tiny_members(), payloads, seconds=0.01, batch=4, threads=(1,))
    assert set(out) == {"model", "bytes"}
    for mode in out:
        assert set(out[mode]) == set(common.TARGETS)
        for r in out[mode].values():
            assert r["img_s"] > 0 and r["per_cpu"] > 0 and r["threads"] == 1
            assert set(r["by_threads"]) == {1}
    for r in out["bytes"].values():
        assert {"decode_ms", "transform_ms", "forward_ms"} <= set(r)
    assert torch.get_num_threads() >= 1
    only = raw.raw_throughput(tiny_members(), payloads, seconds=0.01, batch=4, threads=(1,),
                              targets=("ensemble",))
    assert set(only["bytes"]) == {"ensemble"}


def test_collect_raw_takes_medians():
    def round_(scale):
        mk = lambda v: {"img_s": v * scale, "per_cpu": v, "threads": 2, "by_threads": {1: v, 2: v * scale},  # noqa: E731
                        "decode_ms": 1.0 * scale, "transform_ms": 2.0, "forward_ms": 3.0}
        return {"model": {t: mk(100.0) for t in common.TARGETS}, "bytes": {t: mk(50.0) for t in common.TARGETS}}

    results = {t: {} for t in common.TARGETS}
    report.collect_raw(results, [round_(1.0), round_(3.0), round_(2.0)])
    r = results["b0"]
    assert r["raw_img_s"] == 200.0 and r["raw_bytes_img_s"] == 100.0
    assert r["raw_runs"] == [100.0, 300.0, 200.0]
    assert r["raw_bytes_stage_ms"] == {"decode": 2.0, "transform": 2.0, "forward": 3.0}
    assert r["raw_bytes_by_threads"] == {1: 50.0, 2: 100.0}


def fake_load(img_s, p50=50.0, p99=100.0, statuses=None):
    return {"concurrency": 8, "img_s": img_s, "img_per_cpu_s": img_s / 2, "cpu_ms_per_img": 10.0,
            "first_proc_cpu_ms_per_img": 1.0, "client_cpu_ms_per_img": 2.0,
            "p50_ms": p50, "p95_ms": p99 * 0.9, "p99_ms": p99, "statuses": statuses or {"200": 10}}


def fake_results(served=(85.0, 40.0, 20.0)):
    results = {}
    for t, s in zip(common.TARGETS, served):
        results[t] = {"served_c1": fake_load(s / 3), "served_c8": fake_load(s), "served_c64": fake_load(s),
                      "flask_c1": fake_load(10.0), "flask_c8": fake_load(20.0), "flask_c64": fake_load(20.0),
                      "fastapi_c1": fake_load(30.0), "fastapi_c8": fake_load(70.0),
                      "fastapi_c64": fake_load(75.0), "raw_img_s": 200.0, "raw_bytes_img_s": 100.0,
                      "raw_per_cpu": 100.0, "raw_bytes_per_cpu": 50.0, "raw_runs": [200.0],
                      "raw_threads": [2], "raw_bytes_runs": [100.0], "raw_bytes_threads": [2],
                      "raw_bytes_stage_ms": {"decode": 1.0, "transform": 2.0, "forward": 7.0},
                      "raw_bytes_by_threads": {1: 60.0, 2: 100.0},
                      "raw_bytes_torch_img_s": 50.0, "raw_bytes_torch_per_cpu": 25.0,
                      "raw_bytes_torch_runs": [50.0], "raw_bytes_torch_threads": [1]}
    return results


MEMORY = {"rss": {"frontend (java)": 300, "total": 300}, "pss": {"frontend (java)": 290, "total": 290}}


def test_summarise_and_judge():
    summary = report.summarise(fake_results(), MEMORY, 1000, "onnx", {"flask": 900, "fastapi": 800})
    b0 = summary["b0"]
    assert b0["runtime"] == "onnx" and b0["raw_bytes_torch_img_s"] == 50.0 and b0["raw_bytes_img_s"] == 100.0
    assert b0["served_over_raw_bytes"] == 0.85 and b0["served_over_raw"] == 0.42
    assert b0["served_over_raw_bytes_torch"] == 1.7
    assert b0["raw_bytes_over_raw"] == 0.5 and b0["p99_over_p50"] == 2.0
    assert b0["served_over_raw_bytes_per_cpu"] == 0.85  # (85/2) / 50
    assert b0["peers"] == {"fastapi": 70.0, "flask": 20.0} and b0["best_peer"] == "fastapi"
    assert b0["served_over_best_peer"] == 1.21
    assert set(b0["peers_detail"]["fastapi"]) == {"c1", "c8", "c64"}
    assert b0["peers_detail"]["fastapi"]["c8"]["cpu_s_per_img"] == 0.01
    assert summary["memory"]["torchserve_pss_mb"]["total"] == 290
    goals = {g["goal"]: g for g in report.judge(summary)}
    assert goals["b0 served c=8 >= 0.7x raw-from-bytes on onnx"]["met"]  # 0.85
    assert goals["b0 served c=8 >= 1.0x raw-from-bytes on PyTorch eager"]["met"]  # 1.7
    peer_goal = goals["b0 served c=8 >= 1.0x the best peer"]
    assert peer_goal["met"] and peer_goal["peer"] == "fastapi"
    assert not goals["b2 served c=8 >= 0.7x raw-from-bytes on onnx"]["met"]  # 0.4
    assert not goals["b2 served c=8 >= 1.0x the best peer"]["met"]  # 40 against 70
    assert not goals["ensemble served c=8 >= 0.7x raw-from-bytes on onnx (b0+b2)"]["met"]  # 0.2
    assert goals["b0: p99 <= 3x p50 at c=8"]["met"]
    assert goals["TorchServe stack PSS < 3000 MB"]["met"]
    summary["b2"]["p99_over_p50"] = 3.01
    assert not {g["goal"]: g for g in report.judge(summary)}["b2: p99 <= 3x p50 at c=8"]["met"]
    summary["ensemble"]["served_over_raw_bytes"] = None  # nothing answered: not met, no crash
    assert not {g["goal"]: g for g in report.judge(summary)}[
        "ensemble served c=8 >= 0.7x raw-from-bytes on onnx (b0+b2)"]["met"]
    summary["memory"]["torchserve_pss_mb"]["total"] = 3000
    assert not {g["goal"]: g for g in report.judge(summary)}["TorchServe stack PSS < 3000 MB"]["met"]


def test_collect_raw_keeps_the_torch_rounds_apart():
    rounds = [{"bytes": {t: {"img_s": v, "per_cpu": v, "threads": 1, "by_threads": {1: v}} for t in common.TARGETS}}
              for v in (40.0, 60.0, 50.0)]
    results = {t: {"raw_bytes_img_s": 100.0} for t in common.TARGETS}
    report.collect_raw(results, rounds, tag="_torch")
    assert results["b2"]["raw_bytes_torch_img_s"] == 50.0 and results["b2"]["raw_bytes_img_s"] == 100.0
    assert "raw_torch_img_s" not in results["b2"]  # no model-only rounds: nothing made up


def test_ratio_and_marginal_rate():
    assert report.ratio(1, 3) == 0.33 and report.ratio(None, 3) is None and report.ratio(1, 0) is None
    assert ray_rate.marginal_rate({"rows": 150, "wall_s": 40.0}, {"rows": 600, "wall_s": 70.0}) == 15.0
    assert ray_rate.marginal_rate({"rows": 150, "wall_s": 40.0}, {"rows": 600, "wall_s": 39.0}) is None


def test_write_md_has_both_raw_rates_and_the_ratio(tmp_path):
    import argparse

    results = fake_results()
    summary = report.summarise(results, MEMORY, 1000, "onnx", {"flask": 900, "fastapi": 800})
    goals = report.judge(summary)
    ray = {"model": "ensemble", "images": 300, "rows": 300, "rc": 0, "wall_s": 40.0, "img_s_end_to_end": 7.5,
           "img_s_marginal": 15.0, "small": {"images": 75, "rows": 75, "rc": 0, "wall_s": 30.0}, "first_shard_s": 20.0, "shards": 2, "shard_size": 150,
           "command": "python -m prediction.ray_predict --input DIR --out OUT.csv", "date": "today",
           "raw_bytes_img_s": 20.0, "raw_bytes_by_threads": {1: 12.0, 2: 20.0}}
    tuning = {"date": "today", "rows": [
        {"variant": "v", **{t: 10.0 for t in common.TARGETS}, "raw_bytes": {t: 20.0 for t in common.TARGETS},
         "over_raw_bytes": {t: 0.5 for t in common.TARGETS}, "per_cpu": {t: 5.0 for t in common.TARGETS},
         "p50": {t: 1.0 for t in common.TARGETS}, "p99": {t: 2.0 for t in common.TARGETS}},
        {"variant": "broken", "error": "did not start"}]}
    info = {"date": "today", "cpu": "x", "cores": 2, "ram_gb": 1, "python": "3", "torch": "2", "torch_threads": 2,
            "torchserve": "0.12", "flask": "3", "checkpoints": "c", "load_avg_start": [0], "load_avg_end": [0],
            "bench_wall_s": 1}
    settings = {"galaxy-b0": {"workers": 1, "batchSize": 8, "maxBatchDelay": 10},
                "changes_over_archive_defaults": {"workflow": {}, "model-config": {}, "env": {}}}
    out = tmp_path / "benchmarks.md"
    report.write_md(out, results, summary, goals, ray, info, MEMORY, 1000, settings, 9.0, tuning,
                    argparse.Namespace(seconds=6.0, tune=False))
    text = out.read_text()
    assert "| b0 | 200.0 | 100.0 | 50.0 | 70.0 | 20.0 | 28.3 | 85.0 | **1.7** | **0.85** | **1.21**" in text
    assert "## TorchServe against the peers" in text
    assert "| b2 | FastAPI + uvicorn | 8 | 70.0 | 50.0 | 100.0 | 10.0 | 1.75 |" in text
    assert "FastAPI + uvicorn on b2 at c=8: 1.75x (+30.0 img/s)" in text
    assert "| TorchServe stack PSS < 3000 MB | PSS 290 MB | met |" in text
    assert "## Where the time goes" in text and "## make predict on Ray" in text
    assert "| ensemble | 300 | 300 | 40.0 | 7.5 | 15.0 | 20.0" in text and "| 0.75 |" in text
    assert "failed: did not start" in text
    json.dumps({**summary, "goals": goals, "ray": ray})  # what main() writes is JSON


def test_gpu_bench_raw_rates_follow_the_archive_settings(tmp_path, capsys):
    """bench.gpu_serving's raw rates run with the archive's settings for the device (here the CPU
    ones), and the script refuses cuda where there is none."""
    from bench import gpu_serving
    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES

    save_checkpoint(tmp_path / "b0", build_model("b0"), get_spec("b0"), GALAXY10_CLASSES, version="1.0",
                    data={"path": "random-init", "sha256": None, "n": 0})
    payloads = common.sample_payloads()[:16]
    r = gpu_serving.raw_rates(tmp_path, "b0", "cpu", payloads, seconds=0.2)
    from torchserve_ops.archive import DEVICE_CONFIG

    assert r["precision"] == "fp32" and r["decode"] == "pil" and r["batch"] == DEVICE_CONFIG["cpu"]["batchSize"]
    assert r["raw_img_s"] > 0 and r["raw_bytes_img_s"] > 0
    if not torch.cuda.is_available():
        assert gpu_serving.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA device here" in capsys.readouterr().err
        assert not (tmp_path / "benchmarks_gpu.json").exists()


def test_handler_in_process_against_raw(tmp_path):
    """bench.handler drives the real handler's handle() with a TorchServe Context and times it next
    to raw from bytes on the same model object; both answer every image."""
    from bench import handler as bh
    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES

    save_checkpoint(tmp_path / "b0", build_model("b0"), get_spec("b0"), GALAXY10_CLASSES, version="1.0",
                    data={"path": "random-init", "sha256": None, "n": 0})
    r = bh.compare(tmp_path / "b0", "b0", common.sample_payloads()[:16], rounds=1, runtime="torch")
    assert len(r["handler"]) == len(r["raw"]) == 1
    assert all(w > 0 and c > 0 for w, c in r["handler"] + r["raw"])


def test_fastapi_peer_answers_as_the_predictor(served_archives):
    """The FastAPI peer's app under uvicorn on a real port (in a thread of this process: `make bench`
    runs the same app in a process of its own): each model's answer to a JPEG is Predictor.answer's,
    and a burst of concurrent requests (batched together) gets each image's own answer back."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests
    import uvicorn

    from bench.peers import fastapi_app, load_predictors
    from torchserve_ops.server import free_port

    run_dir, _ = served_archives
    jpegs = [p.read_bytes() for p in sorted(SAMPLES.glob("class_*_3.jpg"))[:8]]
    headers = {"Content-Type": "application/octet-stream"}
    predictors = load_predictors(run_dir, "onnx")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fastapi_app(predictors), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert requests.get(f"{url}/ping", timeout=10).status_code == 200
        got = {m: requests.post(f"{url}/predictions/{m}", data=jpegs[0], headers=headers, timeout=60)
               for m in common.TARGETS}
        with ThreadPoolExecutor(len(jpegs)) as pool:
            burst = list(pool.map(lambda b: requests.post(f"{url}/predictions/b0", data=b, headers=headers,
                                                           timeout=60), jpegs))
        bad = requests.post(f"{url}/predictions/b0", data=b"not an image", headers=headers, timeout=60)
        unknown = requests.post(f"{url}/predictions/b7", data=jpegs[0], headers=headers, timeout=60)
    finally:
        server.should_exit = True
        thread.join(10)
    assert bad.status_code == 400 and "error" in bad.json() and unknown.status_code == 404

    def same(a: dict, b: dict) -> None:
        assert a["label"] == b["label"] and a["model"] == b["model"] and set(a) == set(b)
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in b["probabilities"]) <= 1e-4

    for m in common.TARGETS:
        assert got[m].status_code == 200, got[m].text
        same(got[m].json(), predictors[m].answer(jpegs[0]))
    for r, want in zip(burst, predictors["b0"].answer_batch(jpegs)):
        assert r.status_code == 200
        same(r.json(), want)
