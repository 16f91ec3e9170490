"""The package installs like one: pyproject.toml declares every import, the locks agree with it, the
image installs the runtime lock only, and the galaxy-morph command answers without loading torch.

    .venv/bin/python -m pytest -q tests/test_packaging.py
"""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import galaxy_morph_cli

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]
# import name -> distribution, where they differ
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml",
                "ts": "torchserve", "faiss": "faiss-cpu", "psycopg": "psycopg", "xdist": "pytest-xdist"}
# package -> the extras meant to cover it (besides the base dependencies); survey is used by both paths
ROLES = {"galaxy_morph": [], "galaxy_morph_cli": [], "handlers": ["serving"], "torchserve_ops": ["serving"],
         "survey": ["serving", "ray"], "prediction": ["ray"], "labelling": ["dashboard", "training"],
         "training": ["training"], "simulation": ["training"], "dashboard": ["dashboard"],
         "tests": ["dev"], "bench": ["dev"]}
# imports no ast walk sees: simulation/outliers.py reads scikit-image's sample images by path
BY_PATH = {"simulation": {"skimage"}}
DEV_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "aiohttp", "playwright", "flask", "waitress",
             "kubernetes-validate", "fastapi", "uvicorn", "starlette"}


def local_names() -> set[str]:
    names = {p.name for p in REPO.iterdir() if p.is_dir()} | {p.stem for p in REPO.glob("*.py")}
    return names | {p.stem for p in (REPO / "tests").glob("*.py")}


def third_party_imports(package: str) -> set[str]:
    """Top-level names of the non-stdlib, non-project modules the package imports, in functions too."""
    local, found = local_names(), set(BY_PATH.get(package, ()))
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in sys.stdlib_module_names and n not in local and n != "__future__"}


