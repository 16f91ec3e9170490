"""The Metrics page's data: TorchServe's Prometheus samples -> per-model tables, latency and
memory series, and time charts with clock axes (Altair), with no Streamlit in it.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from torchserve_ops.client import Sample, metric_total

# prometheus_client names counter samples NAME_total; TorchServe's frontend exports counters for
# requests and cumulative latency (no histograms), and host gauges once a minute.
STATUS_COUNTERS = {"2xx": "Requests2XX_total", "4xx": "Requests4XX_total", "5xx": "Requests5XX_total"}
REQUESTS = "ts_inference_requests_total"
INFERENCE_US = "ts_inference_latency_microseconds_total"
QUEUE_US = "ts_queue_latency_microseconds_total"
# The backend's gauge: how long the handler took for the model's latest batch (label ModelName).
PREDICTION_MS = "PredictionTime"
# TorchServe 0.12 registers a workflow's nodes as models named WORKFLOW__NODE (galaxy-ensemble__b0,
# and the function nodes galaxy-ensemble__pre, galaxy-ensemble__ensemble). Their jobs add to
# ts_inference_latency_microseconds and ts_queue_latency_microseconds and report PredictionTime,
# but ts_inference_requests_total counts /predictions requests only: a workflow's calls to its
# models are timed but never counted, so their mean latency cannot be computed.
WORKFLOW_SEPARATOR = "__"
LATEST = " (latest)"  # suffix of a latency series that is the latest call, not a mean


def model_label(name: str) -> str:
    """A model name as a reader knows it: galaxy-ensemble__b0 -> "galaxy-ensemble / b0"."""
    workflow, sep, node = name.partition(WORKFLOW_SEPARATOR)
    return f"{workflow} / {node}" if sep and workflow and node else name


def _model_versions(samples: list[Sample]) -> list[tuple[str, str]]:
    """(model_name, model_version) of every model the frontend has timed or counted, workflow
    members included, standalone models first."""
    keys = {(s.labels.get("model_name", ""), s.labels.get("model_version", ""))
            for s in samples if s.name in (REQUESTS, INFERENCE_US)}
    return sorted(keys, key=lambda k: (WORKFLOW_SEPARATOR in k[0], k))


def _labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Readable names; the version is added only where a model has several."""
    n = {}
    for model, _ in keys:
        n[model] = n.get(model, 0) + 1
    return {(m, v): model_label(m) + (f" {v}" if n[m] > 1 else "") for m, v in keys}


def last_prediction_ms(samples: list[Sample], model: str) -> float | None:
    """The PredictionTime gauge of `model` (its latest batch, ms), None when not reported."""
    found = [s.value for s in samples if s.name == PREDICTION_MS and s.labels.get("ModelName") == model]
    return max(found) if found else None


def snapshot(samples: list[Sample], t: float) -> dict:
    """The numbers the Metrics page follows, at time t (epoch seconds); a host gauge TorchServe
    has not reported yet is None, not 0.

    "latency:NAME" is the mean inference latency since start where TorchServe counts requests;
    for a workflow's models, which it does not count, "latency:NAME (latest)" is the latest
    call's PredictionTime."""
    def gauge(name):
        found = [s.value for s in samples if s.name == name]
        return sum(found) if found else None

    point = {"time": t, **{k: metric_total(samples, n) for k, n in STATUS_COUNTERS.items()}}
    keys = _model_versions(samples)
    for (model, version), label in _labels(keys).items():
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        if n:
            point[f"latency:{label}"] = metric_total(samples, INFERENCE_US, **sel) / n / 1000.0
        elif (last := last_prediction_ms(samples, model)) is not None:
            point[f"latency:{label}{LATEST}"] = last
    point.update(cpu_percent=gauge("CPUUtilization"), memory_used_mb=gauge("MemoryUsed"))
    return point


PER_MODEL_COLUMNS = ["model", "version", "requests", "mean inference ms", "mean queue ms",
                     "last prediction ms", "inference time s"]


def per_model_latency(samples: list[Sample]) -> pd.DataFrame:
    """Since server start, per model and version (a workflow's models as "WORKFLOW / NODE"):
    requests, mean inference and queue latency, the latest batch's prediction time and the
    total inference time. A workflow's models have no request count (None), so no means."""
    keys = _model_versions(samples)
    labels = _labels(keys)
    rows = []
    for model, version in keys:
        sel = {"model_name": model, "model_version": version}
        n = metric_total(samples, REQUESTS, **sel)
        inference_us = metric_total(samples, INFERENCE_US, **sel)
        last = last_prediction_ms(samples, model)
        rows.append({"model": labels[(model, version)], "version": version,
                     "requests": int(n) if n else None,
                     "mean inference ms": round(inference_us / n / 1000, 2) if n else None,
                     "mean queue ms": round(metric_total(samples, QUEUE_US, **sel) / n / 1000, 3)
                     if n else None,
                     "last prediction ms": round(last, 2) if last is not None else None,
                     "inference time s": round(inference_us / 1e6, 3)})
    frame = pd.DataFrame(rows, columns=PER_MODEL_COLUMNS)
    frame["requests"] = frame["requests"].astype("Int64")
    return frame


