"""training.evaluate: report contents for b0, b2 and the ensemble rules; metric helpers; bad input."""
import json
import shutil

import numpy as np
import pytest
import torch

from galaxy_morph import GALAXY10_CLASSES
from galaxy_morph.calibration import fit_temperature, softmax
from galaxy_morph.data import file_sha256, inspect_h5, make_split, save_split
from galaxy_morph.models import build_model, dihedral, save_checkpoint
from tests.conftest import small_spec
from tests.test_data import make_h5
from training import evaluate as ev


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with random-init b0 and b2 checkpoints (at the test sizes) on a tiny file, as
    training writes them."""
    root = tmp_path_factory.mktemp("eval")
    data = make_h5(root / "tiny.h5", n=40, size=64)
    info, sha = inspect_h5(data), file_sha256(data)
    split = make_split(info["labels"], info["ra"], info["dec"], seed=42)
    torch.manual_seed(0)
    for name in ("b0", "b2"):
        spec = small_spec(name)
        out = root / "run" / name
        save_checkpoint(out, build_model(spec), spec, GALAXY10_CLASSES, version="1.0",
                        data={"path": str(data), "sha256": sha, "n": 40}, split_file="split.json",
                        hparams={}, metrics={}, epoch=1)
        save_split(out / "split.json", split, data_sha256=sha)
        (out / "history.json").write_text(json.dumps([
            {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "val_loss": 2.2 / e, "val_acc": 0.15 * e}
            for e in (1, 2, 3)]))
    ev.evaluate(root / "run", samples=str(ev.SAMPLES), device="cpu")
    return root / "run"


def test_model_reports(run_dir):
    for name in ("b0", "b2"):
        r = json.loads((run_dir / name / "report.json").read_text())
        assert 0 <= r["accuracy"] <= 1 and r["n_test"] == 10
        assert list(r["per_class"]) == list(GALAXY10_CLASSES)
        assert set(r["per_class"]["Merging"]) == {"precision", "recall", "f1", "support"}
        assert sum(v["support"] for v in r["per_class"].values()) == 10
        assert set(r["macro"]) == {"precision", "recall", "f1"}
        assert np.array(r["confusion_matrix"]).shape == (10, 10) and np.sum(r["confusion_matrix"]) == 10
        assert len(r["val_per_class_f1"]) == 10 and r["temperature"] > 0
        assert set(r["ece"]) == {"uncalibrated", "calibrated"}
        cal = json.loads((run_dir / name / "calibration.json").read_text())["plain"]
        assert cal["temperature"] == pytest.approx(r["temperature"]) and cal["fitted_on"]["split"] == "val"
        assert sum(cal["reliability_before"]["count"]) == sum(cal["reliability_after"]["count"]) == r["n_val"]
        assert set(r["ensemble"]) == {"seed", "mean", "weighted"}
        assert set(r["ensemble"]["weighted"]) == {"accuracy", "macro_f1", "nll"}
        assert 0 <= r["real_samples_accuracy"] <= 1
        for png in ("confusion.png", "curves.png"):
            assert (run_dir / name / png).read_bytes()[:4] == b"\x89PNG"


def test_top_report(run_dir):
    top = json.loads((run_dir / "report.json").read_text())
    assert set(top["models"]) == {"b0", "b2"} and set(top["ensemble"]) == {"seed", "mean", "weighted"}
    assert set(top["accuracy"]) == {"b0", "b2", "ensemble_seed", "ensemble_mean", "ensemble_weighted"}
    assert set(top["real_samples_accuracy"]) == {"b0", "b2", "ensemble", "ensemble_rule", "n"}
    assert top["real_samples_accuracy"]["n"] == 100
    md = (run_dir / "report.md").read_text()
    for text in ("| b0 |", "| b2 |", "ensemble `weighted`", "Edge-on with Bulge", "Real Galaxy10", "b0/confusion.png"):
        assert text in md
    assert (run_dir / "confusion_ensemble.png").is_file()


def test_default_rule_is_chosen_by_validation_nll(run_dir):
    """RUN/ensemble.json: every rule's validation figures, recomputed here from the calibrated members'
    validation probabilities; the default is the lowest NLL; the Predictor answers with it."""
    from galaxy_morph import Predictor
    from galaxy_morph.calibration import nll
    from galaxy_morph.data import load_split

    settings = json.loads((run_dir / "ensemble.json").read_text())
    top = json.loads((run_dir / "report.json").read_text())
    assert top["ensemble_settings"] == settings and settings["rule_models"] == ["b0", "b2"]
    val = settings["validation"]
    assert set(val) == {"seed", "mean", "weighted"} and settings["chosen_on"]["split"] == "val"
    assert settings["default_rule"] == min(val, key=lambda r: (round(val[r]["nll"], 6), -val[r]["accuracy"]))
    assert settings["chosen_by"] == val
    assert f"Ensemble default rule: `{settings['default_rule']}`" in (run_dir / "report.md").read_text()
    # the mean rule's validation NLL from scratch
    probs, y = {}, None
    for m in ("b0", "b2"):
        ckpt_meta = json.loads((run_dir / m / "meta.json").read_text())
        split, _ = load_split(run_dir / m / "split.json")
        t = json.loads((run_dir / m / "report.json").read_text())["temperature"]
        from galaxy_morph.models import load_checkpoint
        ckpt = load_checkpoint(run_dir / m)
        logp, y = ev.predict_split(ckpt.model, ckpt.spec, ckpt_meta["data"]["path"], split["val"],
                                   torch.device("cpu"), False, 64, 0)
        probs[m] = softmax(logp, t)
    assert nll((probs["b0"] + probs["b2"]) / 2, y) == pytest.approx(val["mean"]["nll"], rel=1e-6)
    assert Predictor.from_run(run_dir, device="cpu").rule == settings["default_rule"]


def test_single_model_and_tta(run_dir, tmp_path):
    one = tmp_path / "b0only"
    shutil.copytree(run_dir / "b0", one / "b0")
    top = ev.evaluate(one, tta=True, samples="", device="cpu")
    assert set(top["models"]) == {"b0"} and top["ensemble"] == {} and "real_samples_accuracy" not in top
    assert top["tta"] is True and (one / "report.md").is_file()


def test_wrong_data_file_refused(run_dir, tmp_path, capsys):
    other = make_h5(tmp_path / "other.h5", n=40, size=64, seed=9)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = sorted(p.name for p in run.rglob("*"))
    assert ev.main(["--run", str(run), "--data", str(other)]) == 2
    assert "is not the file b0 was trained on" in capsys.readouterr().err
    assert ev.main(["--run", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in run.rglob("*")) == before


def test_dihedral_views():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = list(dihedral(x))
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({tuple(v[0, 0].flatten().tolist()) for v in views}) == 8  # all different


def test_ece_and_temperature():
    y = np.array([0, 1, 0, 1])
    perfect = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert ev.ece(perfect, y) == pytest.approx(0)
    half = np.full((4, 2), 0.5) + np.array([1e-6, 0])
    assert ev.ece(half, y) == pytest.approx(0, abs=1e-5)  # 50 % confident, 50 % right
    wrong = np.array([[0.9, 0.1]] * 4)
    assert ev.ece(wrong, y) == pytest.approx(0.4)  # 90 % confident, 50 % right
    # Over-confident logits: the fitted temperature is above 1 and lowers the NLL.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3))
    logits[np.arange(500), y] += 1.0
    t = fit_temperature(logits * 5, y)
    assert 3 < t < 8
    assert softmax(np.array([[0.0, np.log(3)]])) == pytest.approx(np.array([[0.25, 0.75]]))


def test_scores_hand_computed():
    s = ev.scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert s["accuracy"] == 0.5
    assert s["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert s["per_class"]["b"]["precision"] == pytest.approx(1 / 3) and s["per_class"]["b"]["recall"] == 1.0
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_demo_tiny(tmp_path, monkeypatch, capsys):
    """training.demo end to end with a tiny schedule: trains both, evaluates, skips when done, fails loudly."""
    from training import demo
    data = make_h5(tmp_path / "tiny.h5", n=40, size=64)
    monkeypatch.setattr(demo, "DEMO", {m: {"epochs": 1, "limit_train": 16, "batch_size": 16, "lr": 1e-3,
                                           "input_size": small_spec(m).crop} for m in ("b0", "b2")})
    monkeypatch.setattr(demo, "MIN_B0_ACCURACY", 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else demo sets it for the rest of the session
    out = tmp_path / "demo"
    samples = tmp_path / "samples"  # one real sample per class: the tables, not the figures, are tested
    samples.mkdir()
    for k in range(10):
        shutil.copy2(ev.SAMPLES / f"class_{k}_0.jpg", samples)
    assert demo.main(["--data", str(data), "--out", str(out), "--samples", str(samples)]) == 0
    top = json.loads((out / "report.json").read_text())
    assert set(top["real_samples_accuracy"]) == {"b0", "b2", "ensemble", "ensemble_rule", "n"}
    assert top["real_samples_accuracy"]["n"] == top["real_samples_tta"]["n"] == 10
    assert top["real_samples_tta"]["tta"] is True and top["real_samples"]["tta"] is False
    for table in (top["real_samples"], top["real_samples_tta"]):
        assert set(table["accuracy"]) == {"b0", "b2", "ensemble", "ensemble_seed", "ensemble_mean", "ensemble_weighted"}
        assert table["rule"] == json.loads((out / "ensemble.json").read_text())["default_rule"]
        for name, cm in table["confusion"].items():
            assert sum(map(sum, cm)) == 10 and sum(cm[k][k] for k in range(10)) == round(10 * table["accuracy"][name])
    for m in ("b0", "b2"):
        r = json.loads((out / m / "report.json").read_text())
        assert "accuracy" in r and "per_class" in r and "real_samples_accuracy" in r
    assert (out / "b0" / "split.json").read_text() == (out / "b2" / "split.json").read_text()
    mtime = (out / "b0" / "model.pt").stat().st_mtime
    monkeypatch.setattr(demo, "MIN_B0_ACCURACY", 1.01)  # second run: no training, and below the bar
    assert demo.main(["--data", str(data), "--out", str(out), "--samples", str(samples)]) == 1
    assert (out / "b0" / "model.pt").stat().st_mtime == mtime
    assert "FAILED: b0 reached" in capsys.readouterr().err


def test_three_models_mean_and_weighted_only(run_dir, tmp_path, capsys):
    """A third spec joins the ensemble: mean and weighted over all three; seed (two models) left out."""
    run = tmp_path / "run3"
    shutil.copytree(run_dir, run)
    meta = json.loads((run / "b0" / "meta.json").read_text())
    spec = small_spec("convnext")
    torch.manual_seed(2)
    save_checkpoint(run / "convnext", build_model(spec), spec, GALAXY10_CLASSES, version="1.0",
                    data=meta["data"], split_file="split.json", hparams={}, metrics={}, epoch=1)
    shutil.copy(run / "b0" / "split.json", run / "convnext" / "split.json")
    top = ev.evaluate(run, samples="", device="cpu")
    assert list(top["models"]) == ["b0", "b2", "convnext"]
    assert set(top["ensemble"]) == {"mean", "weighted"}
    assert top["ensemble"]["mean"]["models"] == ["b0", "b2", "convnext"]
    assert set(top["accuracy"]) == {"b0", "b2", "convnext", "ensemble_mean", "ensemble_weighted"}
    assert (run / "confusion_ensemble.png").read_bytes()[:4] == b"\x89PNG"
    # --models picks a pair, and the pair gets the seed rule back.
    assert ev.main(["--run", str(run), "--models", "b0,convnext", "--samples", "", "--device", "cpu"]) == 0
    pair = json.loads((run / "report.json").read_text())
    assert list(pair["models"]) == ["b0", "convnext"] and set(pair["ensemble"]) == {"seed", "mean", "weighted"}
    assert ev.main(["--run", str(run), "--models", "b0,vit", "--device", "cpu"]) == 2
    assert "unknown model 'vit'" in capsys.readouterr().err
