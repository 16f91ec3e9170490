"""Bulk classification (torchserve_ops.bulk) against the real TorchServe fixture, plus boundary tests
(503 retries, 4xx recording, several servers) against a tiny local HTTP server.

    .venv/bin/python -m pytest -q tests/test_bulk.py
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from survey import rows
from survey.inputs import Item
from torchserve_ops import bulk
from galaxy_morph.specs import GALAXY10_CLASSES

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "galaxy10_decals"
CLASSES = list(GALAXY10_CLASSES)


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def cli(torchserve, *args) -> list[str]:
    return ["--servers", torchserve.inference_url, "--key-file", str(torchserve.key_file),
            "--no-progress", *args]


def make_h5(path: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        r = np.hypot(xx - size / 2 + rng.normal(0, 4), yy - size / 2 + rng.normal(0, 4))
        blob = 255 * np.exp(-(r / rng.uniform(4, 16)) ** 2)
        images[i] = np.clip(blob[..., None] * rng.uniform(0.5, 1, 3) + rng.normal(0, 6, (size, size, 3)),
                            0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["ans"] = rng.integers(0, 10, n)
    return path


def check_catalog(path: Path, expected_ids, workflow=False):
    header, rows = read_rows(path)
    assert header[:5] == ["id", "label", "class_name", "confidence", "error"]
    assert header[5:15] == CLASSES
    assert header[15:19] == ["model", "version", "in_distribution", "ood_score"]
    if workflow:
        assert header[19:] == ["source", "rule"]
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(expected_ids), "every input exactly once"
    assert len(ids) == len(set(ids))
    for r in rows:
        if r["error"]:
            assert r["label"] == "" and r["confidence"] == ""
            continue
        probs = [float(r[c]) for c in CLASSES]
        assert abs(sum(probs) - 1) < 1e-3
        assert CLASSES[int(r["label"])] == r["class_name"]
        assert abs(float(r["confidence"]) - probs[int(r["label"])]) < 1e-4
    return rows


# ---------------------------------------------------------------------------------------------
# Against the real server


@pytest.mark.server
def test_folder_to_catalog_with_bad_inputs(torchserve, tmp_path):
    folder = tmp_path / "cutouts"
    (folder / "night2").mkdir(parents=True)
    good = sorted(SAMPLES.glob("class_*_0.jpg"))[:6]
    for p in good[:3]:
        shutil.copy(p, folder / p.name)
    for p in good[3:]:
        shutil.copy(p, folder / "night2" / p.name)
    # a PNG too, greyscale 16-bit
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(folder / "grey16.png")
    (folder / "truncated.jpg").write_bytes(good[0].read_bytes()[:700])
    (folder / "noise.png").write_bytes(os.urandom(3000))
    (folder / "notes.txt").write_text("not an input")
    out = tmp_path / "catalog.csv"

    assert bulk.main(["--input", str(folder), "--out", str(out), "--model", "galaxy-b0"]
                     + cli(torchserve)) == 0
    expected = [p.name for p in good[:3]] + [f"night2/{p.name}" for p in good[3:]] + [
        "grey16.png", "truncated.jpg", "noise.png"]
    rows = {r["id"]: r for r in check_catalog(out, expected)}
    for bad in ("truncated.jpg", "noise.png"):
        assert rows[bad]["error"].startswith("HTTP 400"), rows[bad]
    assert "truncated" in rows["truncated.jpg"]["error"] or "corrupt" in rows["truncated.jpg"]["error"]
    for ok in expected[:7]:
        assert rows[ok]["error"] == "" and rows[ok]["model"] == "galaxy-b0" and rows[ok]["version"] == "1.0"
    print(f"\nfolder: {len(rows)} rows, {sum(1 for r in rows.values() if r['error'])} refused inputs")

    # Running it again changes nothing: every id is already there.
    before = out.read_bytes()
    assert bulk.main(["--input", str(folder), "--out", str(out), "--model", "galaxy-b0"]
                     + cli(torchserve)) == 0
    assert out.read_bytes() == before


@pytest.mark.server
def test_h5_resume_after_truncation(torchserve, tmp_path):
    h5 = make_h5(tmp_path / "survey.h5", 30)
    out = tmp_path / "catalog.csv"
    args = ["--input", str(h5), "--out", str(out), "--model", "galaxy-b0", "--concurrency", "4"]
    assert bulk.main(args + cli(torchserve)) == 0
    first = {r["id"]: r for r in check_catalog(out, [str(i) for i in range(30)])}

    # Interrupted run: 12 complete rows, then half of the 13th (a kill in the middle of a write).
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:13]) + lines[13][: len(lines[13]) // 2])
    assert bulk.main(args + cli(torchserve)) == 0
    second = {r["id"]: r for r in check_catalog(out, [str(i) for i in range(30)])}
    for i, row in second.items():  # resumed rows carry the same answers
        assert row["label"] == first[i]["label"]
        assert abs(float(row["confidence"]) - float(first[i]["confidence"])) < 1e-5


@pytest.mark.server
def test_killed_mid_run_then_resumed(torchserve, tmp_path):
    h5 = make_h5(tmp_path / "survey.h5", 40, seed=1)
    out = tmp_path / "catalog.csv"
    cmd = [sys.executable, "-m", "torchserve_ops.bulk", "--input", str(h5), "--out", str(out),
           "--model", "galaxy-b2", "--concurrency", "2"] + cli(torchserve)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    killed_at = out.read_text().count("\n") - 1
    assert 0 < killed_at < 40
    assert bulk.main(["--input", str(h5), "--out", str(out), "--model", "galaxy-b2"] + cli(torchserve)) == 0
    check_catalog(out, [str(i) for i in range(40)])
    print(f"\nkilled after {killed_at} rows; resumed run completed 40 rows, no duplicates")


@pytest.mark.server
def test_workflow_catalog_with_rule(torchserve, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(SAMPLES.glob("class_*_1.jpg"))[:4]:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "ensemble.csv"
    assert bulk.main(["--input", str(folder), "--out", str(out), "--model", "galaxy-ensemble",
                      "--rule", "mean"] + cli(torchserve)) == 0
    rows = check_catalog(out, [p.name for p in folder.iterdir()], workflow=True)
    assert all(r["rule"] == "mean" and r["source"] in ("both", "b0", "b2", "neither") for r in rows)
    assert all(r["model"] == "galaxy-ensemble" for r in rows)


@pytest.mark.server
def test_memory_window_is_bounded_over_400_inputs(torchserve, tmp_path):
    """A generator of 400 inputs (25 windows): never more than the window pulled ahead of what was
    written."""
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    stats = bulk.Stats()
    ahead = []
    concurrency, window = 8, 16

    def source(n=400):
        for i in range(n):
            ahead.append(i - stats.written)  # inputs pulled but not written yet, before this one
            yield Item(f"gen-{i}", lambda: png)

    pool = bulk.make_pool([torchserve.inference_url], [str(torchserve.key_file)])
    endpoint, info = bulk.resolve_endpoint(pool, "galaxy-b0", None, bulk.RetryPolicy())
    out = tmp_path / "big.csv"
    bulk.classify(source(), out, pool, endpoint, info["class_names"], concurrency=concurrency,
                  stats=stats, window=window)
    assert stats.written == 400 and stats.ok == 400 and stats.unfinished == 0
    assert stats.max_pending <= window
    assert max(ahead) <= window
    assert out.read_text().count("\n") == 401
    print(f"\n400 inputs, at most {max(ahead)} pulled ahead of the catalogue (window {window})")


@pytest.mark.server
def test_cli_errors(torchserve, tmp_path, capsys, unused_port):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(next(SAMPLES.glob("class_*.jpg")), folder / "a.jpg")
    out = str(tmp_path / "c.csv")

    assert bulk.main(["--input", str(tmp_path / "missing"), "--out", out] + cli(torchserve)) == 1
    assert "input not found" in capsys.readouterr().err
    assert bulk.main(["--input", "", "--out", out] + cli(torchserve)) == 1  # make classify without INPUT
    assert "no input given" in capsys.readouterr().err

    dead = f"http://127.0.0.1:{unused_port}"
    assert bulk.main(["--input", str(folder), "--out", out, "--servers", dead, "--token", "x",
                      "--backoff", "0.05", "--no-progress"]) == 1
    assert "no TorchServe answering" in capsys.readouterr().err

    assert bulk.main(["--input", str(folder), "--out", out, "--servers", torchserve.inference_url,
                      "--token", "wrong", "--no-progress"]) == 1
    assert "refused the token" in capsys.readouterr().err

    assert bulk.main(["--input", str(folder), "--out", out, "--model", "galaxy-b7"] + cli(torchserve)) == 1
    assert "no model or workflow named 'galaxy-b7'" in capsys.readouterr().err
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------------------
# Boundary tests against a tiny local server (retry policy, several servers)


class FakeServe:
    """Answers POST /predictions/galaxy-b0 like TorchServe; the first `fail` requests get 503.

    Bodies starting with b"BAD" get 400 (the input's own error).
    """

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.hits = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.hits.append(body[:8])
                    failing = outer.fail > 0
                    outer.fail -= failing
                if self.headers.get("Authorization") != "Bearer k":
                    return self.reply(400, {"code": 400, "type": "InvalidKeyException",
                                            "message": "Token Authorization failed"})
                if not self.path.startswith("/predictions/galaxy-b0"):
                    return self.reply(404, {"code": 404, "message": "Model not found"})
                if failing:
                    return self.reply(503, {"code": 503, "message": "No worker available"})
                if body.startswith(b"BAD"):
                    return self.reply(400, {"error": "not an image: expected JPEG or PNG bytes", "code": 400})
                p = [0.05] * 10
                p[3] = 0.55
                self.reply(200, {"model": "galaxy-b0", "version": "1.0", "label": 3,
                                 "class_name": CLASSES[3], "confidence": 0.55,
                                 "probabilities": dict(zip(CLASSES, p))})

            def reply(self, code, doc):
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def items(n, bad=()):
    for i in range(n):
        yield Item(str(i), lambda i=i: b"BAD!" if i in bad else b"\x89PNG fake %d" % i)


def run_fake(urls, n, bad=(), policy=None, out=None, tmp=None):
    pool = bulk.make_pool(urls, tokens=["k"])
    endpoint = bulk.Endpoint("galaxy-b0")
    stats = bulk.Stats()
    out = out or tmp / "fake.csv"
    bulk.classify(items(n, bad), out, pool, endpoint, CLASSES, concurrency=4, stats=stats,
                  policy=policy or bulk.RetryPolicy(retries=4, backoff=0.01))
    return stats, pool, out


def test_retries_on_503_then_succeeds(tmp_path):
    with FakeServe(fail=2) as fake:
        stats, _, out = run_fake([fake.url], 5, tmp=tmp_path)
    assert stats.retries == 2 and stats.written == 5 and stats.errors == 0
    check_catalog(out, [str(i) for i in range(5)])
    assert len(fake.hits) == 7  # 5 inputs + 2 retried 503s


def test_4xx_is_recorded_not_retried(tmp_path):
    with FakeServe() as fake:
        stats, _, out = run_fake([fake.url], 6, bad={2, 4}, tmp=tmp_path)
    assert stats.retries == 0 and stats.errors == 2 and stats.ok == 4
    assert sum(1 for h in fake.hits if h.startswith(b"BAD")) == 2  # each bad input sent once
    rows = {r["id"]: r for r in check_catalog(out, [str(i) for i in range(6)])}
    assert rows["2"]["error"] == "HTTP 400: not an image: expected JPEG or PNG bytes"


def test_retries_run_out_stops_without_writing_the_input(tmp_path):
    with FakeServe(fail=10 ** 6) as fake:
        stats, _, out = run_fake([fake.url], 5, tmp=tmp_path,
                                 policy=bulk.RetryPolicy(retries=2, backoff=0.01))
    assert stats.written == 0 and stats.unfinished >= 1 and "gave up after 3 attempts" in stats.stopped
    assert read_rows(out)[1] == []  # nothing half-done: a re-run sends them all


def test_several_servers_share_the_load_and_survive_a_dead_one(tmp_path, unused_port):
    with FakeServe() as a, FakeServe() as b:
        stats, pool, out = run_fake([a.url, b.url], 40, tmp=tmp_path)
        assert stats.written == 40 and len(a.hits) > 5 and len(b.hits) > 5
        dead = f"http://127.0.0.1:{unused_port}"
        stats, pool, out2 = run_fake([dead, a.url], 20, tmp=tmp_path, out=tmp_path / "two.csv")
    assert stats.written == 20 and stats.unfinished == 0
    check_catalog(out2, [str(i) for i in range(20)])


def test_partial_last_line_is_repaired(tmp_path):
    out = tmp_path / "c.csv"
    header = rows.header_for(CLASSES, False)
    out.write_text(",".join(header) + "\n" + "7,3,x,0.5,," + ",".join(["0.1"] * 10) + ",m,1,true,0.2\n" + "8,3,In-betw")
    done, got = rows.read_done_ids(out, header)
    assert done == {"7"} and got == header
    assert out.read_text().endswith(",m,1,true,0.2\n")


def test_refuses_a_catalogue_with_other_columns(tmp_path):
    out = tmp_path / "c.csv"
    out.write_text("id,label,class_name,confidence,error,A,B,model,version\n")
    with pytest.raises(rows.CatalogError, match="other columns"):
        rows.read_done_ids(out, rows.header_for(CLASSES, False))


def test_one_run_per_catalogue(tmp_path):
    out = tmp_path / "c.csv"
    header = rows.header_for(CLASSES, False)
    writer = rows.CatalogWriter(out, header, write_header=True)
    try:
        with pytest.raises(rows.CatalogError, match="another run is writing"):
            rows.read_done_ids(out, header)
    finally:
        writer.close()
    assert rows.read_done_ids(out, header) == (set(), header)
