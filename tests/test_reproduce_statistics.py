"""Paired statistics on hand-computable numbers: t-test and interval, Holm, McNemar, bootstrap."""

import numpy as np
import pytest

from lightning_gaaf.cli.reproduce import statistics as st
from lightning_gaaf.cli.reproduce.statistics import paired_difference


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.01, 0.02, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04)
    assert st.holm([0.04, 0.01, 0.02]) == [pytest.approx(0.04), pytest.approx(0.03), pytest.approx(0.04)]
    # monotone: a larger raw p never gets a smaller adjusted p; capped at 1; None is not counted
    assert st.holm([0.5, None, 0.6]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert st.holm([0.03]) == [pytest.approx(0.03)]


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    # 1 image only a right, 9 only b right, 90 both right: p = 2 * P(X <= 1 | n = 10, 1/2) = 22 / 1024
    a = np.array([True] * 1 + [False] * 9 + [True] * 90)
    b = np.array([False] * 1 + [True] * 9 + [True] * 90)
    result = st.mcnemar(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (1, 9, 100)
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert result["difference"] == pytest.approx(-8.0)
    # seeds pooled: two seeds of the same 100 images double the counts; no discordance -> p = 1
    assert st.mcnemar(np.stack([a, a]), np.stack([b, b]))["b_only"] == 18
    assert st.mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="cannot be paired"):
        st.mcnemar(a, b[:50])


def test_bootstrap_ci_covers_the_true_difference_and_repeats_for_a_seed():
    rng = np.random.default_rng(1)
    b = rng.random((3, 2000)) < 0.9  # three seeds of 2000 images
    a = b.copy()
    flip = rng.random(a.shape) < 0.05  # a right on 5 % more images: true difference about +5 points
    a[flip] = True
    truth = 100.0 * (a.mean() - b.mean())
    result = st.bootstrap_difference(a, b, n_boot=500, seed=7)
    assert result["mean"] == pytest.approx(truth)
    assert result["ci_low"] < truth < result["ci_high"]
    assert 0.2 < result["ci_high"] - result["ci_low"] < 3.0  # sqrt(p/n)-sized, not degenerate
    assert st.bootstrap_difference(a, b, n_boot=500, seed=7) == result
    assert st.bootstrap_difference(a, b, n_boot=500, seed=8) != result
    same = st.bootstrap_difference(b, b, n_boot=50)
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0)


def test_paired_difference_matches_the_t_distribution():
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    # differences 1, 2, 2: mean 5/3, sample std 1/sqrt(3), t = 5 with 2 degrees of freedom
    assert d["mean"] == pytest.approx(5 / 3) and d["std"] == pytest.approx(3**-0.5)
    assert d["p_value"] == pytest.approx(0.03775, abs=1e-4)
    half = 4.302653 * (3**-0.5) / 3**0.5
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(5 / 3 - half), pytest.approx(5 / 3 + half))
    single = paired_difference([1.0], [0.5])
    assert single["mean"] == 0.5 and single["std"] is None and single["p_value"] is None
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_difference([1.0, 2.0], [1.0])


def test_holm_worked_example_of_four_tests():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    adjusted = st.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), pytest.approx(0.02)]


def test_mean_and_spread_formatting():
    assert st.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert st.format_mean_std([1.0, 2.0, 3.0]) == "2.00 (1.00)"
    assert st.format_mean_std([4.0, 6.0], ".1f", ".3f") == "5.0 (1.414)"
    assert st.format_mean_std([97.125]) == "97.12"  # one value: no "(0.00)" spread
