"""Metrics page: TorchServe's Prometheus counters, polled on a timer and drawn over time.

Only numbers the server really reports are drawn: a chart with nothing but gaps or zeros is
replaced by a sentence saying why. Worker memory comes from psutil on the worker pids, shown only
when TorchServe runs on this machine (its describe API reports 0 for every worker).
"""
import time

import pandas as pd
import streamlit as st

from dashboard import common, metrics_views, views
from torchserve_ops.client import TorchServeError

HISTORY = 720  # points kept per session (an hour at 5 s)

st.title("Metrics")
s = common.settings()
local = views.is_local(s["host"])
c1, c2 = st.columns([3, 1])
c1.caption(f"From {s['metrics_url']}/metrics (Prometheus), kept while this page is open"
           + ("; worker memory from psutil on this machine." if local else "."))
every = c2.selectbox("Refresh every", [2, 5, 10, 30], index=1, format_func=lambda x: f"{x} s",
                     key="metrics_every")
if c2.button("Clear history", key="metrics_clear"):
    st.session_state["metrics_history"] = []


# The per-model table's headers, short enough to fit; the help says what each number is.
TABLE_COLUMNS = {
    "model": st.column_config.TextColumn("model", help="A workflow's models as WORKFLOW / NODE"),
    "requests": st.column_config.NumberColumn(
        "requests", help="ts_inference_requests_total: /predictions requests (a workflow's calls "
                         "to its models are not counted)"),
    "mean inference ms": st.column_config.NumberColumn(
        "mean ms", help="Mean inference latency since start (frontend, per counted request)"),
    "mean queue ms": st.column_config.NumberColumn("queue ms", help="Mean time in the queue"),
    "last prediction ms": st.column_config.NumberColumn(
        "last ms", help="PredictionTime: the handler's time for the latest batch"),
    "inference time s": st.column_config.NumberColumn(
        "total s", help="ts_inference_latency_microseconds: all inference time since start"),
}


def chart(title: str, frame: pd.DataFrame, empty: str, y_title: str, legend: str | None) -> None:
    st.markdown(f"**{title}**")
    if metrics_views.drawable(frame):
        st.altair_chart(metrics_views.time_chart(frame, y_title, legend), width="stretch")
    else:
        st.caption(empty)


@st.fragment(run_every=every)
def live():
    try:
        samples = common.metrics_samples(s["metrics_url"])
    except TorchServeError as e:
        common.show_error(e)
        return
    point = metrics_views.snapshot(samples, time.time())
    workers = []
    if local:
        try:
            workers = views.worker_rows(common.descriptions(s["management_url"])[0], local)
        except TorchServeError as e:
            st.caption(f"Worker memory unavailable: {common.message(e)}")
    for w in workers:
        if w["memory MB"] is not None:
            key = f"memory:{metrics_views.model_label(w['model'])} {w['version']}"
            point[key] = point.get(key, 0.0) + w["memory MB"]

    history = st.session_state.setdefault("metrics_history", [])
    history.append(point)
    del history[:-HISTORY]

    a, b, c, d = st.columns(4)
    a.metric("2XX responses", f"{point['2xx']:.0f}")
    b.metric("4XX responses", f"{point['4xx']:.0f}")
    c.metric("5XX responses", f"{point['5xx']:.0f}")
    d.metric("CPU", f"{point['cpu_percent']:.0f} %" if point["cpu_percent"] is not None else "not yet",
             help="TorchServe reports host metrics once a minute")

    left, right = st.columns(2)
    with left:
        chart("Responses by status (since server start)", metrics_views.history_frame(history),
              "No responses yet.", "responses", "status")
        chart("Mean inference latency since start (ms, per model)", metrics_views.history_frame(history, "latency:"),
              "No inference requests yet.", "ms", "model")
        if any(k.endswith(metrics_views.LATEST) for k in point if k.startswith("latency:")):
            st.caption("A workflow's models (WORKFLOW / NODE) are timed but their calls are not "
                       "counted by TorchServe, so they show the latest call (PredictionTime).")
    with right:
        if local:
            chart("Worker memory (MB resident, psutil)", metrics_views.history_frame(history, "memory:"),
                  "No worker processes visible.", "MB", "worker")
        chart("Host memory used (MB)", metrics_views.history_frame(history, "memory_used_mb"),
              "TorchServe reports host memory once a minute: none reported yet.", "MB", None)

    st.markdown("**Per model since start**")
    table = metrics_views.per_model_latency(samples)
    st.dataframe(table, hide_index=True, column_config=TABLE_COLUMNS)
    if metrics_views.uncounted_models(table):
        st.caption("TorchServe counts requests (ts_inference_requests_total) only for /predictions: "
                   f"the calls a workflow makes to {', '.join(metrics_views.uncounted_models(table))} are "
                   "timed (inference time, last prediction) but not counted, so they have no mean.")
    if workers:
        st.dataframe(pd.DataFrame(workers).assign(model=lambda d: d["model"].map(metrics_views.model_label)),
                     hide_index=True)
    st.caption(f"{len(history)} points, last at {time.strftime('%H:%M:%S')}")


live()
