"""Classify page: upload images (JPEG, PNG, g,r,z FITS), pick real Galaxy10 DECaLS samples, or type a
sky position whose Legacy Surveys cutout is fetched (survey.cutouts); B0, B2 or the ensemble. An
upload, once classified, can be added to the review queue with the answers it got."""
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import common, review_views as rv, views
from survey import cutouts
from galaxy_morph.answers import MODEL_NAMES
from galaxy_morph.imaging import ImageError, decode_image
from galaxy_morph.specs import ALL_SPECS
from labelling.store import StoreError
from torchserve_ops.client import TorchServeError

st.title("Classify a galaxy")

with st.sidebar:
    model_label = st.radio("Model", list(views.MODEL_CHOICES), key="classify_model")
    model, kind = views.MODEL_CHOICES[model_label]
    rule = None
    if kind == "workflow":
        rule = views.rule_header(st.selectbox("Ensemble rule", list(views.RULES), format_func=views.RULES.get,
                                              key="classify_rule"))
    show_cam = st.toggle("Grad-CAM overlay", key="classify_cam",
                         help="Where the model looked for the predicted class (explanations API)")

common.provenance_banner(model if kind == "model" else MODEL_NAMES["b0"], model)

source = st.segmented_control("Images", ["Upload", "Sample gallery", "Sky position"], default="Upload",
                              key="classify_source") or "Upload"
images: list[tuple[str, bytes]] = []
if source == "Upload":
    files = st.file_uploader("JPEG, PNG or g,r,z FITS galaxy cutouts", type=["jpg", "jpeg", "png", "fits", "fit"],
                             accept_multiple_files=True, key="classify_upload")
    images = [(f.name, f.getvalue()) for f in files or []]
elif source == "Sky position":
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    ra_text = c1.text_input("RA (ICRS)", placeholder="185.72875 or 12:22:54.9", key="classify_ra")
    dec_text = c2.text_input("Dec (ICRS)", placeholder="15.82231 or +15:49:20", key="classify_dec")
    as_fits = c3.toggle("FITS", key="classify_fits",
                        help="Fetch the g, r, z FITS cutout; it is rendered with the survey's colours")
    st.caption("Cutouts from the DESI Legacy Imaging Surveys, 256 px at 0.262\"/px, as Galaxy10 DECaLS.")
    if ra_text.strip() and dec_text.strip():
        try:
            with st.spinner("Fetching the cutout..."):
                images = [cutouts.position_cutout(ra_text, dec_text, fits=as_fits)]
        except (ValueError, OSError) as e:
            st.warning(str(e), icon=":material/travel_explore:")
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
    st.info("Upload an image, pick a sample or type a sky position to classify it.")
    common.demo_models_section()
    st.stop()

def similar(result: dict) -> None:
    """The nearest real samples to this galaxy in the models' embedding space, with thumbnails."""
    index = common.similarity_index()
    st.markdown("**Similar galaxies** (nearest real samples in the models' embedding space)")
    if index is None:
        st.caption("No similarity index: `make serve` builds one over the real samples.")
        return
    rows, note = views.similar_galaxies(index, result, k=5)
    if note:
        st.caption(note)
    shown_rows = [r for r in rows if r["path"] and Path(r["path"]).is_file()]
    if shown_rows:
        st.image([r["path"] for r in shown_rows], caption=[r["caption"] for r in shown_rows], width=110)
    elif rows:
        st.dataframe(pd.DataFrame(rows).drop(columns=["path"]), hide_index=True)


queued = st.session_state.setdefault("classify_queued", {})  # upload_key -> candidate id
queue_notes = st.session_state.setdefault("classify_queue_notes", {})  # upload_key -> (kind, text)


def add_to_queue(name: str, data: bytes, result: dict) -> None:
    """The button's callback: the upload and the answers at hand into the label store; the other
    model's answer is asked for (cached) when only one model was."""
    key = rv.upload_key(name, data)

    def ask(other: str) -> dict:
        return common.predict(common.settings()["inference_url"], other, "model", data, None)

    try:
        store = common.label_store(rv.store_location())
        cid, added = rv.queue_upload(store, name, data, result, ask=ask)
        size = rv.progress(store)["queued"]
    except StoreError as e:
        queue_notes[key] = ("error", f"{name} was not queued: {e}")
        return
    except TorchServeError as e:
        queue_notes[key] = ("error", f"{name} was not queued: {common.message(e)}")
        return
    queued[key] = cid
    waiting = f"{size} galax{'y' if size == 1 else 'ies'} waiting for a label"
    queue_notes[key] = ("success", f"Added {name} to the review queue ({waiting})." if added
                        else f"{name} was already in the review queue ({waiting}).")


s = common.settings()
for i, (name, data) in enumerate(images):
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
        warning = views.ood_warning(result)
        if warning:
            st.error(warning, icon=":material/report:")
        st.subheader(result.get("class_name", "?") + (" (?)" if warning else ""))
        st.caption(f"{result.get('model', model)} · version {result.get('version', '?')}"
                   + (f" · rule {result.get('rule', rule)}" if kind == "workflow" else ""))
        c1, c2 = st.columns(2)
        c1.metric("Confidence", f"{float(result.get('confidence', 0)):.1%}")
        meaning = views.confidence_meaning(result)
        if meaning:
            st.caption(meaning)
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
            for key in ALL_SPECS:  # the members a workflow answer can carry
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

        if source == "Upload":
            key = rv.upload_key(name, data)
            done = key in queued
            st.button("In the review queue" if done else "Add to the review queue", key=f"classify_queue_{i}",
                      icon=":material/playlist_add_check:" if done else ":material/playlist_add:",
                      disabled=done, on_click=add_to_queue, args=(name, data, result),
                      help="Store this image with the answers above for labelling on the Review page")
            if note := queue_notes.pop(key, None):
                (st.success if note[0] == "success" else st.error)(note[1])

    similar(result)

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

common.demo_models_section()
