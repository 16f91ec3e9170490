"""Classify page: upload images or pick real Galaxy10 DECaLS samples; B0, B2 or the ensemble."""
import pandas as pd
import streamlit as st

from dashboard import common, views
from galaxy_morph.client import TorchServeError
from galaxy_morph.imaging import ImageError, decode_image

st.title("Classify a galaxy")

with st.sidebar:
    model_label = st.radio("Model", list(views.MODELS), key="classify_model")
    model, kind = views.MODELS[model_label]
    rule = None
    if kind == "workflow":
        rule = st.selectbox("Ensemble rule", list(views.RULES), format_func=views.RULES.get,
                            key="classify_rule")
    show_cam = st.toggle("Grad-CAM overlay", key="classify_cam",
                         help="Where the model looked for the predicted class (explanations API)")

source = st.segmented_control("Images", ["Upload", "Sample gallery"], default="Upload",
                              key="classify_source") or "Upload"
images: list[tuple[str, bytes]] = []
if source == "Upload":
    files = st.file_uploader("JPEG or PNG galaxy cutouts", type=["jpg", "jpeg", "png"],
                             accept_multiple_files=True, key="classify_upload")
    images = [(f.name, f.getvalue()) for f in files or []]
else:
    samples = views.gallery()
    if not samples:
        st.warning(f"No samples found in {views.SAMPLES_DIR}.")
    else:
        by_class = sorted({s["class_name"]: s["label"] for s in samples}.items(), key=lambda kv: kv[1])
        cls = st.selectbox("Labelled class", [c for c, _ in by_class], key="gallery_class")
        group = [s for s in samples if s["class_name"] == cls]
        st.image([str(s["path"]) for s in group], caption=[s["name"] for s in group], width=96)
        picked = st.pills("Pick one or more", [s["name"] for s in group], selection_mode="multi",
                          default=[group[0]["name"]], key=f"gallery_pick_{cls}")
        images = [(s["name"], s["path"].read_bytes()) for s in group if s["name"] in (picked or [])]
        readme = views.SAMPLES_DIR / "README.md"
        with st.expander("About these samples (source and licence)"):
            st.markdown(readme.read_text() if readme.exists() else "No README found.")

if not images:
    st.info("Upload an image or pick a sample to classify it.")
    st.stop()

s = common.settings()
for name, data in images:
    st.divider()
    left, right = st.columns([1, 2], gap="large")
    try:
        shown = decode_image(data)
    except ImageError as e:
        shown = None
        left.warning(f"{name}: {e}")
    if shown is not None:
        left.image(shown, caption=name, width="stretch")

    with right:
        try:
            result = common.predict(s["inference_url"], model, kind, data, rule)
        except TorchServeError as e:
            common.show_error(e)
            continue
        st.subheader(result.get("class_name", "?"))
        st.caption(f"{result.get('model', model)} · version {result.get('version', '?')}"
                   + (f" · rule {result.get('rule', rule)}" if kind == "workflow" else ""))
        c1, c2 = st.columns(2)
        c1.metric("Confidence", f"{float(result.get('confidence', 0)):.1%}")
        if kind == "workflow":
            agree = views.agreement(result)
            c2.metric("Answer from", str(result.get("source", "?")),
                      help="both: B0 and B2 agree; b0 / b2: that model's answer was taken")
            if agree:
                st.success("B0 and B2 agree.", icon=":material/check_circle:")
            elif agree is False:
                st.warning("B0 and B2 disagree.", icon=":material/call_split:")
            st.dataframe(pd.DataFrame(views.members(result)), hide_index=True,
                         column_config={"confidence": st.column_config.ProgressColumn(
                             "confidence", min_value=0.0, max_value=1.0, format="percent")})
            chart = views.probabilities_frame(result.get("probabilities", {})).rename(
                columns={"probability": "ensemble"})
            for key in ("b0", "b2"):
                member = result.get(key) or {}
                if member.get("probabilities"):
                    chart[key.upper()] = views.probabilities_frame(member["probabilities"])["probability"]
            st.bar_chart(chart, x="class", y=[c for c in chart.columns if c != "class"],
                         horizontal=True, stack=False, sort=False, height=340,
                         x_label="", y_label="probability")
        else:
            ranked = sorted((result.get("probabilities") or {}).items(), key=lambda kv: -kv[1])
            if len(ranked) > 1:
                c2.metric("Runner-up", ranked[1][0], f"{ranked[1][1]:.1%}", delta_color="off")
            st.bar_chart(views.probabilities_frame(result.get("probabilities", {})),
                         x="class", y="probability", horizontal=True, sort=False, height=300,
                         x_label="", y_label="probability")

    if show_cam and shown is not None:
        explain_models = ["galaxy-b0", "galaxy-b2"] if kind == "workflow" else [model]
        cols = st.columns(len(explain_models) + 1)
        cols[0].image(shown, caption="image", width="stretch")
        for col, m in zip(cols[1:], explain_models):
            try:
                heat = views.heatmap_array(common.explain(s["inference_url"], m, data,
                                                          result.get("label")))
            except TorchServeError as e:
                with col:
                    common.show_error(e)
                continue
            except ValueError as e:
                col.warning(f"Unexpected explanation from {m}: {e}")
                continue
            col.image(views.overlay(shown, heat, views.crop_box(shown.size, m)),
                      caption=f"Grad-CAM {m} for {result.get('class_name')}", width="stretch")
