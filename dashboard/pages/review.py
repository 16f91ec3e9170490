"""Review page: label the galaxies the models are least sure of (labelling.queue), one click or key
each: 0-9 the class, s skip, u undo, n not a galaxy."""
import pandas as pd
import streamlit as st

from dashboard import common, review_views as rv
from galaxy_morph.imaging import ImageError, decode_image
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.queue import SCORE_NAMES
from labelling.store import StoreError

st.title("Review")

try:
    store = common.label_store(rv.store_location())
except StoreError as e:
    st.error(str(e), icon=":material/error:")
    st.stop()

with st.sidebar:
    labeller = st.text_input("Your name", key="labeller", help="Every label records who gave it",
                             value=st.session_state.get("labeller", rv.proxy_user(st.context.headers)))
    score = st.selectbox("Queue order", SCORE_NAMES, key="review_score",
                         help="entropy / margin of the ensemble, B0-B2 disagreement, BALD over MC-dropout "
                              "passes, or random (the baseline)")
    unsure = st.toggle("Unsure", key="review_unsure", help="Mark the next label as a guess")
    show_cam = st.toggle("Show Grad-CAM", value=True, key="review_cam",
                         help="Where each served model looked for the class of its answer (explanations API)")

done = rv.progress(store)
c1, c2 = st.columns(2)
c1.metric("Labelled", done["labelled"])
c2.metric("Queued", done["queued"])
skipped = st.session_state.setdefault("review_skipped", set())

if not labeller.strip():
    st.info("Type your name in the sidebar to start labelling.")
    st.stop()

found = rv.next_candidate(store, score, skipped)


def act(key: str, candidate_id: int | None) -> None:
    if key == "s":
        skipped.add(candidate_id)
    elif key == "u":
        undone = store.undo_last(labeller.strip())
        st.session_state["review_note"] = (f"Undid the label of galaxy {undone['candidate_id']}" if undone
                                           else "Nothing to undo")
        skipped.discard(undone["candidate_id"] if undone else None)
    else:
        stored = rv.record(store, candidate_id, labeller.strip(), key, unsure)
        st.session_state["review_note"] = f"Galaxy {candidate_id}: {stored.get('class', 'not a galaxy')}"


if note := st.session_state.pop("review_note", None):
    st.toast(note)

if found is None:
    st.success("Nothing left to label in this queue.")
    st.button("Undo (u)", on_click=act, args=("u", None), shortcut="u", key="undo_only")
else:
    cid, value = found
    cand = store.candidate(cid)
    answers = rv.model_answers(store, cid)
    left, right = st.columns([1, 2], gap="large")
    try:
        shown = decode_image(cand["image"])
        left.image(shown, caption=f"{cand['item_key']} ({cand['source']})", width="stretch")
    except (ImageError, TypeError) as e:
        shown = None
        left.warning(f"cannot show this image: {e}")
    with right:
        st.caption(f"galaxy {cid} · {score} {value:.3f}")
        st.dataframe(pd.DataFrame(answers), hide_index=True,
                     column_config={"confidence": st.column_config.ProgressColumn(
                         "confidence", min_value=0.0, max_value=1.0, format="percent")})
        cols = st.columns(2)
        for k, name in enumerate(GALAXY10_CLASSES):
            cols[k // 5].button(f"{k} {name}", key=f"label_{k}", on_click=act, args=(str(k), cid),
                               shortcut=str(k), width="stretch")
        a, b, c = st.columns(3)
        a.button("Skip (s)", on_click=act, args=("s", cid), shortcut="s", key="skip", width="stretch")
        b.button("Undo (u)", on_click=act, args=("u", cid), shortcut="u", key="undo", width="stretch")
        c.button("Not a galaxy (n)", on_click=act, args=("n", cid), shortcut="n", key="not_galaxy",
                 width="stretch")
    if show_cam and shown is not None:  # after the buttons, so that they show while it computes
        url = common.settings()["inference_url"]
        with left:
            panels = rv.gradcam_panels(lambda m, data, target: common.explain(url, m, data, target),
                                       shown, cand["image"], answers)
            for col, panel in zip(st.columns(len(panels)), panels):
                if panel["image"] is None:
                    col.caption(panel["caption"])
                else:
                    col.image(panel["image"], caption=panel["caption"], width="stretch")

agree = rv.agreement_frame(store)
if len(agree):
    st.subheader("Models against your labels")
    st.line_chart(agree, x="labels", y=[c for c in agree.columns if c != "labels"], height=260,
                  x_label="labels given", y_label="share agreed")
