"""scripts/serve.sh (make serve) before it starts anything: what it refuses. (The stamp that decides
whether the archives are rebuilt: tests/test_handler.py; serving itself: tests/test_serving.py.)

    .venv/bin/python -m pytest -q tests/test_serve_script.py
"""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def serve(tmp_path, **env):
    return subprocess.run(["bash", str(REPO / "scripts" / "serve.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                            "HOME": str(tmp_path), **env})


def test_a_run_without_two_checkpoints_is_refused(tmp_path):
    (tmp_path / "run" / "b0").mkdir(parents=True)
    (tmp_path / "run" / "b0" / "model.pt").write_bytes(b"w")
    r = serve(tmp_path, RUN=str(tmp_path / "run"), TS_INFERENCE_PORT="1")
    assert r.returncode == 2
    assert "need two or more checkpoints" in r.stderr and "found 1" in r.stderr


def test_a_bad_serving_device_is_refused_before_building(tmp_path):
    r = serve(tmp_path, DEVICE="gpu")
    assert r.returncode != 0 and "invalid choice: 'gpu'" in r.stderr
    assert "building archives" not in r.stdout

