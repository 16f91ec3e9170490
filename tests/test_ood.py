"""The out-of-distribution flag: the cheap checks, the reject head fitted and saved, the handler's
verdict on each answer, the ensemble's rule, and the shipped demo detectors on images that are not
galaxies and on the real samples."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from galaxy_morph.imaging import decode_image
from galaxy_morph.models import class_probabilities, load_checkpoint
from galaxy_morph.ood import OOD_FILE, OODDetector, cheap_check, verdict
from simulation import outliers
from survey.samples import sample_files
from tests.test_handler import make_context

REPO = Path(__file__).resolve().parent.parent


def test_cheap_checks():
    assert cheap_check(np.full((64, 64, 3), 37, np.uint8)).startswith("constant image")
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(100, 30, (128, 128, 3)), 0, 255).astype(np.uint8)
    assert cheap_check(noise).startswith("no source above the sky noise")
    assert cheap_check(torch.from_numpy(noise).permute(2, 0, 1)) == cheap_check(noise)  # the GPU path's tensors
    for path, _ in sample_files():  # every real sample has its galaxy in the centre
        assert cheap_check(decode_image(path.read_bytes())) is None, path.name


def _float_reference(image) -> float:
    """The cheap check's sigmas in torch float32 (avg_pool2d, torch.median), as first written."""
    import torch.nn.functional as F

    g = torch.from_numpy(np.asarray(image, np.float32).mean(2))
    s = F.avg_pool2d(g[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    sky = s.median()
    sigma = 1.4826 * (s - sky).abs().median() + 1e-6
    h, w = s.shape
    return float((s[h // 4: 3 * h // 4, w // 4: 3 * w // 4].max() - sky) / sigma)


def test_cheap_check_exact_integer_arithmetic_matches_the_float_reference():
    """The histogram medians over integer box sums give torch's float32 verdicts and sigmas on the
    real samples, every generated non-galaxy family and photographs (odd sizes included)."""
    from galaxy_morph.ood import SOURCE_SIGMA

    images = [np.asarray(decode_image(p.read_bytes())) for p, _ in sample_files()]
    images += [im for ims in outliers.generated(np.random.default_rng(1), 6).values() for im in ims]
    images += list(outliers.photographs().values())[:10]
    images += [np.random.default_rng(2).integers(0, 256, (97, 131, 3), dtype=np.uint8)]
    checked = 0
    for im in images:
        reason = cheap_check(im)
        if reason and reason.startswith("constant image"):
            continue
        ref = _float_reference(im)
        assert (reason is None) == (ref >= SOURCE_SIGMA)
        if reason:
            assert f"peak {ref:.1f} sigma" in reason or abs(ref - float(reason.split("peak ")[1].split()[0])) <= 0.05
        checked += 1
    assert checked > 150


def test_reject_head_fit_score_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    galaxies = rng.normal(0, 1, (2000, 20))
    junk = rng.normal(0, 1, (400, 20)) + np.r_[4.0, np.zeros(19)]  # off along one direction
    val = rng.normal(0, 1, (500, 20))
    det = OODDetector.fit(galaxies, junk, val, quantile=0.95)
    assert np.mean(det.score(val) <= det.threshold) == pytest.approx(0.95, abs=0.002)
    assert np.mean(det.score(rng.normal(0, 1, (300, 20)) + np.r_[5.0, np.zeros(19)]) > det.threshold) > 0.95
    assert abs(det.weight[0]) > 5 * np.abs(det.weight[1:]).max()  # it found the direction
    det.save(tmp_path)
    again = OODDetector.load(tmp_path)
    assert again.threshold == det.threshold and np.allclose(again.score(val), det.score(val), rtol=1e-4, atol=1e-4)
    assert OODDetector.load(tmp_path / "nothing") is None


def test_verdict():
    det = OODDetector(np.zeros(2), np.ones(2), np.ones(2), 0.0, threshold=2.0, quantile=0.99)
    assert verdict(None, 1.0, det) == {"in_distribution": True, "ood_score": 1.0}
    flagged = verdict(None, 3.0, det)
    assert flagged["in_distribution"] is False and "3.00 > threshold 2.00" in flagged["ood_reason"]
    assert verdict("constant image", None, None)["in_distribution"] is False
    assert verdict(None, None, None) == {"in_distribution": True, "ood_score": None}


def test_handler_scores_the_features_it_classified_with(tmp_path):
    """With an ood.npz the handler's ood_score is the detector's score of the model's own
    penultimate features, and its threshold decides in_distribution."""
    from handlers.galaxy_handler import GalaxyHandler

    d = tmp_path / "b0"
    d.mkdir()
    for f in ("model.pt", "meta.json"):  # the demo B0, whose features are those of a trained model
        shutil.copy2(REPO / "checkpoints" / "demo" / "b0" / f, d / f)
    ckpt = load_checkpoint(d)
    galaxies = [p.read_bytes() for p, _ in sample_files()[::25]]  # real cutouts pass the cheap checks
    x = torch.stack([ckpt.transform(decode_image(b)) for b in galaxies])
    _, feats = class_probabilities(ckpt.model, x, with_features=True)
    f = feats.numpy()
    rng = np.random.default_rng(0)
    det = OODDetector.fit(np.repeat(f, 20, 0) + rng.normal(0, 0.01, (20 * len(f), f.shape[1])),
                          rng.normal(0, 1, (40, f.shape[1])), f, quantile=0.5)
    det.save(d)
    rows = [{"body": b} for b in galaxies]

    def answers():
        h = GalaxyHandler()
        h.initialize(make_context(d, [{}], yaml_config={"handler": {"spec": "b0"}}))
        return [json.loads(o) for o in h.handle(rows, make_context(d, rows))]

    got = answers()
    assert [a["ood_score"] for a in got] == pytest.approx(det.score(f).tolist(), rel=1e-4)
    assert len(set(np.round(det.score(f), 6))) == len(f)
    assert [a["in_distribution"] for a in got] == (det.score(f) <= det.threshold).tolist()
    det.threshold = 1e12
    det.save(d)
    assert all(a["in_distribution"] and "ood_reason" not in a for a in answers())


def demo_verdicts(name: str, images) -> list[dict]:
    from handlers.galaxy_handler import GalaxyHandler
    from PIL import Image
    import io

    d = REPO / "checkpoints" / "demo" / name
    h = GalaxyHandler()
    h.initialize(make_context(d, [{}], name=f"galaxy-{name}", yaml_config={"handler": {"spec": name}}))
    rows = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG")
        rows.append({"body": buf.getvalue()})
    out = []
    for i in range(0, len(rows), 8):
        out += [json.loads(o) for o in h.handle(rows[i:i + 8], make_context(d, rows[i:i + 8], name=f"galaxy-{name}"))]
    return out


@pytest.mark.parametrize("name", ["b0", "b2"])
def test_demo_detectors_flag_non_galaxies_and_pass_real_galaxies(name):
    """The shipped detectors (fitted on synthetic galaxies) on images they never saw: generated
    non-galaxy images of every family and packaged photographs, and the 100 real samples."""
    assert (REPO / "checkpoints" / "demo" / name / OOD_FILE).is_file()
    rng = np.random.default_rng(123)  # other images than training.ood's report
    junk = [im for ims in outliers.generated(rng, 3).values() for im in ims] + list(outliers.photographs().values())
    flagged = [not a["in_distribution"] for a in demo_verdicts(name, junk)]
    assert np.mean(flagged) >= 0.95
    real = [np.asarray(decode_image(p.read_bytes())) for p, _ in sample_files()]
    real_flagged = sum(not a["in_distribution"] for a in demo_verdicts(name, real))
    assert real_flagged <= 10


def test_ensemble_is_out_of_distribution_when_any_member_is():
    from galaxy_morph.answers import ensemble_prediction, prediction
    from galaxy_morph.ensemble import combine
    from galaxy_morph.specs import GALAXY10_CLASSES

    p0, p2 = [0.9] + [0.1 / 9] * 9, [0.8] + [0.2 / 9] * 9
    ok = {"in_distribution": True, "ood_score": 0.8}
    far = {"in_distribution": False, "ood_score": 40.0, "ood_reason": "unlike the galaxies"}
    for v0, v2, expected in ((ok, ok, True), (ok, far, False), (far, far, False)):
        members = {"b0": prediction("W__b0", "1.0", p0, GALAXY10_CLASSES, True, v0),
                   "b2": prediction("W__b2", "1.0", p2, GALAXY10_CLASSES, True, v2)}
        answer = ensemble_prediction("galaxy-ensemble", combine("seed", p0, p2), GALAXY10_CLASSES, members)
        assert answer["in_distribution"] is expected and answer["calibrated"] is True
        assert answer["ood_score"] == max(v0["ood_score"], v2["ood_score"])
        assert ("ood_reason" in answer) is (not expected)
    assert "b2: unlike the galaxies" in answer["ood_reason"]
