"""Metrics page: TorchServe's Prometheus counters, polled on a timer and drawn over time.

Only numbers the server really reports are drawn: a chart with nothing but gaps or zeros is
replaced by a sentence saying why. Worker memory comes from psutil on the worker pids, shown only
when TorchServe runs on this machine (its describe API reports 0 for every worker).
"""
import time

import pandas as pd
import streamlit as st

from dashboard import common, views
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


def chart(title: str, frame: pd.DataFrame, empty: str) -> None:
    st.markdown(f"**{title}**")
    if views.drawable(frame):
        st.line_chart(frame, height=220)
    else:
        st.caption(empty)


@st.fragment(run_every=every)
def live():
    try:
        samples = common.metrics_samples(s["metrics_url"])
    except TorchServeError as e:
        common.show_error(e)
        return
    point = views.snapshot(samples, time.time())
    workers = []
    if local:
        try:
            workers = views.worker_rows(common.descriptions(s["management_url"])[0], local)
        except TorchServeError as e:
            st.caption(f"Worker memory unavailable: {common.message(e)}")
    for w in workers:
        if w["memory MB"] is not None:
            key = f"memory:{w['model']} {w['version']}"
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
        chart("Responses by status (since server start)", views.history_frame(history),
              "No responses yet.")
        chart("Mean inference latency since start (ms, per model)", views.history_frame(history, "latency:"),
              "No inference requests yet.")
    with right:
        if local:
            chart("Worker memory (MB resident, psutil)", views.history_frame(history, "memory:"),
                  "No worker processes visible.")
        chart("Host memory used (MB)", views.history_frame(history, "memory_used_mb"),
              "TorchServe reports host memory once a minute: none reported yet.")

    st.markdown("**Per model since start**")
    st.dataframe(views.per_model_latency(samples), hide_index=True)
    if workers:
        st.dataframe(pd.DataFrame(workers), hide_index=True)
    st.caption(f"{len(history)} points, last at {time.strftime('%H:%M:%S')}")


live()
