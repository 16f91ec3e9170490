"""The HTTP paths load no deep-learning stack: a bulk client, the survey readers and the dashboard's
plain modules run where torch is not installed (or not worth its start-up time); nor do the archive
builder and `make serve`'s check of whether the archives are current (they copy and hash files)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HTTP_MODULES = ("torchserve_ops.client", "torchserve_ops.bulk", "torchserve_ops.pool", "torchserve_ops.versions",
                "survey.inputs", "survey.rows", "survey.cutouts", "survey.catalog",
                "dashboard.views", "dashboard.metrics_views", "dashboard.card_views", "dashboard.review_views")
HEAVY = ("torch", "torchvision", "timm", "captum")


def test_http_modules_import_without_torch():
    code = (f"import sys, {', '.join(HTTP_MODULES)}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_schema_helpers_import_without_torch():
    code = ("import sys; from galaxy_morph.data import DataError, images_shape, inspect_h5, create_h5; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_archive_builder_and_its_staleness_check_load_no_torch(tmp_path):
    code = ("import sys, runpy; sys.argv = ['archive', '--run', 'checkpoints/demo', '--models', 'b0,b2', "
            "'--print-built-from']\n"
            "try:\n    runpy.run_module('torchserve_ops.archive', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    digest, loaded = out.stdout.split()[0], out.stdout.strip().splitlines()[-1]
    assert len(digest) >= 16 and loaded == "[]", out.stdout
