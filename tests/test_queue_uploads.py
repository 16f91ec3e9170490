"""The Classify page's "Add to the review queue": dashboard.review_views.queue_upload over made-up
answers, and the button through AppTest against the session TorchServe."""
from __future__ import annotations

import pytest

from dashboard import review_views as rv
from galaxy_morph.answers import ensemble_prediction, prediction
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.queue import ranked
from labelling.store import LabelStore, StoreError
from tests.conftest import SAMPLES
from tests.test_dashboard import app, point_at, texts

B0_P = [0.02, 0.03, 0.5, 0.2, 0.05, 0.05, 0.05, 0.04, 0.03, 0.03]
B2_P = [0.01, 0.01, 0.3, 0.4, 0.08, 0.05, 0.05, 0.04, 0.03, 0.03]


def answer(model: str, p: list[float], version: str = "1.0", ood_score: float | None = 0.25) -> dict:
    a = prediction(model, version, p, GALAXY10_CLASSES, ood={"in_distribution": True, "ood_score": ood_score})
    a["probabilities"] = dict(reversed(a["probabilities"].items()))  # the store must not rely on the order
    return a


def workflow_answer() -> dict:
    members = {"b0": answer("galaxy-ensemble__b0", B0_P, "1.0", 0.1),
               "b2": answer("galaxy-ensemble__b2", B2_P, "1.1", None)}
    mean = [(x + y) / 2 for x, y in zip(B0_P, B2_P)]
    return ensemble_prediction("galaxy-ensemble", {"probabilities": mean, "source": "both", "rule": "mean"},
                               GALAXY10_CLASSES, members)


def never(model):
    raise AssertionError(f"asked the server for {model} although the answer was at hand")


def stored(store: LabelStore, cid: int) -> dict:
    return {a["model"]: a for a in store.answers(cid)}


