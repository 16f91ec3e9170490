"""Batch page: classify many images, watch the progress, read the table, download a CSV."""
import pandas as pd
import streamlit as st

from dashboard import common, views
from torchserve_ops.client import AuthError, ServerUnavailable, TorchServeError

st.title("Classify a batch")

c1, c2 = st.columns([2, 1])
with c1:
    files = st.file_uploader("JPEG, PNG or g,r,z FITS images", type=["jpg", "jpeg", "png", "fits", "fit"],
                             accept_multiple_files=True, key="batch_upload")
    use_gallery = st.checkbox("Add the 100 real Galaxy10 DECaLS samples", key="batch_gallery")
with c2:
    model_label = st.radio("Model", list(views.MODEL_CHOICES), key="batch_model")
    model, kind = views.MODEL_CHOICES[model_label]
    rule = (views.rule_header(st.selectbox("Ensemble rule", list(views.RULES), format_func=views.RULES.get,
                                           key="batch_rule")) if kind == "workflow" else None)

items = [(f.name, f.getvalue()) for f in files or []]
if use_gallery:
    items += [(s["name"], s["path"].read_bytes()) for s in views.gallery()]

if st.button(f"Classify {len(items)} image{'s' * (len(items) != 1)}", type="primary",
             disabled=not items, key="batch_run"):
    ts = common.client()
    rows = []
    bar = st.progress(0.0, text="Starting...")
    for i, (name, data) in enumerate(items, 1):
        try:
            r = (ts.predict_workflow(model, data, rule=rule) if kind == "workflow"
                 else ts.predict(model, data))
            rows.append(views.result_row(name, r))
        except (ServerUnavailable, AuthError) as e:
            common.show_error(e)
            st.caption(f"Stopped after {i - 1} of {len(items)} images.")
            break
        except TorchServeError as e:
            rows.append(views.result_row(name, None, common.message(e)))
        bar.progress(i / len(items), text=f"{i} / {len(items)}: {name}")
    st.session_state["batch_rows"] = rows
    st.session_state["batch_model_used"] = model + (f" ({rule})" if rule else "")

rows = st.session_state.get("batch_rows")
if not rows:
    st.info("Add images, then press Classify.")
    st.stop()

df = pd.DataFrame(rows)
ok = df["error"].isna().sum()
st.subheader(f"{ok} of {len(df)} classified with {st.session_state.get('batch_model_used', '')}")
flagged = int((df["galaxy?"] == "NOT A GALAXY?").sum())
if flagged:
    st.warning(f"{flagged} of {len(df)}: {views.NOT_A_GALAXY.lower()} (column galaxy?): their classes "
               f"mean little.", icon=":material/report:")
st.dataframe(df.dropna(axis=1, how="all"), hide_index=True,
             column_config={"confidence": st.column_config.ProgressColumn(
                 "confidence", min_value=0.0, max_value=1.0, format="percent")})
st.bar_chart(views.class_counts(rows), x="class", y="images", horizontal=True, sort=False,
             x_label="", y_label="images")
st.download_button("Download CSV", df.to_csv(index=False).encode(), "galaxy_predictions.csv",
                   "text/csv", icon=":material/download:", key="batch_csv")
