"""Galaxy10 DECaLS dashboard over TorchServe: classify, batch, server, metrics, model cards.

Run from the repository root, with TorchServe up (`make serve`):

    streamlit run dashboard/app.py          # or: make dashboard  (127.0.0.1:8501, background)

The server is found through TS_HOST, TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT and
TS_KEY_FILE (defaults 127.0.0.1, 8080, 8081, 8082, ./key_file.json).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import common  # noqa: E402
from torchserve_ops.client import TorchServeError  # noqa: E402

st.set_page_config(page_title="Galaxy morphology", page_icon=":material/blur_on:", layout="wide")

pages = [
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:", default=True),
    st.Page("pages/batch.py", title="Batch", icon=":material/photo_library:"),
    st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("pages/server.py", title="Server", icon=":material/dns:"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:"),
]
page = st.navigation(pages)

with st.sidebar:
    s = common.settings()
    try:
        status = common.health(s["inference_url"]).get("status", "unknown")
        st.caption(f":material/circle: TorchServe **{status}** at {s['inference_url']}")
    except TorchServeError:  # each page explains the problem in full
        st.caption(f":red[:material/error: TorchServe unreachable] at {s['inference_url']}")

page.run()
