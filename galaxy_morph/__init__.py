"""Galaxy morphology core: every fact that training, the handlers and the dashboard share.

Nothing here imports TorchServe (`ts`) or Streamlit; everything else imports from here.
"""
from galaxy_morph.specs import GALAXY10_CLASSES, SPECS, ModelSpec, get_spec

__all__ = ["GALAXY10_CLASSES", "SPECS", "ModelSpec", "get_spec"]
