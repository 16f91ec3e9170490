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

Under `make test` (pytest-xdist, `--dist loadfile`) the files that use `torchserve`,
`make_torchserve` or `served_archives` run on one worker, so that one session TorchServe serves
them all (pytest_xdist_make_scheduler below).
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


# The test checkpoints answer at a third of the specs' input sizes (a spec's size is the
# checkpoint's, as with training's --input-size): the same code paths, a tenth of the CPU per image.
TEST_SIZES = {"b0": (48, 48), "b2": (88, 76), "convnext": (72, 64)}


def small_spec(name: str):
    """get_spec(name) at TEST_SIZES' (resize, crop)."""
    import dataclasses

    from galaxy_morph.specs import get_spec

    resize, crop = TEST_SIZES[name]
    return dataclasses.replace(get_spec(name), resize=resize, crop=crop)


def make_checkpoints(run_dir: Path, version: str = "1.0", seed: int = 0) -> Path:
    """Random-init B0 and B2 checkpoints that tell galaxies apart: batch-norm statistics from a few
    real samples and a random head, so that their answers differ from image to image (plain
    random-init ones answer almost the same probabilities for every image) and between the models."""
    import torch

    from galaxy_morph.imaging import decode_image
    from galaxy_morph.models import build_model, features_and_logits, save_checkpoint
    from galaxy_morph.specs import GALAXY10_CLASSES
    from galaxy_morph.transforms import eval_transform

    images = [decode_image(p.read_bytes()) for p in sorted(SAMPLES.glob("class_*.jpg"))]
    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(seed + i)
        model, spec = build_model(name), small_spec(name)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # the plain average over the batch below
        model.train()
        x = torch.stack([eval_transform(spec)(im) for im in images])
        with torch.no_grad():
            model(x)
            model.eval()
            feats = features_and_logits(model, x)[0]
            head = model.classifier[-1] if name == "b0" else model.classifier
            # logits of a few units, whatever the features' scale: answers neither flat nor one-hot
            head.weight.normal_(0.0, 1.0 / float(feats.norm(dim=1).mean()))
            head.bias.normal_(0.0, 0.5)
        save_checkpoint(run_dir / name, model.eval(), spec, GALAXY10_CLASSES, version=version,
                        data={"path": "random-init", "sha256": None, "n": 0})
    return run_dir


@pytest.fixture(scope="session")
def served_archives(tmp_path_factory):
    """(run_dir, model_store) with galaxy-b0.mar, galaxy-b2.mar, galaxy-ensemble.war, answering on
    ONNX Runtime (the CPU default)."""
    from galaxy_morph.runtimes import ensure_onnx
    from torchserve_ops.archive import build_all

    root = tmp_path_factory.mktemp("archives")
    run_dir = make_checkpoints(root / "run")
    for m in ("b0", "b2"):  # what the build would run in a process of its own, here where torch is loaded
        ensure_onnx(run_dir / m, SAMPLES)
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
    for s in started:  # SIGKILL after 1 s: the frontend takes seconds to exit on SIGTERM, and nothing is kept
        ts_server.stop(s.workdir, s.log_dir, timeout=1)


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


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module: make predict's actors run on it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return sorted(SAMPLES.glob("class_*.jpg"))


