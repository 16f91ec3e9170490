"""The frontend's fixed workflow executor (torchserve_ops/frontend.py): compiled once per source, and
first on the Java frontend's classpath. What it fixes is tested against a real TorchServe in
tests/test_reliability.py (test_workflow_burst_...).

    .venv/bin/python -m pytest -q tests/test_frontend.py
"""
import shutil

import pytest

from torchserve_ops import frontend, server

CLASS = "org/pytorch/serve/ensemble/DagExecutor.class"


def test_the_fixed_executor_goes_ahead_of_the_jar(tmp_path):
    out = frontend.classes()
    assert (out / CLASS).is_file()
    assert frontend.classes() == out  # current: not compiled again
    config = tmp_path / "config.properties"
    config.write_text("vmargs=-Xmx1g\n")
    cmd = server.java_command(config, tmp_path, tmp_path, tmp_path)
    path = cmd[cmd.index("-cp") + 1].split(":")
    assert path[0] == str(out) and path[-1].endswith("/ts/frontend/*")


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs javac (make java)")
def test_a_changed_source_is_compiled_anew(tmp_path, monkeypatch):
    src = tmp_path / "frontend"
    shutil.copytree(frontend.SOURCES, src)
    java = src / "DagExecutor.java"
    java.write_text(java.read_text() + "// changed\n")
    monkeypatch.setattr(frontend, "SOURCES", src)
    out = frontend.classes()
    try:
        assert (out / CLASS).is_file() and out.name == frontend.classes_dir().name
        monkeypatch.undo()
        assert frontend.classes_dir() != out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_source_that_does_not_compile_is_an_error(tmp_path, monkeypatch):
    if shutil.which("javac") is None:
        pytest.skip("needs javac (make java)")
    src = tmp_path / "frontend"
    src.mkdir()
    (src / "DagExecutor.java").write_text("package org.pytorch.serve.ensemble; class Broken {")
    monkeypatch.setattr(frontend, "SOURCES", src)
    with pytest.raises(frontend.FrontendError, match="javac failed"):
        frontend.classes()
    assert not frontend.classes_dir().exists()
