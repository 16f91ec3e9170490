"""Ensemble rules on hand-computed cases."""
import pytest

from galaxy_morph.ensemble import RULES, combine, mean, seed, weighted

P0 = [0.7, 0.2, 0.1]
P2_AGREE = [0.5, 0.3, 0.2]
P2_DISAGREE = [0.1, 0.3, 0.6]


def test_seed_agree():
    r = seed(P0, P2_AGREE)
    assert (r["label"], r["source"], r["rule"]) == (0, "both", "seed")
    assert r["confidence"] == pytest.approx(0.6)
    assert r["probabilities"] == pytest.approx([0.6, 0.25, 0.15])


def test_seed_disagree_answers_b0():
    r = seed(P0, P2_DISAGREE)
    assert (r["label"], r["source"]) == (0, "b0")
    assert r["confidence"] == pytest.approx(0.7)
    assert r["probabilities"] == pytest.approx(P0)


def test_mean():
    r = mean(P0, P2_DISAGREE)
    assert r["probabilities"] == pytest.approx([0.4, 0.25, 0.35])
    assert (r["label"], r["source"]) == (0, "b0") and r["confidence"] == pytest.approx(0.4)
    r = mean([0.45, 0.1, 0.45], [0.1, 0.45, 0.45])  # neither model's top class (ties go to the first)
    assert r["label"] == 2 and r["source"] == "neither"
    r = mean([0.4, 0.6], [0.1, 0.9])
    assert (r["label"], r["source"], r["confidence"]) == (1, "both", pytest.approx(0.75))


def test_weighted():
    # class 0: (0.9*0.7 + 0.1*0.1)/1.0 = 0.64; class 1: (0.5*0.2 + 0.5*0.3)/1 = 0.25;
    # class 2: (0.2*0.1 + 0.6*0.6)/0.8 = 0.475; sum 1.365
    r = weighted(P0, P2_DISAGREE, [0.9, 0.5, 0.2], [0.1, 0.5, 0.6])
    assert r["probabilities"] == pytest.approx([0.64 / 1.365, 0.25 / 1.365, 0.475 / 1.365])
    assert (r["label"], r["source"], r["rule"]) == (0, "b0", "weighted")
    # B2 much better on class 2 tips the answer to B2's label.
    r = weighted(P0, P2_DISAGREE, [0.1, 0.5, 0.1], [0.9, 0.5, 0.9])
    assert (r["label"], r["source"]) == (2, "b2")


def test_weighted_zero_f1_falls_back_to_equal_weights():
    r = weighted(P0, P2_DISAGREE, [0, 0, 0], [0, 0, 0])
    assert r["probabilities"] == pytest.approx(mean(P0, P2_DISAGREE)["probabilities"])


def test_combine_dispatch_and_errors():
    assert RULES == ("seed", "mean", "weighted")
    assert combine("seed", P0, P2_AGREE) == seed(P0, P2_AGREE)
    assert combine("mean", P0, P2_AGREE) == mean(P0, P2_AGREE)
    with pytest.raises(ValueError, match="validation F1"):
        combine("weighted", P0, P2_AGREE)
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine("vote", P0, P2_AGREE)
    with pytest.raises(ValueError):
        seed([[0.5, 0.5]], P0)
    with pytest.raises(ValueError, match="one value per class"):
        weighted(P0, P2_AGREE, [1, 1], [1, 1, 1])


def test_confidence_is_probability_at_label():
    for rule in RULES:
        r = combine(rule, P0, P2_DISAGREE, [0.3, 0.6, 0.9], [0.9, 0.2, 0.4])
        assert r["confidence"] == pytest.approx(r["probabilities"][r["label"]])
        assert sum(r["probabilities"]) == pytest.approx(1.0)
