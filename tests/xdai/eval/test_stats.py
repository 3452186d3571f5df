"""Pairwise-evaluation statistics against values computed by hand (worked below each case)."""

import math

import pytest

from xdai.eval.stats import binomial_two_sided, cohen_kappa, fleiss_kappa, wilson_interval


def test_wilson_interval_by_hand():
    # 7 wins of 10, z = 1.96: center = (0.7 + 0.19208) / 1.38416 = 0.64454;
    # half = 1.96 * sqrt(0.021 + 0.009604) / 1.38416 = 0.24773  ->  [0.3968, 0.8922]
    iv = wilson_interval(7, 10)
    assert iv.low == pytest.approx(0.3968, abs=1e-4) and iv.high == pytest.approx(0.8922, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_inside_zero_one():
    # 0 of 5: p = 0, so center = half = (z^2/2n) / (1 + z^2/n) and the interval is [0, z^2 / (n + z^2)] = [0, 0.4345]
    iv = wilson_interval(0, 5)
    assert iv.low == 0.0 and iv.high == pytest.approx(3.8415 / 8.8415, abs=1e-4)
    assert wilson_interval(0, 0).low == 0.0 and wilson_interval(0, 0).high == 1.0


def test_binomial_two_sided_by_hand():
    # n = 10, k = 8: P(X >= 8) = (45 + 10 + 1) / 1024 = 56/1024; two-sided doubles it: 0.109375
    assert binomial_two_sided(8, 10) == pytest.approx(112 / 1024)
    # n = 10, k = 5 is the most likely outcome: p = 1
    assert binomial_two_sided(5, 10) == pytest.approx(1.0)
    # n = 6, k = 0: 2 / 64
    assert binomial_two_sided(0, 6) == pytest.approx(2 / 64)


def test_cohen_kappa_by_hand():
    # 10 items; agree on 8 (5 both A, 3 both B); rater 1: 6 A 4 B, rater 2: 6 A 4 B (one A/B and one B/A swap)
    # po = 0.8, pe = 0.6*0.6 + 0.4*0.4 = 0.52, kappa = 0.28 / 0.48 = 0.58333
    a = ["A"] * 5 + ["A", "B"] + ["B"] * 3
    b = ["A"] * 5 + ["B", "A"] + ["B"] * 3
    assert cohen_kappa(a, b) == pytest.approx(0.28 / 0.48)
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None  # chance agreement is total: undefined
    with pytest.raises(ValueError):
        cohen_kappa(["A"], ["A", "B"])


def test_fleiss_kappa_by_hand():
    # 3 items, 3 raters each: {A:3}, {A:2,B:1}, {B:3}
    # P_i = 1, (4+1-3)/6 = 1/3, 1 -> P_bar = 7/9; p_A = 5/9, p_B = 4/9 -> Pe = 41/81
    # kappa = (7/9 - 41/81) / (1 - 41/81) = (63-41)/81 / (40/81) = 22/40 = 0.55
    items = [{"A": 3}, {"A": 2, "B": 1}, {"B": 3}]
    assert fleiss_kappa(items) == pytest.approx(0.55)
    assert fleiss_kappa([{"A": 1}]) is None  # no item with two ratings
    assert not math.isnan(fleiss_kappa([{"A": 2}, {"B": 2}]))
