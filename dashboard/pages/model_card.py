"""Model card page: what the server really runs, from the describe API (?customized=true)."""
import os
from contextlib import contextmanager
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import card_views, common, views
from torchserve_ops.versions import Management, VersionError, version_key

st.title("Model card")
s = common.settings()
STORE = Path(os.environ.get("TS_MODEL_STORE") or views.MODEL_STORE)  # where promote rebuilds the ensemble


@contextmanager
def version_errors():
    try:
        yield
    except VersionError as e:
        common.descriptions.clear()
        st.error(str(e), icon=":material/error:")
        st.stop()


if flash := st.session_state.pop("card_flash", None):
    st.success(flash, icon=":material/check_circle:")

with common.guard():
    descs, defaults = common.descriptions(s["management_url"])
if not descs:
    st.info("No models registered.")
    st.stop()

models = sorted(descs, key=lambda m: (not m.startswith("galaxy-"), m))
c1, c2 = st.columns(2)
model = c1.selectbox("Model", models, key="card_model")
versions = [d.get("modelVersion") for d in descs[model]]
version = c2.selectbox("Version", versions, key="card_version",
                       index=versions.index(defaults[model]) if defaults.get(model) in versions else 0)

with common.guard():
    card = card_views.card_of(common.card(s["management_url"], model, version))
if not card:
    st.info(f"{model} {version} returns no model card from its handler.")
    st.stop()

st.info(card_views.provenance_text(card_views.provenance(card)), icon=":material/science:")
info = card_views.card_summary(card)
acc, macro, date, data = info["accuracy"], info["macro_f1"], info["trained_at"], info["data"]
a, b, c, d = st.columns(4)
a.metric("Version", str(version) + (" (default)" if version == defaults.get(model) else ""))
b.metric(f"{info['accuracy_kind'].capitalize()} accuracy",
         f"{acc:.1%}" if isinstance(acc, (int, float)) else "n/a")
c.metric("Macro F1", f"{macro:.3f}" if isinstance(macro, (int, float)) else "n/a",
         help={"report": "from the evaluation report (test split)",
               "mean of the per-class F1": "mean of the per-class F1 below (test split)"}.get(
             info["macro_f1_source"], "no test evaluation in this model card"))
d.metric("Trained", str(date)[:10] if date else "n/a", help=str(date) if date else None)
if info["note"]:
    st.caption(info["note"])

held = card_views.held_out_frame(card)
if held is not None:
    h = card["held_out_labels"]
    st.subheader("Before and after retraining, on the same held-out labels")
    st.caption(f"{h.get('n')} galaxies labelled in {h.get('labels')} that neither version trained on "
               f"(training.retrain; one galaxy is {1 / max(1, h.get('n') or 1):.0%} of the accuracy).")
    st.dataframe(held, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                       for c in held.columns[1:]})

if len(versions) > 1:
    st.subheader("Versions side by side")
    cards = {}
    for v in versions:
        with common.guard(stop=False):
            cards[v] = card_views.card_of(common.card(s["management_url"], model, v))
    st.dataframe(card_views.versions_frame(cards, defaults.get(model)), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("accuracy", "macro F1")})
    if version != defaults.get(model):
        pending = st.session_state.get("promote_pending")
        if pending != version:
            if st.button(f"Make {version} the default...", key="promote_ask"):
                st.session_state["promote_pending"] = version
                st.rerun()
        else:
            st.warning(f"Make **{version}** the default of every model that has it, and rebuild the ensemble "
                       f"over it? Requests without a version are answered by {version} from now on; "
                       "`scripts/versions.sh rollback --all` (or the button that then shows here) goes back.",
                       icon=":material/warning:")
            yes, no = st.columns(2)
            if yes.button(f"Yes, promote {version}", type="primary", key="promote_yes"):
                st.session_state.pop("promote_pending", None)
                with st.spinner(f"Promoting {version}..."), common.guard(), version_errors():
                    done = Management(client=common.client()).promote(version, STORE, include=(model,))
                st.session_state["card_flash"] = f"{', '.join(done)}: default is now {version}"
                common.descriptions.clear()
                common.card.clear()
                st.rerun()
            if no.button("Cancel", key="promote_no"):
                st.session_state.pop("promote_pending", None)
                st.rerun()
    elif any(version_key(v) < version_key(version) for v in versions):
        if st.button(f"Roll back from {version}", key="rollback_go",
                     help="Every model of the ensemble back to its previous version, and the ensemble with them"):
            with st.spinner("Rolling back..."), common.guard(), version_errors():
                done = Management(client=common.client()).rollback_all(STORE, include=(model,))
            st.session_state["card_flash"] = ", ".join(f"{m}: default is now {v}" for m, v in done.items())
            common.descriptions.clear()
            common.card.clear()
            st.rerun()

st.subheader("Training data")
if isinstance(data, dict) and data:
    st.dataframe(pd.DataFrame([{"field": k, "value": str(v)} for k, v in data.items()]),
                 hide_index=True)
else:
    st.write(data or "not recorded")

if info["per_class"]:
    st.subheader("Per-class scores (test)")
    st.dataframe(card_views.per_class_table(info["per_class"]), hide_index=True,
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("precision", "recall", "f1")})

if info["confusion_matrix"] is not None:
    st.subheader("Confusion matrix (rows: true, columns: predicted)")
    names = list(info["class_names"])
    frame = card_views.confusion_frame(info["confusion_matrix"], names)
    base = alt.Chart(frame).encode(x=alt.X("predicted:N", sort=names), y=alt.Y("true:N", sort=names))
    chart = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")),
                                    tooltip=["true", "predicted", "count"])
    text = base.mark_text(fontSize=10).encode(text="count:Q")
    st.altair_chart(chart + text, width="stretch")

cal, served = info["calibration"], info["calibration_served"]
st.subheader("Calibration")


def reliability_chart(rel, title):
    diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    points = alt.Chart(rel).mark_line(point=True).encode(
        x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="mean confidence in the bin"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy in the bin"),
        color=alt.Color("when:N", title=title), tooltip=["when", "confidence", "accuracy", "count"])
    st.altair_chart(diagonal + points, width="stretch")


if cal or served:
    used = served or cal
    st.caption(f"Answers are temperature-scaled: softmax(log p / T) with T = {used['temperature']:.3f}, fitted on "
               + (f"{served['n']} {served.get('on', 'real')} galaxies" if served else
                  f"{cal['fitted_on']['n']} validation images")
               + ". A calibrated model's points lie on the diagonal: of the answers given with confidence p, "
                 "a fraction p is right.")
    left, right = st.columns(2) if (cal and served) else (st.container(), None)
    if cal:
        with left:
            st.caption("On the training data's validation split")
            reliability_chart(card_views.reliability_frame(cal), "temperature scaling")
    if served:
        with right or left:
            st.caption(f"On {served['n']} {served.get('on', 'real')} galaxies (the fit served now)")
            reliability_chart(card_views.served_reliability_frame(served), "fit")
else:
    st.caption("Not calibrated: this archive's checkpoint has no calibration.json "
               "(python -m training.calibrate, or make evaluate), so it answers with T = 1.")

if info["ensemble"]:
    st.subheader("B0, B2 and the ensemble rules (evaluation report)")
    st.dataframe(card_views.comparison_table(info["ensemble"]), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in card_views.comparison_table(info["ensemble"]).columns[2:]})

with st.expander("Full model card (JSON)"):
    st.json(card)

common.demo_models_section()
