"""Streamlit glue shared by the pages: the cached client, cached metrics, and error messages.

The server's address comes from TS_HOST, TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT
and TS_KEY_FILE, read at every run, so the same process can follow another server.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from dashboard import card_views
from prediction.similarity import DEFAULT_INDEX, SimilarityIndex

from torchserve_ops.client import (AuthError, ServerError, ServerTimeout, ServerUnavailable,
                                   TorchServeClient, TorchServeError, server_settings)


def settings() -> dict:
    """{"host", "inference_url", "management_url", "metrics_url", "key_file"} from TS_* now."""
    return server_settings()


@st.cache_resource(show_spinner=False)
def _client(inference_url: str, management_url: str, metrics_url: str, key_file: str):
    return TorchServeClient(inference_url, management_url, metrics_url, key_file=key_file)


def client() -> TorchServeClient:
    """One client per server address, shared by every session."""
    s = settings()
    return _client(s["inference_url"], s["management_url"], s["metrics_url"], s["key_file"])


@st.cache_data(ttl=2, show_spinner=False)
def metrics_samples(metrics_url: str) -> list:
    return client().metrics()


@st.cache_data(ttl=5, show_spinner=False)
def descriptions(management_url: str) -> tuple[dict, dict]:
    """({model: [every version's description]}, {model: default version}) for every model."""
    ts = client()
    out, defaults = {}, {}
    for m in ts.list_models():
        name = m["modelName"]
        out[name] = ts.versions(name)
        defaults[name] = ts.default_version(name)
    return out, defaults


@st.cache_data(ttl=60, show_spinner="Asking TorchServe...")
def predict(inference_url: str, model: str, kind: str, image: bytes, rule: str | None) -> dict:
    """Cached per (server, model, rule, image) for a minute: toggles do not re-run inference.
    The answer carries the embeddings, for the similar galaxies."""
    ts = client()
    if kind == "workflow":
        return ts.predict_workflow(model, image, rule=rule, embedding=True)
    return ts.predict(model, image, embedding=True)


@st.cache_resource(show_spinner=False)
def label_store(location: str):
    """One labelling.store.LabelStore per location, shared by every session (it is thread-safe:
    each call opens its own connection)."""
    from labelling.store import LabelStore

    return LabelStore(location)


@st.cache_resource(show_spinner=False)
def _similarity_index(path: str, mtime: float):
    return SimilarityIndex.load(path)


def similarity_index() -> "SimilarityIndex | None":
    """The index over the real samples (make serve builds it; GALAXY_SIMILARITY_INDEX: another
    one), reloaded when the file changes; None when there is none."""
    path = Path(os.environ.get("GALAXY_SIMILARITY_INDEX") or DEFAULT_INDEX)
    if not path.is_file():
        return None
    return _similarity_index(str(path), path.stat().st_mtime)


@st.cache_data(ttl=60, show_spinner="Computing Grad-CAM...")
def explain(inference_url: str, model: str, image: bytes, target: int | None) -> dict:
    return client().explain(model, image, target=target)


def message(e: Exception) -> str:
    """A sentence for the user, never a traceback."""
    s = settings()
    if isinstance(e, ServerTimeout):
        return (f"TorchServe did not answer in time ({e}). It may be busy starting workers; "
                "try again in a moment.")
    if isinstance(e, ServerUnavailable):
        return (f"TorchServe is not reachable at {s['inference_url']} / {s['management_url']}. "
                "Start it with `make serve`; this page works again as soon as it answers.")
    if isinstance(e, AuthError):
        return (f"TorchServe refused the access token (HTTP {e.status}: {e.message}). "
                f"The dashboard reads keys from `{s['key_file']}`: is that the key file of the "
                "running server?")
    if isinstance(e, ServerError):
        who = "The request was refused" if e.is_client_error else "The server failed"
        return f"{who} (HTTP {e.status}{' ' + e.type if e.type else ''}): {e.message}"
    return f"Error talking to TorchServe: {e}"


def show_error(e: Exception) -> None:
    st.error(message(e), icon=":material/error:")


@contextmanager
def guard(stop: bool = True):
    """Show any TorchServe error as a message; with `stop`, end this run of the page there."""
    try:
        yield
    except TorchServeError as e:
        show_error(e)
        if stop:
            st.stop()


@st.cache_data(ttl=5, show_spinner=False)
def health(inference_url: str) -> dict:
    return client().ping()


@st.cache_data(ttl=30, show_spinner=False)
def card(management_url: str, model: str, version: str | None) -> list[dict]:
    """The describe answer with the handler's model card (?customized=true)."""
    return client().describe(model, version, customized=True)


def provenance_banner(card_model: str, shown_model: str) -> None:
    """What the served model was trained on and its real-sample accuracy, from the model card of
    `card_model` (for the ensemble: a member's card, whose run report holds the ensemble's)."""
    s = settings()
    try:
        model_card = card_views.card_of(card(s["management_url"], card_model, None))
    except TorchServeError:
        return  # the page itself explains a server problem
    st.info(card_views.provenance_text(card_views.provenance(model_card, shown_model)), icon=":material/science:")


def demo_models_section() -> None:
    """README's "Demo models" section, under the anchor #demo-models the banner links to."""
    text = card_views.readme_section("Demo models")
    if text:
        st.subheader("Demo models", anchor="demo-models")
        st.markdown(text)