# Seconds each file takes on a 2-core machine that others use too (measured with --durations; the
# first file with a server pays its start, SERVER_START). Files run slowest first, so that two
# xdist workers end together rather than one waiting on the other's last long file; a file missing
# here counts as UNKNOWN_S, early enough that a slow new file does not end the run alone.
SECONDS = {"test_one_answer_path.py": 103, "test_container_entrypoint.py": 69, "test_retrain.py": 61,
           "test_make_serve.py": 59, "test_browser.py": 37, "test_reliability.py": 33,
           "test_predict_ray.py": 31, "test_train.py": 25, "test_learning.py": 24,
           "test_retrain_calibration.py": 20, "test_ood.py": 17, "test_runtimes.py": 16,
           "test_evaluate.py": 15, "test_notebook_page.py": 15, "test_pretrained.py": 14,
           "test_client.py": 13, "test_dashboard.py": 12, "test_predictor.py": 10,
           "test_positions_bulk.py": 10, "test_demo.py": 10, "test_cutouts.py": 9, "test_imports.py": 9,
           "test_handler.py": 7, "test_device_augment.py": 6, "test_bulk.py": 6, "test_review.py": 5,
           "test_bench.py": 4, "test_label_store.py": 4, "test_pipeline.py": 4, "test_synthetic.py": 4,
           "test_serving.py": 3, "test_similarity.py": 3, "test_dashboard_positions.py": 2,
           "test_fits_image.py": 2, "test_fits_serving.py": 2, "test_queue_inputs.py": 2,
           "test_packaging.py": 1, "test_active_learning.py": 1, "test_k8s.py": 1,
           "test_queue_uploads.py": 1, "test_layout.py": 1, "test_download.py": 1, "test_serve_script.py": 1,
           "test_core.py": 1, "test_calibration.py": 1, "test_checkpoint.py": 0, "test_data.py": 0,
           "test_schedule_ema.py": 0, "test_split.py": 0, "test_calibration_views.py": 0,
           "test_review_identity.py": 0, "test_acquisition.py": 0, "test_ensemble.py": 0,
           "test_frontend.py": 3, "test_overload.py": 0}  # make soak runs it
UNKNOWN_S, SERVER_START = 20, 30
# A file with a test that uses one of these is a server file (see pytest_xdist_make_scheduler).
SERVER_FIXTURES = {"torchserve", "make_torchserve", "served_archives"}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -SECONDS.get(item.path.name, UNKNOWN_S))  # stable: order within a file kept
    lanes = getattr(config, "workerinput", {}).get("galaxy_lanes")
    if lanes:  # an xdist worker: tell the scheduler which files need the session TorchServe
        uses: dict[str, bool] = {}
        for item in items:
            f = item.nodeid.split("::", 1)[0]
            uses[f] = uses.get(f, False) or bool(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
        Path(lanes, f"{config.workerinput['workerid']}.json").write_text(json.dumps(uses))


# Each xdist worker builds its own archives and starts its own session TorchServe (SERVER_START)
# with its first server file. With `--dist loadfile` (make test), the first worker takes the server
# files (the server lane), then any other; the other workers take the files that need no server.
# Once those are done, one takes a server file only when the server files queued besides it would
# take longer than a server start; else it stops, and the server lane finishes them.
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["galaxy_lanes"] = getattr(node.config, "galaxy_lanes", None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ServerLane(LoadFileScheduling):
        def __init__(self, config, log):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the collection's order, not "most tests first"
            self._server_files = None

        def server_files(self) -> set[str]:
            if self._server_files is None:
                lanes = getattr(config, "galaxy_lanes", None)
                self._server_files = {f for p in (Path(lanes).glob("*.json") if lanes else ())
                                      for f, uses in json.loads(p.read_text()).items() if uses}
            return self._server_files

        def _assign_work_unit(self, node):
            server, on_lane = self.server_files(), node is self.nodes[0]
            scope = next((s for s in self.workqueue if (s in server) == on_lane), None)
            if scope is None:  # none of its own left
                scope = next(iter(self.workqueue))
                rest = sum(SECONDS.get(Path(s).name, UNKNOWN_S) for s in self.workqueue if s != scope)
                if not on_lane and rest < SERVER_START:
                    return  # the server lane finishes them sooner than a second server would start
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)  # sends the first unit of the queue

        def _reschedule(self, node):
            if (node.shutting_down or not self.workqueue or node is self.nodes[0]
                    or self._pending_of(self.assigned_work[node]) > 2):
                return super()._reschedule(node)
            self._assign_work_unit(node)
            if self._pending_of(self.assigned_work[node]) == 0:
                node.shutdown()  # nothing it should take: it ends, and the others finish

    return ServerLane(config, log)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        config.galaxy_lanes = tempfile.mkdtemp(prefix="pytest-lanes-")


def pytest_unconfigure(config):
    if getattr(config, "galaxy_lanes", None):
        shutil.rmtree(config.galaxy_lanes, ignore_errors=True)
