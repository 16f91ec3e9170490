"""Metrics page: TorchServe's Prometheus metrics, polled on a timer and drawn over time."""
import time

import pandas as pd
import streamlit as st

from dashboard import common, views
from galaxy_morph.client import TorchServeError

HISTORY = 720  # points kept per session (an hour at 5 s)

st.title("Metrics")
s = common.settings()
c1, c2 = st.columns([3, 1])
c1.caption(f"From {s['metrics_url']}/metrics (Prometheus) and the describe API, kept while this "
           "page is open.")
every = c2.selectbox("Refresh every", [2, 5, 10, 30], index=1, format_func=lambda x: f"{x} s",
                     key="metrics_every")
if c2.button("Clear history", key="metrics_clear"):
    st.session_state["metrics_history"] = []


@st.fragment(run_every=every)
def live():
    try:
        samples = common.metrics_samples(s["metrics_url"])
    except TorchServeError as e:
        common.show_error(e)
        return
    point = views.snapshot(samples, time.time())
    workers = []
    try:
        descs, _ = common.descriptions(s["management_url"])
        workers = views.worker_rows(descs)
    except TorchServeError as e:
        st.caption(f"Worker memory unavailable: {common.message(e)}")
    for w in workers:
        key = f"{w['model']} {w['version']}"
        point[f"mem:{key}"] = point.get(f"mem:{key}", 0.0) + w["memory MB"]

    history = st.session_state.setdefault("metrics_history", [])
    history.append(point)
    del history[:-HISTORY]
    df = views.history_frame(history)

    a, b, c, d = st.columns(4)
    a.metric("2XX responses", f"{point['2xx']:.0f}")
    b.metric("4XX responses", f"{point['4xx']:.0f}")
    c.metric("5XX responses", f"{point['5xx']:.0f}")
    d.metric("CPU", f"{point['cpu_percent']:.0f} %")

    left, right = st.columns(2)
    with left:
        st.markdown("**Responses by status** (since server start)")
        st.line_chart(df[["2xx", "4xx", "5xx"]], height=220)
        st.markdown("**Mean latency per interval** (ms)")
        st.line_chart(df[["inference ms", "queue ms"]], height=220)
    with right:
        mem_cols = [k for k in history[-1] if k.startswith("mem:")]
        st.markdown("**Worker memory** (MB, from the describe API)")
        if mem_cols:
            mem = pd.DataFrame(history, columns=["time", *mem_cols])
            mem["time"] = pd.to_datetime(mem["time"], unit="s")
            st.line_chart(mem.set_index("time").rename(columns=lambda k: k[4:]), height=220)
        else:
            st.caption("No workers.")
        st.markdown("**Host memory used** (MB)")
        st.line_chart(df[["memory_used_mb"]], height=220)

    st.markdown("**Per model since start**")
    st.dataframe(views.per_model_latency(samples), hide_index=True)
    if workers:
        st.dataframe(pd.DataFrame(workers), hide_index=True)
    st.caption(f"{len(history)} points, last at {time.strftime('%H:%M:%S')}")


live()
