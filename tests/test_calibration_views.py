"""What the dashboard says of a calibrated answer, from the answer itself and the model card."""
import json
from pathlib import Path

from dashboard import card_views, views

DEMO = Path(__file__).resolve().parent.parent / "checkpoints" / "demo"


def test_confidence_meaning_names_where_the_temperature_was_fitted():
    real = {"confidence": 0.7, "calibration": {"on": "real", "n": 100, "temperature": 1.6}}
    assert views.confidence_meaning(real) == ("Of answers given at about 70% confidence, about 70% were right "
                                              "on the 100 real Galaxy10 DECaLS galaxies the temperature was fitted on.")
    synthetic = {"confidence": 0.9, "calibration": {"on": "synthetic", "n": 3004, "temperature": 0.8}}
    assert "over-confident" in views.confidence_meaning(synthetic)
    members = {"confidence": 0.6, "calibration": {"on": "members", "members": ["real"]}}
    assert views.confidence_meaning(members) == "Combined from models calibrated on real galaxies."
    assert views.confidence_meaning({"confidence": 0.6, "calibration": None}) is None


def test_model_card_shows_the_real_fit_beside_the_validation_one():
    fits = json.loads((DEMO / "b0" / "calibration.json").read_text())
    info = card_views.card_summary({"calibrated": True, "calibration": fits["plain"],
                                 "calibration_served": fits["served"]["plain"]})
    synthetic = card_views.reliability_frame(info["calibration"])
    real = card_views.served_reliability_frame(info["calibration_served"])
    assert real["count"].sum() == 100 and synthetic["count"].sum() == 2 * fits["plain"]["fitted_on"]["n"]
    assert real["when"].str.contains("real galaxies, T = 1.64, cross-validated").all()
    assert set(real.columns) == set(synthetic.columns)
