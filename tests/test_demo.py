"""The shipped demo models: fp16 on disk, fp32 when loaded, and the figures their report claims."""
import json
from pathlib import Path

import pytest
import torch

from galaxy_morph.data import SYNTHETIC_SOURCE
from galaxy_morph.models import build_model, load_checkpoint, save_checkpoint
from galaxy_morph.specs import GALAXY10_CLASSES, get_spec
from training import demo
from training import evaluate as ev

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"


def test_ship_writes_fp16_that_loads_back_as_fp32(tmp_path):
    run = tmp_path / "run"
    originals = {}
    for i, name in enumerate(("b0", "b2")):
        torch.manual_seed(i)
        model = build_model(name)
        save_checkpoint(run / name, model, get_spec(name), GALAXY10_CLASSES, version="1.0",
                        data={"path": "somewhere.h5", "sha256": "0" * 64, "n": 10})
        originals[name] = {k: v.clone() for k, v in model.state_dict().items()}
    (run / "report.json").write_text(json.dumps({"accuracy": {"b0": 0.9}}))
    (run / "report.md").write_text("# report\n")
    dest = tmp_path / "shipped"
    (dest / "stale").mkdir(parents=True)  # whatever was shipped before is replaced whole

    demo.ship(run, dest)

    assert not (dest / "stale").exists() and (dest / "report.md").read_text() == "# report\n"
    for name in ("b0", "b2"):
        on_disk = torch.load(dest / name / "model.pt", weights_only=True)
        assert {v.dtype for v in on_disk.values() if v.is_floating_point()} == {torch.float16}
        ckpt = load_checkpoint(dest / name)
        model, meta = ckpt.model, ckpt.meta
        assert meta["data"]["source"] == SYNTHETIC_SOURCE
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                assert v.dtype == torch.float32
                assert torch.allclose(v, originals[name][k], rtol=1e-3, atol=1e-4), k
        assert (dest / name / "model.pt").stat().st_size < (run / name / "model.pt").stat().st_size * 0.6


def test_unknown_demo_model_is_refused(capsys):
    assert demo.main(["--models", "b7", "--no-eval"]) == 2
    assert "unknown demo model(s) b7" in capsys.readouterr().err
    assert demo.main(["--ship", "somewhere", "--no-eval"]) == 2
    assert "--ship needs the evaluation" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED / "report.json").is_file(), reason="no shipped demo models")
def test_shipped_demo_models_score_what_their_report_says():
    top = json.loads((SHIPPED / "report.json").read_text())
    acc = top["accuracy"]
    assert acc["b0"] >= 0.92 and acc["b2"] >= 0.90  # synthetic test split
    assert min(acc["ensemble_mean"], acc["ensemble_weighted"]) >= max(acc["b0"], acc["b2"])
    images, y = ev.load_samples(ev.SAMPLES)
    assert len(y) == top["real_samples_accuracy"]["n"] == 100
    for name in ("b0", "b2"):
        ckpt = load_checkpoint(SHIPPED / name)
        model, meta = ckpt.model, ckpt.meta
        assert meta["data"]["source"] == SYNTHETIC_SOURCE
        tf = ckpt.transform
        x = torch.stack([tf(im) for im in images])
        pred = ev.log_probs(model, x.split(50), torch.device("cpu")).argmax(1)
        # the report was computed on the GPU from the fp32 weights; fp16 storage may move a borderline image
        assert abs(float((pred == y).mean()) - top["real_samples_accuracy"][name]) <= 0.02
        # the per-class table and the confusion matrix say the same as the headline figure
        per_class, cm = top["real_samples"]["per_class"][name], top["real_samples"]["confusion"][name]
        assert sum(per_class) / 10 == pytest.approx(top["real_samples_accuracy"][name])
        assert sum(cm[k][k] for k in range(10)) == round(100 * top["real_samples_accuracy"][name])
