"""`make predict` (prediction.ray_predict: Ray Data, no server) on copies of the sample JPEGs, timed.

Used by bench.serving (--ray-images); not a script.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO

def ray_predict_rate(payloads: list[bytes], tmp: Path, n_images: int, model: str = "ensemble",
                     shard_size: int = 150, extra_args=(), timeout: float = 900) -> dict:
    """`make predict`'s command (python -m prediction.ray_predict, its defaults: local Ray
    started and stopped by the command, model actors as it sizes them) on `n_images` copies of
    the sample JPEGs in a folder. Returns the wall time and the end-to-end rate (Ray's start
    included); main() runs it twice (N/4 and N images) for the marginal rate without the start.
    (The shards' own times cannot give it: Ray Data hands every shard to the actor at once and they
    all finish together at the end.)"""
    folder = tmp / "ray-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n_images):
        (folder / f"{i:06d}.jpg").write_bytes(payloads[i % len(payloads)])
    out = tmp / "ray-predict.csv"
    for stale in (out, out.with_name(out.name + ".parts")):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "prediction.ray_predict", "--input", str(folder), "--out", str(out),
           "--model", model, "--shard-size", str(shard_size), "--quiet", *extra_args]
    shard_times = []
    t0 = time.perf_counter()
    with open(tmp / "ray-predict.log", "ab") as err:
        # unbuffered, so that each "shard ..." line arrives when the shard is written
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("shard "):
                    shard_times.append(time.perf_counter() - t0)
            rc = proc.wait()
        finally:
            timer.cancel()
    wall = time.perf_counter() - t0
    rows = max(0, len(out.read_text().splitlines()) - 1) if out.is_file() else 0
    cmdline = "python -m prediction.ray_predict " + " ".join(
        a if a not in (str(folder), str(out)) else ("DIR" if a == str(folder) else "OUT.csv") for a in cmd[3:])
    return {"model": model, "images": n_images, "rows": rows, "rc": rc, "wall_s": round(wall, 1),
            "img_s_end_to_end": round(rows / wall, 1) if wall else None,
            "first_shard_s": round(shard_times[0], 1) if shard_times else None,
            "shards": len(shard_times), "shard_size": shard_size, "command": cmdline}


def marginal_rate(small: dict, big: dict):
    """Images/s of the extra images of the bigger run: (rows big - rows small) / (wall big - wall
    small), which leaves out what both pay once (Ray's start and stop, loading the models)."""
    dn, dt_ = big["rows"] - small["rows"], big["wall_s"] - small["wall_s"]
    return round(dn / dt_, 1) if dn > 0 and dt_ > 0 else None