def test_queue_upload_stores_the_ensemble_members_once_per_content(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    cid, added = rv.queue_upload(store, "m51.jpg", b"image one", workflow_answer(), ask=never)
    assert added
    c = store.candidate(cid)
    assert (c["source"], c["image"]) == ("dashboard-upload", b"image one")
    assert c["item_key"].startswith("m51.jpg#") and len(c["item_key"]) == len("m51.jpg#") + 12
    got = stored(store, cid)
    assert sorted(got) == ["galaxy-b0", "galaxy-b2"]  # served names, not the workflow's nodes
    assert got["galaxy-b0"]["probabilities"] == pytest.approx(B0_P)  # GALAXY10_CLASSES order
    assert got["galaxy-b2"]["probabilities"] == pytest.approx(B2_P)
    assert (got["galaxy-b0"]["version"], got["galaxy-b0"]["ood_score"]) == ("1.0", pytest.approx(0.1))
    assert (got["galaxy-b2"]["version"], got["galaxy-b2"]["ood_score"]) == ("1.1", None)
    # the same bytes again: the same candidate, no second set of answers
    assert rv.queue_upload(store, "m51.jpg", b"image one", workflow_answer(), ask=never) == (cid, False)
    assert store.counts()["answers"] == 2
    # another file with the same name is another candidate
    other, added = rv.queue_upload(store, "m51.jpg", b"image two", workflow_answer(), ask=never)
    assert added and other != cid
    assert {i for i, _ in ranked(store)} == {cid, other}


def test_queue_upload_asks_for_the_model_that_was_not_asked(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    asked = []

    def ask(model):
        asked.append(model)
        return answer(model, B0_P)

    cid, added = rv.queue_upload(store, "x.png", b"png", answer("galaxy-b2", B2_P), ask=ask)
    assert added and asked == ["galaxy-b0"]
    got = stored(store, cid)
    assert got["galaxy-b2"]["probabilities"] == pytest.approx(B2_P)
    assert got["galaxy-b0"]["probabilities"] == pytest.approx(B0_P)
    # both at hand (the page's answer and one asked before): no question
    assert rv.queue_upload(store, "y.png", b"png 2", [answer("galaxy-b2", B2_P), answer("galaxy-b0", B0_P)],
                           ask=never)[1]


def test_queue_upload_refuses_bad_answers_before_writing(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    half = workflow_answer()
    half["b2"]["probabilities"] = {c: 0.05 for c in GALAXY10_CLASSES}
    with pytest.raises(StoreError, match="galaxy-b2's answer: probabilities must sum to 1"):
        rv.queue_upload(store, "a.jpg", b"a", half)
    with pytest.raises(StoreError, match="no galaxy-b0 answer for a.jpg"):
        rv.queue_upload(store, "a.jpg", b"a", answer("galaxy-b2", B2_P))
    no_version = answer("galaxy-b0", B0_P)
    del no_version["version"]
    with pytest.raises(StoreError, match="galaxy-b0's answer has no version"):
        rv.queue_upload(store, "a.jpg", b"a", [no_version, answer("galaxy-b2", B2_P)])
    with pytest.raises(StoreError, match="galaxy-b0's answer is not an answer"):
        rv.queue_upload(store, "a.jpg", b"a", answer("galaxy-b2", B2_P), ask=lambda m: "HTTP 500")
    assert store.counts()["candidates"] == 0  # nothing half-stored for the queue to trip on


@pytest.mark.server
def test_classify_page_queues_an_upload_with_both_answers(monkeypatch, torchserve, tmp_path):
    point_at(monkeypatch, torchserve)
    monkeypatch.setenv("GALAXY_SIMILARITY_INDEX", str(tmp_path / "none.npz"))
    monkeypatch.setenv("GALAXY_LABELS", str(tmp_path / "labels.db"))
    at = app().run()
    sample = SAMPLES / "class_2_0.jpg"
    at.file_uploader[0].set_value((sample.name, sample.read_bytes(), "image/jpeg")).run()
    at.button(key="classify_queue_0").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert any(t.startswith("Added class_2_0.jpg to the review queue (1 galaxy") for t in texts(at.success))
    button = at.button(key="classify_queue_0")
    assert button.disabled and button.label == "In the review queue"
    store = LabelStore(tmp_path / "labels.db")
    (cid, _), = ranked(store)
    assert store.candidate(cid)["image"] == sample.read_bytes()
    got = stored(store, cid)
    assert sorted(got) == ["galaxy-b0", "galaxy-b2"] and all(a["version"] == "1.0" for a in got.values())
    # one model asked: the other one's answer comes from the server
    at.radio(key="classify_model").set_value("B2 (EfficientNet-B2, 224 px)")
    other = SAMPLES / "class_5_0.jpg"
    at.file_uploader[0].set_value((other.name, other.read_bytes(), "image/jpeg")).run()
    at.button(key="classify_queue_0").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert len(ranked(store)) == 2
    assert all(sorted(stored(store, i)) == ["galaxy-b0", "galaxy-b2"] for i, _ in ranked(store))


@pytest.mark.server
def test_classify_page_says_when_the_store_cannot_be_opened(monkeypatch, torchserve, tmp_path):
    point_at(monkeypatch, torchserve)
    monkeypatch.setenv("GALAXY_SIMILARITY_INDEX", str(tmp_path / "none.npz"))
    (tmp_path / "foreign.db").write_bytes(b"definitely not sqlite" * 10)
    monkeypatch.setenv("GALAXY_LABELS", str(tmp_path / "foreign.db"))
    at = app().run()
    sample = SAMPLES / "class_2_0.jpg"
    at.file_uploader[0].set_value((sample.name, sample.read_bytes(), "image/jpeg")).run()
    at.button(key="classify_queue_0").click().run()
    assert not at.exception
    assert any("class_2_0.jpg was not queued" in e and "not a galaxy-morph label store" in e
               for e in texts(at.error)), texts(at.error)
    assert not at.button(key="classify_queue_0").disabled
