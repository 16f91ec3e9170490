"""Shared fixtures: a real TorchServe (token auth on, free ports) serving random-init models.

    def test_something(torchserve):
        r = requests.post(torchserve.inference_url + "/predictions/galaxy-b0", data=jpeg,
                          headers=torchserve.auth("inference"))

`torchserve` (session scope) is a torchserve_ops.server.Server: .inference_url .management_url
.metrics_url .key_file .model_store .workdir .log_dir .run_dir, and .inference_key()
.management_key() .api_key() .auth(kind) read key_file.json (keys change at every start).
Models galaxy-b0 and galaxy-b2 (version 1.0) and the galaxy-ensemble workflow are READY. The
archives are built in a temporary folder from random-init checkpoints without evaluation reports.
`similarity_index` is the path of a prediction.similarity index over 20 real samples, embedded
with those checkpoints.

`make_torchserve(workflow=False)` starts another instance on free ports from the same model store
(for restart / kill tests); every instance is stopped at the end of the session.
`unused_port` is a TCP port on 127.0.0.1 that nobody listens on (torchserve_ops.server.free_port).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.postgres_server"]  # postgres_server, postgres_db: a PostgreSQL the suite starts

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "galaxy10_decals"


@pytest.fixture
def unused_port() -> int:
    from torchserve_ops.server import free_port

    return free_port()


def make_checkpoints(run_dir: Path, version: str = "1.0", seed: int = 0) -> Path:
    """Random-init B0 and B2 checkpoints; a random classifier bias makes their answers differ."""
    import torch

    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES, get_spec

    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(seed + i)
        model = build_model(name)
        head = model.classifier[-1] if name == "b0" else model.classifier
        with torch.no_grad():
            head.bias.normal_(0.0, 0.5)
        save_checkpoint(run_dir / name, model, get_spec(name), GALAXY10_CLASSES, version=version,
                        data={"path": "random-init", "sha256": None, "n": 0})
    return run_dir


@pytest.fixture(scope="session")
def served_archives(tmp_path_factory):
    """(run_dir, model_store) with galaxy-b0.mar, galaxy-b2.mar, galaxy-ensemble.war."""
    from torchserve_ops.archive import build_all

    root = tmp_path_factory.mktemp("archives")
    run_dir = make_checkpoints(root / "run")
    store = root / "model_store"
    build_all(run_dir, store)
    return run_dir, store


@pytest.fixture(scope="session")
def make_torchserve(tmp_path_factory, served_archives):
    from torchserve_ops import server as ts_server

    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17 (make java)")
    run_dir, store = served_archives
    started = []

    def start(workflow: bool = True, models=ts_server.ARCHIVES, timeout: float = 300.0):
        workdir = tmp_path_factory.mktemp("torchserve")
        s = ts_server.start(store, workdir, ports=ts_server.free_ports(), models=models,
                            workflow=ts_server.WORKFLOW if workflow else None,
                            log_dir=workdir / "logs", timeout=timeout, quiet=True)
        s.run_dir = run_dir
        started.append(s)
        return s

    yield start
    for s in started:
        ts_server.stop(s.workdir, s.log_dir)


@pytest.fixture(scope="session")
def torchserve(make_torchserve):
    return make_torchserve(workflow=True)


@pytest.fixture(scope="session")
def similarity_index(tmp_path_factory, served_archives) -> Path:
    """A similarity index over two real samples per class, embedded with the served models."""
    from prediction.similarity import build_from_images, predictor_of

    run_dir, _ = served_archives
    root = tmp_path_factory.mktemp("similar")
    (root / "images").mkdir()
    for p in sorted(SAMPLES.glob("class_*_[01].jpg")):
        shutil.copy2(p, root / "images" / p.name)
    return build_from_images(root / "images", predictor_of(run_dir)).save(root / "samples.npz")


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return sorted(SAMPLES.glob("class_*.jpg"))


# The slowest files first (measured with --durations), so that two xdist workers taking files in
# this order end together rather than one waiting on the other's last long file.
SLOWEST_FIRST = ("test_container_entrypoint.py", "test_retrain.py", "test_predict_ray.py", "test_evaluate.py", "test_learning.py",
                 "test_nmodel_serving.py", "test_browser.py", "test_pipeline.py", "test_train.py", "test_ood.py",
                 "test_serving.py", "test_handler.py", "test_positions_bulk.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
