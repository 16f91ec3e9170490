"""Acquisition scores against values worked out by hand (ln 2 = 0.693147, ln 10 = 2.302585).

    pytest tests/test_acquisition.py
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from labelling.acquisition import SCORES, bald, disagreement, entropy, margin, random_scores, rank

LN2 = math.log(2)


def test_entropy_by_hand():
    uniform10 = np.full(10, 0.1)
    # -(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.7 * 0.356675 + 0.2 * 1.609438 + 0.1 * 2.302585
    #                                         = 0.249672 + 0.321888 + 0.230259 = 0.801819
    got = entropy([[0.5, 0.5] + [0] * 8, [1] + [0] * 9, uniform10, [0.7, 0.2, 0.1] + [0] * 7])
    np.testing.assert_allclose(got, [LN2, 0.0, math.log(10), 0.801819], atol=1e-6)
    assert got.shape == (4,) and not np.isnan(got).any()  # the zeros are clipped inside the log


def test_margin_by_hand():
    # 1 - (0.6 - 0.3) = 0.7; sure: 1 - (1 - 0) = 0; a tie: 1 - (0.5 - 0.5) = 1
    got = margin([[0.1, 0.6, 0.3], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(got, [0.7, 0.0, 1.0], atol=1e-12)


def test_disagreement_is_jensen_shannon():
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]])
    q = np.array([[0.0, 1.0], [0.5, 0.5], [0.3, 0.7]])
    # [1,0] vs [0,1]: M = [0.5,0.5], H(M) = ln 2, both entropies 0: ln 2.
    # [1,0] vs [0.5,0.5]: M = [0.75,0.25], H(M) = 0.75 * 0.287682 + 0.25 * 1.386294 = 0.562335,
    #   minus (0 + ln 2) / 2 = 0.346574: 0.215762 (= 0.75 ln 4/3).
    # Identical vectors: 0.
    got = disagreement(p, q)
    np.testing.assert_allclose(got, [LN2, 0.215762, 0.0], atol=1e-6)
    np.testing.assert_allclose(disagreement(q, p), got, atol=1e-12)  # symmetric


def test_bald_by_hand():
    # Galaxy 0: two one-hot passes that disagree: mean [0.5,0.5], H = ln 2, each pass H = 0: ln 2.
    # Galaxy 1: identical passes: 0.
    # Galaxy 2: passes [0.9,0.1] and [0.5,0.5]: mean [0.7,0.3],
    #   H(mean) = 0.7 * 0.356675 + 0.3 * 1.203973 = 0.249672 + 0.361192 = 0.610864;
    #   H(pass 1) = 0.9 * 0.105361 + 0.1 * 2.302585 = 0.094825 + 0.230259 = 0.325083, H(pass 2) = 0.693147,
    #   their mean 0.509115: BALD = 0.610864 - 0.509115 = 0.101749.
    samples = np.array([
        [[1.0, 0.0], [0.2, 0.8], [0.9, 0.1]],  # pass 1
        [[0.0, 1.0], [0.2, 0.8], [0.5, 0.5]],  # pass 2
    ])
    got = bald(samples)
    np.testing.assert_allclose(got, [LN2, 0.0, 0.101749], atol=1e-6)
    assert (got <= entropy(samples.mean(0)) + 1e-12).all()  # never more than the total uncertainty


def test_bald_of_many_identical_passes_is_zero():
    p = np.random.default_rng(0).dirichlet(np.ones(10), size=5)
    got = bald(np.stack([p] * 8))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, 0.0, atol=1e-12)
    assert (got >= 0).all()  # rounding may not take it below 0


def test_random_scores_are_seeded():
    a, b, c = random_scores(50, seed=1), random_scores(50, seed=1), random_scores(50, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (50,) and (a >= 0).all() and (a < 1).all()
    assert random_scores(0, seed=1).shape == (0,)


def test_rank_descending_with_ties_in_index_order():
    scores = [0.1, 0.5, 0.9, 0.5, 0.0]
    np.testing.assert_array_equal(rank(scores), [2, 1, 3, 0, 4])
    np.testing.assert_array_equal(rank(scores, k=2), [2, 1])
    np.testing.assert_array_equal(rank(scores, k=0), [])
    np.testing.assert_array_equal(rank(scores, k=99), [2, 1, 3, 0, 4])
    np.testing.assert_array_equal(rank([0.3] * 4), [0, 1, 2, 3])


def test_rank_picks_the_least_sure_first():
    p = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.7, 0.2, 0.1]])
    np.testing.assert_array_equal(rank(entropy(p)), [1, 2, 0])
    np.testing.assert_array_equal(rank(margin(p)), [1, 2, 0])


def test_scores_registry():
    assert set(SCORES) == {"entropy", "margin", "disagreement", "bald", "random"}
    assert SCORES["bald"].fn is bald and SCORES["disagreement"].fn is disagreement
    assert all(s.description for s in SCORES.values())


@pytest.mark.parametrize("call, message", [
    (lambda: entropy([0.5, 0.5]), r"shape \(n, classes\), got shape \(2,\)"),
    (lambda: entropy(np.full((2, 3, 4), 0.25)), r"shape \(n, classes\)"),
    (lambda: entropy([[1.0], [1.0]]), "at least 2 classes"),
    (lambda: margin([[0.5, np.nan]]), "finite"),
    (lambda: margin([[np.inf, 0.0]]), "finite"),
    (lambda: entropy([[1.2, -0.2]]), "non-negative"),
    (lambda: entropy([[2.0, 3.0]]), "sum to 1"),
    (lambda: disagreement([[0.5, 0.5]], [[0.5, 0.5], [1.0, 0.0]]), "same shape"),
    (lambda: disagreement([[0.5, 0.5]], [[0.2, 0.3, 0.5]]), "same shape"),
    (lambda: bald([[0.5, 0.5]]), r"shape \(passes, n, classes\)"),
    (lambda: bald([[[0.5, 0.5]]]), "at least 2 passes"),
    (lambda: random_scores(-1, seed=0), "non-negative integer"),
    (lambda: random_scores(2.5, seed=0), "non-negative integer"),
    (lambda: rank([[0.1, 0.2]]), r"shape \(n,\)"),
    (lambda: rank([0.1, np.nan]), "NaN"),
    (lambda: rank([0.1, 0.2], k=-1), "non-negative integer"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
