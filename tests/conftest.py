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

import json
import shutil
import tempfile
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
    """Random-init B0 and B2 checkpoints that tell galaxies apart: batch-norm statistics from a few
    real samples and a random head, so that their answers differ from image to image (plain
    random-init ones answer almost the same probabilities for every image) and between the models."""
    import torch

    from galaxy_morph.imaging import decode_image
    from galaxy_morph.models import build_model, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES, get_spec
    from galaxy_morph.transforms import eval_transform

    images = [decode_image(p.read_bytes()) for p in sorted(SAMPLES.glob("class_*_7.jpg"))]
    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(seed + i)
        model = build_model(name)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # the plain average over the batch below
        model.train()
        with torch.no_grad():
            model(torch.stack([eval_transform(get_spec(name))(im) for im in images]))
            head = model.classifier[-1] if name == "b0" else model.classifier
            head.weight.normal_(0.0, 0.1)  # logits of a few units: answers neither flat nor one-hot
            head.bias.normal_(0.0, 0.5)
        save_checkpoint(run_dir / name, model.eval(), get_spec(name), GALAXY10_CLASSES, version=version,
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
# A file whose tests use one of these runs on the server lane (see ServerLane below).
SESSION_SERVER_FIXTURES = {"torchserve", "make_torchserve", "served_archives", "similarity_index"}


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
    lanes = getattr(config, "workerinput", {}).get("galaxy_lanes")
    if lanes:  # an xdist worker: tell the scheduler which files need the session TorchServe
        uses: dict[str, bool] = {}
        for item in items:
            f = item.nodeid.split("::", 1)[0]
            uses[f] = uses.get(f, False) or bool(SESSION_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
        Path(lanes, f"{config.workerinput['workerid']}.json").write_text(json.dumps(uses))


# Two xdist workers would each start a session TorchServe (about 25 s of CPU on 2 cores) as soon
# as each takes a file that needs one. With `--dist loadfile`, the first worker takes every file
# that needs it (the server lane) and the others take the rest, in SLOWEST_FIRST order; a worker
# that runs out of its own files takes whatever is left, so nobody waits.
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["galaxy_lanes"] = node.config.galaxy_lanes


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ServerLane(LoadFileScheduling):
        def __init__(self, config, log):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep SLOWEST_FIRST, not "most tests first"
            self._server_files = None

        def server_files(self) -> set[str]:
            if self._server_files is None:
                self._server_files = {f for p in Path(config.galaxy_lanes).glob("*.json")
                                      for f, uses in json.loads(p.read_text()).items() if uses}
            return self._server_files

        def _assign_work_unit(self, node):
            on_lane = node is self.nodes[0]
            server = self.server_files()
            scope = next((s for s in self.workqueue if (s in server) == on_lane), next(iter(self.workqueue)))
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)  # pops the first unit

    return ServerLane(config, log)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        config.galaxy_lanes = tempfile.mkdtemp(prefix="pytest-lanes-")


def pytest_unconfigure(config):
    if getattr(config, "galaxy_lanes", None):
        shutil.rmtree(config.galaxy_lanes, ignore_errors=True)
