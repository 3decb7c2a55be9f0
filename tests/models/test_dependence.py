"""The dependence test's mathematics: rank scores, each pair's variance from the reference, and the false-alarm
rate of the largest |z| over the pairs against the budget it promises."""

from __future__ import annotations

import numpy as np
import pytest

from undertow.models.drift.dependence import (
    DependenceTest,
    correlations,
    normal_scores,
    pair_threshold,
    reference_dependence,
)
from undertow.models.profile import profile_dependence


def _t_copula(rng, n: int, k: int, rho: float, df: int = 3) -> np.ndarray:
    """k features on a t copula (equicorrelated ``rho``), with lognormal marginals: heavy tails and tail
    dependence, as real features have and Gaussian theory does not."""
    cov = np.full((k, k), rho) + (1 - rho) * np.eye(k)
    t = rng.multivariate_normal(np.zeros(k), cov, n) / np.sqrt(rng.chisquare(df, n) / df)[:, None]
    return np.exp(t)


def test_scores_depend_on_ranks_only_ties_share_a_score_and_a_missing_value_scores_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    monotone = np.column_stack([np.exp(x[:, 0]), x[:, 1] ** 3, -1 / (10 + x[:, 2])])
    assert np.allclose(normal_scores(x), normal_scores(monotone))
    tied = normal_scores(np.array([[1.0], [2.0], [2.0], [np.nan], [3.0]]))[0]
    assert tied[1] == tied[2] and tied[3] == 0.0 and tied[0] == pytest.approx(-tied[4])


def test_the_reference_variance_is_one_for_a_gaussian_copula_and_matches_simulation_on_a_t_copula():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 3))
    x[:, 1] = 0.6 * x[:, 0] + 0.8 * x[:, 1]
    r, v = reference_dependence(x)
    assert r[0, 1] == pytest.approx(0.6, abs=0.03) and v[0, 1] == pytest.approx(1.0, abs=0.15)
    assert v[0, 2] == pytest.approx(1.0, abs=0.15) and np.isnan(v[0, 0])
    # A t copula (3 df) with correlation 0: uncorrelated but dependent, atanh(r) varies 1.7 times as much.
    _, v = reference_dependence(_t_copula(rng, 5000, 2, 0.0))
    simulated = np.var(
        [np.arctanh(correlations(normal_scores(_t_copula(rng, 1000, 2, 0.0)))[0, 1]) for _ in range(400)]
    )
    assert v[0, 1] > 1.4 and v[0, 1] == pytest.approx(simulated * 997, rel=0.2)


def test_the_largest_z_over_pairs_keeps_its_false_alarm_budget_where_a_plain_fisher_z_does_not():
    """At a budget loose enough to count (one alarm per 20 windows), on 400 stationary windows of heavy-tailed,
    tail-dependent features: the test alarms about as often as promised; with each pair's variance taken as
    the Gaussian 1 it alarms several times as often."""
    rng = np.random.default_rng(3)
    names = tuple(f"x{j}" for j in range(6))
    reference = _t_copula(rng, 5000, 6, 0.4)
    r, v = reference_dependence(reference)
    calibrated = DependenceTest(names, r, v, 5000, false_alarm_windows=20)
    plain = DependenceTest(names, r, np.ones_like(v), 5000, false_alarm_windows=20)
    windows = [_t_copula(rng, 1000, 6, 0.4) for _ in range(400)]
    ours = sum(calibrated(w).z > calibrated.threshold for w in windows)
    theirs = sum(plain(w).z > plain.threshold for w in windows)
    assert 4 <= ours <= 32  # 20 expected (Šidák: at most); binomial 99.9 % bounds about 7 and 36
    assert theirs > 3 * ours


def test_the_threshold_grows_with_pairs_and_budget_and_matches_bonferroni_in_the_tail():
    assert pair_threshold(45, 1e9) < pair_threshold(1225, 1e9) < pair_threshold(4950, 1e9)
    assert pair_threshold(45, 1e6) < pair_threshold(45, 1e9)
    from scipy.stats import norm

    assert pair_threshold(45, 1e9) == pytest.approx(norm.isf(1e-9 / 45 / 2), rel=1e-6)


def test_degenerate_and_constant_pairs_are_not_tested():
    rng = np.random.default_rng(4)
    x = rng.normal(size=1000)
    profile = profile_dependence(
        {"a": list(x), "twice": list(2 * x), "b": list(rng.normal(size=1000)), "one": [1.0] * 1000}
    )
    assert profile is not None and profile.features == ["a", "twice", "b"]  # a constant has no pairs at all
    test = DependenceTest(profile.features, profile.correlations, profile.variances, profile.rows, 1e9)
    assert test.pairs == 2  # a and twice: one is a monotone function of the other
    window = np.column_stack([x[:500], 2 * x[:500] + 1, rng.normal(size=500)])
    assert test(window).z < test.threshold
