"""docs/notebook.md runs as written: its Python blocks, in order, in one fresh interpreter.

    .venv/bin/python -m pytest -q tests/test_notebook_page.py
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from galaxy_morph import GALAXY10_CLASSES

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "notebook.md"
COLUMNS = ["id", "label", "class_name", "confidence", "error", *GALAXY10_CLASSES,
           "model", "version", "in_distribution", "ood_score", "source", "rule"]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_notebook_page_runs_and_writes_its_figure(tmp_path):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 3
    code = "\n\n".join(blocks)
    # the page's figures go to tmp_path, not into the repository (the page runs in its root, as a user's would)
    figures = re.findall(r"savefig\((['\"])(.+?)\1", code)
    assert figures, "the page saves no figure"
    for _, name in figures:
        code = code.replace(name, str(tmp_path / name))
    facts = tmp_path / "facts.json"
    code += ("\n\nimport json\n"
             f"json.dump({{'rows': len(table), 'columns': list(table.columns), 'accuracy': float(accuracy),"
             f" 'answer': answer}}, open({str(facts)!r}, 'w'))\n")
    env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path / "mpl"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(facts.read_text())
    assert got["rows"] == 100
    assert got["columns"][:len(COLUMNS)] == COLUMNS
    assert 0.0 <= got["accuracy"] <= 1.0 and "accuracy" in proc.stdout
    assert got["answer"]["class_name"] in GALAXY10_CLASSES and "probabilities" in got["answer"]
    for _, name in figures:
        assert (tmp_path / name).stat().st_size > 10_000, name