def declared(extras: list[str]) -> dict[str, Requirement]:
    """Base dependencies plus the extras, self-references (galaxy-morph[serving]) expanded."""
    out, todo, seen = {}, [None, *extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
                todo += sorted(req.extras)
            else:
                out[canonicalize_name(req.name)] = req
    return out


def pins(name: str) -> dict[str, Requirement]:
    out = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def dockerfile_steps() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return re.sub(r"\\\n", " ", "\n".join(lines)).splitlines()


def test_pyproject_installs_every_package_and_the_command():
    assert PROJECT["scripts"] == {"galaxy-morph": "galaxy_morph_cli:main"}
    top = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert set(PACKAGES) == top - {"tests", "bench"}, "shipped: everything but the tests and benchmarks"
    assert set(PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"]) == {"tests"}


@pytest.mark.parametrize("package", sorted(ROLES))
def test_every_import_is_declared_for_the_packages_role(package):
    provided = declared(ROLES[package])
    missing = {m for m in third_party_imports(package)
               if canonicalize_name(DISTRIBUTION.get(m, m)) not in provided}
    assert not missing, f"{package} imports {sorted(missing)}: add them to pyproject.toml {ROLES[package] or 'base'}"


def test_roles_cover_every_shipped_package():
    assert set(PACKAGES) <= set(ROLES)
    everything = declared(sorted(PROJECT["optional-dependencies"]))
    for package in PACKAGES:
        for m in third_party_imports(package):
            assert canonicalize_name(DISTRIBUTION.get(m, m)) in everything, (package, m)


def test_base_is_the_core_only():
    base = set(declared([]))
    assert not base & {"torchserve", "requests", "streamlit", "ray", "sqlalchemy", "pytest"}
    assert {"torch", "torchvision", "timm", "numpy", "pillow", "h5py", "pandas"} <= base


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_the_locks_pins_satisfy_pyproject(lock):
    ranges = declared(sorted(PROJECT["optional-dependencies"]))
    for name, pin in pins(lock).items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{lock}: {pin} is not an exact pin"
        assert name in ranges, f"{lock} pins {name}, which pyproject.toml does not declare"
        assert ranges[name].specifier.contains(spec.version, prereleases=True), (str(pin), str(ranges[name]))
        assert pin.extras == ranges[name].extras, (str(pin), str(ranges[name]))


def test_runtime_lock_has_no_test_or_benchmark_tools():
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert not set(runtime) & DEV_TOOLS
    assert set(dev) == DEV_TOOLS
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    dev_only = set(declared(["dev"])) - set(declared(["serving", "training", "dashboard", "ray"]))
    assert dev_only == DEV_TOOLS | {"packaging"}  # unpinned: the runtime lock's packages bring it
    assert set(runtime) <= set(declared(["serving", "training", "dashboard", "ray"]))


def test_make_setup_installs_the_dev_lock_then_the_project():
    out = subprocess.run(["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "-r requirements-dev.txt" in out and "--no-deps -e ." in out


def test_dockerfile_installs_the_runtime_lock_and_sets_nothing_unread():
    steps, text = dockerfile_steps(), (REPO / "Dockerfile").read_text()
    makes = [s for s in steps if re.search(r"\bmake (setup|archive)\b", s)]
    # the stamp's prerequisites name $(LOCK): every make run in the image must name the runtime lock
    assert makes and all("LOCK=requirements.txt" in s for s in makes), makes
    assert "requirements-dev" not in "\n".join(steps) and "PIP_" not in "\n".join(steps)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"tests", "bench", "requirements-dev.txt"} <= set(ignored)
    assert not set(PACKAGES) & set(ignored)
    env = [name for s in steps if s.startswith("ENV ") for name in re.findall(r"(\w+)=", s)]
    assert env, "the Dockerfile's ENV lines were not found"
    code = "\n".join(p.read_text() for d in [*PACKAGES, "deploy", "scripts"] for p in (REPO / d).rglob("*")
                     if p.suffix in (".py", ".sh"))
    for name in env:  # PYTHONUNBUFFERED: read by Python itself
        assert name == "PYTHONUNBUFFERED" or name in code, f"nothing reads ENV {name}"
    uv_help = " ".join(subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--help"],
                                      capture_output=True, text=True, check=True).stdout.split())
    exported = [name for s in steps for e in re.findall(r"export ((?:\w+=\S+\s*)+)", s)
                for name in re.findall(r"(\w+)=", e)]
    assert "UV_EXTRA_INDEX_URL" in exported, "the CPU-only torch index, for uv"
    for name in exported:
        assert f"[env: {name}" in uv_help, f"uv does not read {name}"
    for arg in re.findall(r"^ARG (\w+)", text, re.M):
        assert re.search(rf"\$\{{?{arg}\b", text), f"ARG {arg} is never used"


def test_makefile_targets_run_the_command():
    makefile = (REPO / "Makefile").read_text()
    for target in ("classify", "predict", "similar", "queue", "retrain", "train", "evaluate", "archive"):
        recipe = re.search(rf"^{target}: setup\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert f"$(VENV)/bin/galaxy-morph {target} " in recipe and " -m " not in recipe, target


def command(*args: str) -> subprocess.CompletedProcess:
    exe = REPO / ".venv" / "bin" / "galaxy-morph"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "galaxy_morph_cli"]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_and_loads_no_torch():
    out = command("--help")
    assert out.returncode == 0, out.stderr
    for name in galaxy_morph_cli.COMMANDS:
        assert re.search(rf"^  {name} +\S", out.stdout, re.M), name
    bad = command("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
    assert command().returncode == 2
    probe = ("import sys, galaxy_morph_cli; galaxy_morph_cli.main(['--help']); "
             "print(sorted(m for m in ('torch', 'numpy', 'ray', 'ts') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_names_a_main_that_takes_argv():
    for name, (module, extra, _) in galaxy_morph_cli.COMMANDS.items():
        assert extra in PROJECT["optional-dependencies"], name
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert [a.arg for a in main.args.args] == ["argv"] and len(main.args.defaults) == 1, module


def test_command_exits_with_the_modules_status(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_tool.py").write_text(
        "import sys\n"
        "def main(argv=None):\n"
        "    print('got', argv)\n"
        "    if argv and argv[0] == 'none': return None\n"
        "    if argv and argv[0] == 'exit': sys.exit(3)\n"
        "    return len(argv)\n")
    (tmp_path / "needs_extra.py").write_text("import not_installed_anywhere\ndef main(argv=None):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(galaxy_morph_cli.COMMANDS, "fake", ("fake_tool", "serving", "a test tool"))
    monkeypatch.setitem(galaxy_morph_cli.COMMANDS, "needy", ("needs_extra", "ray", "a tool with a missing import"))
    assert galaxy_morph_cli.main(["fake", "a", "--b", "c"]) == 3
    assert "got ['a', '--b', 'c']" in capsys.readouterr().out
    assert galaxy_morph_cli.main(["fake", "none"]) == 0
    with pytest.raises(SystemExit) as e:
        galaxy_morph_cli.main(["fake", "exit"])
    assert e.value.code == 3
    assert galaxy_morph_cli.main(["needy"]) == 1
    assert "galaxy-morph[ray]" in capsys.readouterr().err

