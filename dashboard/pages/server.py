"""Server page: health, models with versions and workers, and version/worker management."""
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import common, views

st.title("Server")
s = common.settings()
ts = common.client()

flash = st.session_state.pop("server_flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")


def act(label: str, fn, *args, **kw) -> None:
    """Run a management call; on success refresh the tables and say so."""
    with st.spinner(f"{label}..."):
        with common.guard():
            fn(*args, **kw)
    common.descriptions.clear()
    common.card.clear()
    st.session_state["server_flash"] = f"{label}: done."
    st.rerun()


with common.guard():
    health = ts.ping()
    descs, defaults = common.descriptions(s["management_url"])
    workflows = ts.list_workflows()

c1, c2, c3 = st.columns(3)
c1.metric("Health", health.get("status", "?"))
c2.metric("Models", len(descs))
c3.metric("Workflows", len(workflows))
st.caption(f"Inference {s['inference_url']} · management {s['management_url']} · "
           f"metrics {s['metrics_url']} · key file `{s['key_file']}`")

st.subheader("Models")
local = views.is_local(s["host"])  # worker memory (psutil) only where the workers run
table = views.models_table(descs, defaults, local)
if table.empty:
    st.info("No models registered. Register an archive below.")
else:
    st.dataframe(table, hide_index=True)
if workflows:
    st.subheader("Workflows")
    st.dataframe(pd.DataFrame(workflows).rename(
        columns={"workflowName": "workflow", "workflowUrl": "archive"}), hide_index=True)
    st.caption("A workflow runs its own copies of the models (`<workflow>__b0`, `__b2`): "
               "setting a default version above does not change it; "
               "`scripts/versions.sh refresh-workflow` rebuilds it on the current defaults.")

st.subheader("Manage")
tab_default, tab_scale, tab_register, tab_unregister = st.tabs(
    ["Default version", "Workers", "Register", "Unregister"])
models = list(descs)


def pick(prefix: str):
    m = st.selectbox("Model", models, key=f"{prefix}_model")
    versions = [d.get("modelVersion") for d in descs.get(m, [])]
    v = st.selectbox("Version", versions, key=f"{prefix}_version",
                     index=versions.index(defaults[m]) if defaults.get(m) in versions else 0)
    return m, v


with tab_default:
    if models:
        m, v = pick("default")
        st.caption(f"Current default of {m}: {defaults.get(m)}")
        if st.button("Make default", key="default_go", disabled=v == defaults.get(m)):
            act(f"{m} {v} is now the default", ts.set_default, m, v)

with tab_scale:
    if models:
        m, v = pick("scale")
        cur = next((d for d in descs[m] if d.get("modelVersion") == v), {})
        lo = st.number_input("Min workers", 0, 8, int(cur.get("minWorkers") or 1), key="scale_min")
        hi = st.number_input("Max workers", 0, 8, max(lo, int(cur.get("maxWorkers") or 1)),
                             key="scale_max")
        if st.button("Scale", key="scale_go"):
            act(f"{m} {v} scaled to {lo}-{max(lo, hi)} workers", ts.scale_workers, m, lo, hi,
                version=v)

with tab_register:
    store = Path(os.environ.get("TS_MODEL_STORE") or views.MODEL_STORE)
    archives = views.archives(store)
    if not archives:
        st.info(f"No .mar archives in {store}. Build them with `make archive`.")
    else:
        a = st.selectbox("Archive in the model store", archives, key="register_archive")
        n = st.number_input("Initial workers", 1, 4, 1, key="register_workers")
        st.caption("A version already registered is refused by the server; "
                   "build a new one with `make archive VERSION=...`.")
        if st.button("Register", key="register_go"):
            act(f"{a} registered", ts.register, a, initial_workers=int(n))

with tab_unregister:
    if models:
        m, v = pick("unregister")
        pending = st.session_state.get("unregister_pending")
        if pending != (m, v):
            if st.button(f"Unregister {m} {v}...", key="unregister_ask"):
                st.session_state["unregister_pending"] = (m, v)
                st.rerun()
        else:
            st.warning(f"Unregister **{m}** version **{v}**? Its workers stop and requests for it "
                       "fail until it is registered again.", icon=":material/warning:")
            yes, no = st.columns(2)
            if yes.button("Yes, unregister", type="primary", key="unregister_yes"):
                st.session_state.pop("unregister_pending", None)
                act(f"{m} {v} unregistered", ts.unregister, m, v)
            if no.button("Cancel", key="unregister_no"):
                st.session_state.pop("unregister_pending", None)
                st.rerun()
