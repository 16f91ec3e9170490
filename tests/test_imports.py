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


def test_a_worker_answering_on_onnx_loads_neither_torchvision_nor_timm(served_archives):
    """They cost a TorchServe worker 3-4 s of CPU and about 150 MB at every start; the torch model
    (Grad-CAM, MC dropout's head) is built on first use."""
    run, _ = served_archives
    code = ("import sys, numpy as np; from PIL import Image; import handlers.galaxy_handler\n"
            "from galaxy_morph.predictor import Member\n"
            f"m = Member({str(run / 'b2')!r}, 'cpu', runtime='onnx')\n"
            "a = m.answers(m.inputs([Image.fromarray(np.zeros((90, 90, 3), np.uint8))]))\n"
            "print(sorted(k for k in ('torchvision', 'timm') if k in sys.modules), a[0]['label'] in range(10))\n"
            "m.explain(m.inputs([Image.fromarray(np.zeros((90, 90, 3), np.uint8))])[0])\n"
            "print(sorted(k for k in ('torchvision', 'timm') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[] True", "['timm', 'torchvision']"], out.stdout
