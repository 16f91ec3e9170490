"""The rooms hold what they say: the core imports nothing of HTTP, CLIs, TorchServe or Streamlit,
dependencies point into the core, and a model archive ships the core and the worker files only."""
import ast
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_CORE = {"requests", "argparse", "ts", "streamlit", "urllib3", "tenacity"}
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "galaxy_morph": set(),
    "handlers": {"galaxy_morph"},
    "survey": {"galaxy_morph"},
    "simulation": {"galaxy_morph", "survey"},
    "torchserve_ops": {"galaxy_morph", "survey", "handlers"},  # handlers: the archive packs them
    "prediction": {"galaxy_morph", "survey"},
    "labelling": {"galaxy_morph", "survey", "prediction"},  # prediction: the server's steps, in-process
}
PROJECT = set(ALLOWED) | {"training", "dashboard", "bench", "deploy", "tests"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_no_http_cli_server_or_ui():
    for path in sorted((REPO / "galaxy_morph").rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}"


def test_dependencies_point_into_the_core():
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            project = (imported_roots(path) & PROJECT) - {package}
            assert project <= allowed, f"{path.relative_to(REPO)} imports {', '.join(sorted(project - allowed))}"


def test_archive_ships_the_core_and_the_worker_files_only(served_archives):
    _, store = served_archives
    with zipfile.ZipFile(store / "galaxy-b0.mar") as mar:
        names = mar.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"galaxy_handler.py", "galaxy_morph", "handlers", "model.pt", "meta.json",
                   "model_card.json", "model-config.yaml", "MAR-INF"}, top
    core = {Path(n).name for n in names if n.startswith("galaxy_morph/") and n.endswith(".py")}
    assert core == {p.name for p in (REPO / "galaxy_morph").glob("*.py")}
    workers = {Path(n).name for n in names if n.startswith("handlers/") and n.endswith(".py")}
    assert workers == {"__init__.py", "galaxy_handler.py", "payload.py", "workflow.py"}
    assert not any("__pycache__" in n for n in names)
