"""Galaxy morphology core: every fact that training, the handlers and the dashboard share, and the
one answer path (`from galaxy_morph import Predictor`: galaxy_morph/predictor.py).

Nothing here imports TorchServe (`ts`) or Streamlit; everything else imports from here.
"""
from galaxy_morph.specs import GALAXY10_CLASSES, SPECS, ModelSpec, get_spec

__all__ = ["GALAXY10_CLASSES", "SPECS", "ModelSpec", "get_spec", "Predictor"]


def __getattr__(name):  # Predictor loads torch: only when asked for, so HTTP-only users stay light
    if name == "Predictor":
        from galaxy_morph.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'galaxy_morph' has no attribute {name!r}")
