"""training.pipeline (make models) on a tiny file: stages, skipping finished ones, resuming,
refusing a mismatched run or unavailable ImageNet weights before training."""
import json
import os
import time

import pytest

from tests.test_data import make_h5
from training import pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_h5(tmp_path_factory.mktemp("data") / "tiny.h5", n=40, size=32)


def run(capsys, *argv):
    rc = pipeline.main([*map(str, argv), "--device", "cpu", "--workers", "0", "--no-archive"])
    out, err = capsys.readouterr()
    return rc, out, err


def stage_lines(out):
    return [line for line in out.splitlines() if line.startswith("[")]


def test_stages_skip_and_resume(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # at 32 px: the evaluation stage answers the 100 real samples with TTA, twice
    args = ["--data", tiny, "--run", run_dir, "--models", "b0", "--pretrained", "0", "--input-size", "32",
            "--epochs", "1"]
    rc, out, err = run(capsys, *args)
    assert rc == 0, err[-2000:]
    lines = stage_lines(out)
    assert [line.split(":")[0] for line in lines] == ["[1/3] check", "[2/3] train b0", "[3/3] evaluate"]
    assert "trained 1 epochs" in lines[1] and "with TTA" in lines[2]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["tta"] is True and list(report["models"]) == ["b0"]
    assert "| b0 | 1/1 |" in out

    # Again: nothing to do.
    rc, out, _ = run(capsys, *args)
    lines = stage_lines(out)
    assert rc == 0 and "done already" in lines[1] and lines[2].endswith("skipped")
    assert json.loads((run_dir / "report.json").read_text()) == report

    # More epochs: training resumes from last.pt, and the report is rebuilt.
    time.sleep(0.01)
    rc, out, _ = run(capsys, *args[:-1], "2")
    lines = stage_lines(out)
    assert rc == 0 and "resumed 2 epochs" in lines[1]
    assert len(json.loads((run_dir / "b0" / "history.json").read_text())) == 2

    # A run trained with another recipe is not mixed into.
    rc, _, err = run(capsys, *args, "--recipe", "strong")
    assert rc == 2 and "was trained with recipe seed, pretrained 0, input size 32" in err and "choose another RUN" in err


def test_refusals_before_training(tiny, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    rc, _, err = run(capsys, "--data", tiny, "--run", run_dir, "--models", "b0,b9")
    assert rc == 2 and "give distinct names from b0, b2, convnext" in err
    rc, _, err = run(capsys, "--data", tmp_path / "missing.h5", "--run", run_dir)
    assert rc == 2 and "data file not found" in err
    # ImageNet weights by default; offline with an empty cache that stops the run before training.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, out, err = run(capsys, "--data", tiny, "--run", run_dir, "--models", "b0")
    assert rc == 2 and "ImageNet weights for b0" in err and "PRETRAINED=0" in err
    assert not stage_lines(out) and not run_dir.exists()


def test_archive_stamp_decides_the_skip(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    for m in ("b0", "b2"):
        (run_dir / m).mkdir(parents=True)
        (run_dir / m / "model.pt").write_bytes(b"w")
    (run_dir / "report.json").write_text("{}")
    store.mkdir()
    files = {}
    for name in ("galaxy-b0.mar", "galaxy-b2.mar"):
        (store / name).write_bytes(b"archive")
        st = (store / name).stat()
        files[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stamp = {"inputs": pipeline.archive_inputs(run_dir, store, ["b0", "b2"], None), "files": files}
    (run_dir / pipeline.ARCHIVE_STAMP).write_text(json.dumps(stamp))
    assert pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)
    assert not pipeline.archives_are_current(run_dir, store, ["b0", "b2"], "2.0")  # another version
    (store / "galaxy-b2.mar").write_bytes(b"another run's archive")  # overwritten since
    assert not pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)
    (store / "galaxy-b2.mar").write_bytes(b"archive")
    os.utime(store / "galaxy-b2.mar", ns=(files["galaxy-b2.mar"]["mtime_ns"],) * 2)
    assert pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)
    (run_dir / "b2" / "model.pt").write_bytes(b"retrained")  # a checkpoint changed since
    assert not pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)
    (run_dir / "b2" / "model.pt").write_bytes(b"w")
    assert pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)
    (run_dir / "ensemble.json").write_text('{"default_rule": "mean"}')  # the measured rule changed
    assert not pipeline.archives_are_current(run_dir, store, ["b0", "b2"], None)


def test_archive_command_builds_the_workflow_over_two_or_more(tmp_path, monkeypatch):
    """Every model goes to torchserve_ops.archive by name; one model alone gets no workflow."""
    commands = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or Done())
    (tmp_path / "store").mkdir()
    pipeline.build_archives(tmp_path, tmp_path / "store", ["b2", "convnext", "b0"], None)
    pipeline.build_archives(tmp_path, tmp_path / "store", ["b0"], "2.0", versioned_name=True)
    three, one = commands
    assert three[three.index("--models") + 1] == "b2,convnext,b0" and "--no-workflow" not in three
    assert one[one.index("--models") + 1] == "b0" and "--no-workflow" in one and "--versioned-name" in one
