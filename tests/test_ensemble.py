"""Ensemble rules on hand-computed cases."""
import pytest

from galaxy_morph.ensemble import RULES, combine, mean_rule, seed_rule, weighted_rule


def seed(p_b0, p_b2):
    return seed_rule({"b0": p_b0, "b2": p_b2})


def mean(p_b0, p_b2):
    return mean_rule({"b0": p_b0, "b2": p_b2})


def weighted(p_b0, p_b2, f1_b0, f1_b2):
    return weighted_rule({"b0": p_b0, "b2": p_b2}, {"b0": f1_b0, "b2": f1_b2})

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


P3 = [0.2, 0.2, 0.6]


def test_rules_over_three_models():
    from galaxy_morph.ensemble import combine_models

    probs = {"b0": P0, "b2": P2_DISAGREE, "convnext": P3}
    r = combine_models("mean", probs)
    assert r["probabilities"] == pytest.approx([1.0 / 3, 0.7 / 3, 1.3 / 3])
    assert (r["label"], r["source"], r["rule"]) == (2, "b2+convnext", "mean")
    # weighted: class 0 (0.9*0.7 + 0.1*0.1 + 0*0.2)/1.0 = 0.64; class 1 equal weights (no F1): 0.7/3;
    # class 2 (0.1*0.1 + 0.5*0.6 + 0.5*0.6)/1.1 = 0.61/1.1
    f1 = {"b0": [0.9, 0, 0.1], "b2": [0.1, 0, 0.5], "convnext": [0.0, 0, 0.5]}
    r = combine_models("weighted", probs, f1)
    raw = [0.64, 0.7 / 3, 0.61 / 1.1]
    assert r["probabilities"] == pytest.approx([v / sum(raw) for v in raw])
    assert (r["label"], r["source"]) == (0, "b0")
    agree = combine_models("mean", {"a": P0, "b": P0, "c": P2_AGREE})
    assert agree["source"] == "all"


def test_seed_rule_is_for_two_models_only():
    from galaxy_morph.ensemble import combine_models

    with pytest.raises(ValueError, match="seed rule is defined for exactly two models.*got 3: b0, b2, convnext"):
        combine_models("seed", {"b0": P0, "b2": P2_AGREE, "convnext": P3})
    assert combine_models("seed", {"b0": P0, "b2": P2_DISAGREE}) == seed(P0, P2_DISAGREE)
    with pytest.raises(ValueError, match="at least two models"):
        combine_models("mean", {"b0": P0})
    with pytest.raises(ValueError, match="missing: convnext"):
        combine_models("weighted", {"b0": P0, "b2": P2_AGREE, "convnext": P3}, {"b0": P0, "b2": P0})


def test_rule_check_and_default_without_probabilities():
    from galaxy_morph.ensemble import check_rule, choose_rule, default_rule

    pair, trio = ["b0", "b2"], ["b0", "b2", "convnext"]
    assert default_rule({}, pair) == "mean" and default_rule({}, trio) == "mean"  # nothing measured
    assert default_rule({"default_rule": "seed"}, pair) == "seed"  # measured: kept, even seed
    assert default_rule({"default_rule": "seed"}, trio) == "mean"  # a two-model rule cannot serve three
    assert default_rule({"default_rule": "weighted", "rule_models": pair}, trio) == "mean"  # chosen for others
    assert default_rule({"default_rule": "weighted", "rule_models": trio}, trio) == "weighted"
    figures = {"seed": {"nll": 0.9, "accuracy": 0.93}, "mean": {"nll": 0.31, "accuracy": 0.95},
               "weighted": {"nll": 0.31, "accuracy": 0.96}}
    assert choose_rule(figures) == "weighted"  # the lowest NLL, then the higher accuracy
    assert choose_rule({**figures, "mean": {"nll": 0.2, "accuracy": 0.5}}) == "mean"
    check_rule("seed", ["b0", "b2"])
    check_rule("mean", ["b0", "b2", "convnext"])
    with pytest.raises(ValueError, match="got 3: b0, b2, convnext; use the mean or weighted rule"):
        check_rule("seed", ["b0", "b2", "convnext"])
    with pytest.raises(ValueError, match="unknown ensemble rule 'median'"):
        check_rule("median", ["b0", "b2"])