def uncounted_models(table: pd.DataFrame) -> list[str]:
    """The rows of per_model_latency whose requests TorchServe does not count (workflow models)."""
    return [m for m, n in zip(table["model"], table["requests"]) if pd.isna(n)]


def history_frame(history: list[dict], prefix: str = "") -> pd.DataFrame:
    """Snapshots -> a frame indexed by local clock time (naive datetimes) of the columns starting
    with `prefix` (prefix removed), or of the status counters when `prefix` is empty. Columns
    with no value at all are dropped, so a chart is drawn only from numbers the server really
    reported."""
    if not history:
        return pd.DataFrame()
    df = pd.DataFrame(history)
    df.index = pd.DatetimeIndex([dt.datetime.fromtimestamp(t) for t in df.pop("time")], name="time")
    cols = [c for c in df.columns if c.startswith(prefix)] if prefix else list(STATUS_COUNTERS)
    out = df[cols].rename(columns=lambda c: c[len(prefix):] or c).astype(float)
    return out.dropna(axis=1, how="all")


def drawable(frame: pd.DataFrame) -> bool:
    """A chart worth drawing: some value that is a number and not zero."""
    return not frame.empty and bool(np.nan_to_num(frame.to_numpy(dtype=float)).any())


# Tick spacing for the clock axis (seconds): each divides the next unit, so ticks fall on round
# clock times; at most about 5 ticks (half a page wide) whatever the span, and never finer than a second (the finer
# ticks Vega picks for a few seconds of history are what it labels ".500").
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
CLOCK_FORMAT = "%H:%M:%S"
LEGEND_TOP, LEGEND_ROW = 70, 20  # px below the plot: x axis and legend title, one legend row


def tick_step(span_s: float, most: int = 5) -> int:
    """Seconds between clock-axis ticks for a history spanning `span_s` seconds."""
    return next((s for s in TICK_STEPS if span_s / s <= most), 86400)


def clock_ticks(start: pd.Timestamp, end: pd.Timestamp, most: int = 5) -> list[pd.Timestamp]:
    """Round clock times (multiples of tick_step since midnight) from start to end; the second
    of `start` when none falls between (a single poll)."""
    step = pd.Timedelta(seconds=tick_step((end - start).total_seconds(), most))
    first = start.ceil(step)
    ticks = list(pd.date_range(first, end, freq=step)) if first <= end else []
    return ticks or [start.floor("s")]


def _utc_ms(t) -> int:
    """A naive (local clock) time as the epoch ms of the same clock reading in UTC."""
    return int(pd.Timestamp(t).tz_localize("UTC").value // 10**6)


def time_chart(frame: pd.DataFrame, y_title: str, legend: str | None = "series", height: int = 200):
    """An Altair line chart of a history_frame: x the clock time (HH:MM:SS, titled, ticks on
    round seconds or minutes), y `y_title`, one coloured line per column, listed under the plot
    with the title `legend` (legend=None: no list, for a chart whose title names its one line).

    The index holds local clock times. They go to Vega-Lite as epoch ms of the same reading in UTC
    on a UTC scale, so neither the browser's time zone nor Streamlit's datetime conversion shifts
    them: the axis reads like the page's "last at HH:MM:SS" caption."""
    import altair as alt

    shown, legend = legend is not None, legend or "series"
    long = (frame.rename_axis("time").reset_index()
            .melt("time", var_name=legend, value_name="value").dropna(subset=["value"]))
    long["clock"] = long["time"].dt.strftime(CLOCK_FORMAT)
    long["time"] = [_utc_ms(t) for t in long["time"]]
    ticks = clock_ticks(frame.index.min(), frame.index.max()) if len(frame) else []
    series = frame.columns.size
    # (tick values as DateTime objects: Vega draws no label for epoch-ms values on a UTC axis)
    values = [alt.DateTime(year=t.year, month=t.month, date=t.day, hours=t.hour, minutes=t.minute,
                           seconds=t.second, utc=True) for t in ticks]
    x = alt.X("time:T", title="time (HH:MM:SS)", scale=alt.Scale(type="utc"),
              axis=alt.Axis(format=CLOCK_FORMAT, values=values, labelAngle=0, labelOverlap=True))
    chart = alt.Chart(long).mark_line(point=len(frame) <= 60).encode(
        x=x,
        y=alt.Y("value:Q", title=y_title),
        color=alt.Color(f"{legend}:N", title=legend,
                        legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=400,
                                          symbolSize=60, rowPadding=2, titlePadding=4)
                        if shown else None),
        tooltip=[alt.Tooltip("clock:N", title="time"), alt.Tooltip(f"{legend}:N"),
                 alt.Tooltip("value:Q", title=y_title, format=",.2f")])
    # Streamlit fits the whole chart, legend included, into the height: room for axis and legend
    return chart.properties(height=height + LEGEND_TOP + (LEGEND_ROW * series if shown else 0))
