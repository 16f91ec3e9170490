"""The rooms hold what they say: the core imports nothing of HTTP, CLIs, TorchServe or Streamlit,
dependencies point into the core, each room imports only the third-party libraries listed for it,
and a model archive ships the core and the worker files only."""
import ast
import sys
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
ML = {"torch", "torchvision", "timm", "captum"}
# room (a package, or a module inside one: the longest match wins) -> the third-party roots its files
# may import, at the top or inside a function. What the code imports today: a new library in a room is
# a decision, made here. The HTTP side (survey I/O, torchserve_ops, the dashboard's plain modules)
# has no deep-learning stack; only handlers/, torchserve_ops.server and .frontend and bench/ import
# TorchServe's `ts`.
THIRD_PARTY = {
    "galaxy_morph": {"numpy", "scipy", "PIL", "h5py", "astropy", "sklearn", "pandas", "tqdm", "huggingface_hub",
                     "onnxruntime"} | ML,
    "handlers": {"torch", "ts"},
    "survey": {"numpy", "PIL", "h5py", "astropy", "requests", "urllib3"},
    "simulation": {"numpy", "scipy", "PIL", "h5py", "matplotlib", "tqdm"},
    "torchserve_ops": {"numpy", "h5py", "yaml", "tqdm"},
    "torchserve_ops.client": {"requests", "tenacity", "prometheus_client"},
    "torchserve_ops.pool": {"tenacity"},
    "torchserve_ops.server": {"psutil", "ts"},  # ts: where its Java frontend is installed
    "torchserve_ops.frontend": {"ts"},
    "prediction": {"numpy", "PIL", "h5py", "pyarrow", "ray", "torch"},
    "prediction.parts": {"pyarrow"},
    "prediction.similarity": {"numpy", "pyarrow", "faiss"},
    "labelling": {"numpy", "pandas", "torch"},
    "labelling.store": {"sqlalchemy"},
    "training": {"numpy", "scipy", "sklearn", "PIL", "h5py", "matplotlib", "tqdm", "torch", "torchvision", "timm"},
    "dashboard": {"numpy", "pandas", "PIL", "matplotlib", "altair", "psutil"},
    "dashboard.app": {"streamlit"},
    "dashboard.common": {"streamlit"},
    "dashboard.pages": {"pandas", "altair", "streamlit"},
    "bench": {"numpy", "PIL", "matplotlib", "psutil", "requests", "flask", "torch", "ts", "fastapi", "uvicorn", "ray",
              "starlette"},
    "deploy": set(),
}


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


def room_of(path: Path) -> str:
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return max((r for r in THIRD_PARTY if module == r or module.startswith(r + ".")), key=len)


def third_party_roots(path: Path) -> set[str]:
    local = {p.name for p in REPO.iterdir() if p.is_dir()}
    return imported_roots(path) - set(sys.stdlib_module_names) - local - {"__future__"}


def test_each_room_imports_only_its_third_party_libraries():
    for package in {r.split(".")[0] for r in THIRD_PARTY}:
        for path in sorted((REPO / package).rglob("*.py")):
            room = room_of(path)
            extra = third_party_roots(path) - THIRD_PARTY[room]
            assert not extra, (f"{path.relative_to(REPO)} imports {', '.join(sorted(extra))}: "
                               f"not in THIRD_PARTY[{room!r}]")


def test_the_http_side_lists_no_deep_learning_stack_and_only_pages_use_streamlit():
    # Guards the table itself: widening a row of the HTTP side to make the test above pass is not the fix.
    for room, allowed in THIRD_PARTY.items():
        if room.split(".")[0] in ("survey", "torchserve_ops", "dashboard"):
            assert not allowed & ML, room
    assert {r for r, allowed in THIRD_PARTY.items() if "streamlit" in allowed} == {
        "dashboard.app", "dashboard.common", "dashboard.pages"}


def test_archive_ships_the_core_and_the_worker_files_only(served_archives):
    _, store = served_archives
    with zipfile.ZipFile(store / "galaxy-b0.mar") as mar:
        names = mar.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"galaxy_handler.py", "galaxy_morph", "handlers", "model.pt", "meta.json", "model.onnx", "model.onnx.json",
                   "model_card.json", "model-config.yaml", "MAR-INF"}, top
    core = {Path(n).name for n in names if n.startswith("galaxy_morph/") and n.endswith(".py")}
    assert core == {p.name for p in (REPO / "galaxy_morph").glob("*.py")}
    workers = {Path(n).name for n in names if n.startswith("handlers/") and n.endswith(".py")}
    assert workers == {"__init__.py", "galaxy_handler.py", "payload.py", "workflow.py"}
    assert not any("__pycache__" in n for n in names)
