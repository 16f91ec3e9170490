"""A workflow over three models (B0, B2, ConvNeXt) on the session's real TorchServe: archives built
as `make models MODELS=b0,b2,convnext` builds them, registered next to the two-model workflow.

    .venv/bin/python -m pytest -q tests/test_nmodel_serving.py
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from galaxy_morph.models import build_model, save_checkpoint
from galaxy_morph.specs import GALAXY10_CLASSES, get_spec
from torchserve_ops.archive import build_model_archive, build_workflow_archive
from torchserve_ops.client import ServerError
from torchserve_ops.server import workflow_members, workflow_model_names

pytestmark = pytest.mark.server

TRIO = "galaxy-trio"
MEMBERS = ("b0", "b2", "convnext")


@pytest.fixture(scope="module")
def trio(torchserve, tmp_path_factory):
    """galaxy-trio.war over the session's galaxy-b0/b2.mar and a random-init galaxy-convnext.mar,
    registered on the session server (its own node workers) and unregistered afterwards. Only B0
    and B2 have per-class F1, so `weighted` must refuse for want of ConvNeXt's."""
    import torch

    run = tmp_path_factory.mktemp("trio_run")
    torch.manual_seed(2)
    # fp16 on disk, as the shipped demo checkpoints (fp32 once loaded): half the archive to pack and unpack
    save_checkpoint(run / "convnext", build_model("convnext").half(), get_spec("convnext"), GALAXY10_CLASSES,
                    version="1.0", data={"path": "random-init", "sha256": None, "n": 0})
    store = torchserve.model_store
    build_model_archive(run, "convnext", store)
    war = build_workflow_archive(store, {m: f"galaxy-{m}.mar" for m in MEMBERS},
                                 f1={"b0": [0.5] * 10, "b2": [0.5] * 10},
                                 versions=dict.fromkeys(MEMBERS, "1.0"), name=TRIO)
    client = torchserve.client()
    client.register_workflow(war.name, timeout=(3.0, 300.0))
    try:
        client.wait_until_ready(workflow_model_names(war.name, workflow_members(war)), 300.0)
        yield war
    finally:
        client.unregister_workflow(TRIO)
        client.close()


def post(ts, image: bytes, rule: str | None = None) -> requests.Response:
    headers = {**ts.auth("inference"), "Content-Type": "image/jpeg"}
    if rule:
        headers["X-Ensemble-Rule"] = rule
    return requests.post(f"{ts.inference_url}/wfpredict/{TRIO}", data=image, headers=headers, timeout=120)


def test_archive_lists_members_and_nodes(trio):
    assert workflow_members(trio) == list(MEMBERS)
    assert workflow_model_names(trio.name, MEMBERS) == [
        "galaxy-trio__pre", "galaxy-trio__b0", "galaxy-trio__b2", "galaxy-trio__convnext", "galaxy-trio__ensemble"]


def test_mean_over_three_models_is_the_default(torchserve, trio, sample_images):
    image = sample_images[2].read_bytes()
    for rule in (None, "mean"):
        r = post(torchserve, image, rule)
        assert r.status_code == 200
        got = r.json()
        assert "error" not in got, got
        assert got["rule"] == "mean" and got["model"] == TRIO
        assert list(got["probabilities"]) == list(GALAXY10_CLASSES)
        member_probs = [list(got[m]["probabilities"].values()) for m in MEMBERS]
        assert [got[m]["model"] for m in MEMBERS] == [f"{TRIO}__{m}" for m in MEMBERS]
        want = np.mean(member_probs, axis=0)
        assert list(got["probabilities"].values()) == pytest.approx(want, abs=1e-6)
        assert got["label"] == int(np.argmax(want)) and got["confidence"] == pytest.approx(want.max(), abs=1e-6)


def test_seed_and_weighted_are_refused_with_a_message(torchserve, trio, sample_images):
    image = sample_images[2].read_bytes()
    seed = post(torchserve, image, "seed")
    # TorchServe 0.12 answers every finished workflow with HTTP 200 (docs/api.md): the refusal is the body.
    assert seed.status_code == 200 and seed.headers["Content-Type"].startswith("application/json")
    body = seed.json()
    assert body["code"] == 400 and "label" not in body
    assert "seed rule is defined for exactly two models" in body["error"]
    assert "got 3: b0, b2, convnext" in body["error"] and "mean or weighted" in body["error"]
    weighted = post(torchserve, image, "weighted").json()
    assert weighted["code"] == 400 and "(missing: convnext)" in weighted["error"]
    client = torchserve.client()
    try:
        with pytest.raises(ServerError, match="exactly two models") as raised:
            client.predict_workflow(TRIO, image, "seed")
        assert raised.value.status == 400
    finally:
        client.close()
