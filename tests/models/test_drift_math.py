import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.stats import FeatureEvaluator, ks_against_sorted
from undertow.models.drift.windows import WindowState
from undertow.models.profile import build_profile


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_ks_against_presorted_reference_matches_scipy(shift):
    rng = np.random.default_rng(7)
    reference = np.sort(np.round(rng.normal(size=3000), 2))  # ties on purpose
    window = np.round(rng.normal(shift, size=800), 2)
    d, p = ks_against_sorted(reference, window)
    expected = ks_2samp(reference, window, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-6)


def test_numeric_evaluator_psi_and_missing_bucket():
    rng = np.random.default_rng(1)
    profile = build_profile({"x": list(rng.normal(size=5000))}).features["x"]
    evaluator = FeatureEvaluator(profile)
    same = evaluator.evaluate(rng.normal(size=1000))
    assert same.psi < 0.05 and same.missing_share == 0
    shifted = evaluator.evaluate(rng.normal(1.0, size=1000))
    assert shifted.psi > 0.5 and shifted.ks_pvalue < 1e-20
    with_missing = rng.normal(size=1000)
    with_missing[:300] = np.nan
    stats = evaluator.evaluate(with_missing)
    assert stats.missing_share == pytest.approx(0.3) and stats.psi > 0.25


def test_categorical_evaluator_buckets_known_other_and_unseen():
    values = ["a"] * 60 + ["b"] * 40 + [f"rare{i}" for i in range(5)]
    profile = build_profile({"c": values}).features["c"]
    from undertow.models.drift.stats import CategoricalEncoder

    encoder = CategoricalEncoder(profile.model_copy(update={"categories": ["a", "b"], "other_categories": ["rare0"]}))
    assert [encoder.encode(v) for v in ("a", "b", "rare0", "never")] == [0, 1, 2, 3]
    assert np.isnan(encoder.encode(None))


def test_event_time_windows_close_on_a_later_event_and_count_late_ones():
    state = WindowState(DriftConfig(window_seconds=60), columns=1)
    ts = np.array([0.0, 10, 59, 30, 61, 70, 5, 125])
    closed = state.add(np.arange(8.0).reshape(-1, 1), ts)
    assert [(w.index, w.start_ts, w.end_ts, w.rows[:, 0].tolist()) for w in closed] == [
        (0, 0.0, 60.0, [0.0, 1.0, 2.0, 3.0]),
        (1, 60.0, 120.0, [4.0, 5.0]),
    ]
    assert state.late_events == 1 and state.window_start_ts == 120.0 and len(state.rows) == 1


def test_window_state_survives_a_round_trip_through_its_columns():
    state = WindowState(DriftConfig(window_size=100), columns=2)
    state.add(np.arange(60.0).reshape(-1, 2), np.arange(30.0))

    class Record:
        pass

    record = Record()
    for name, value in state.to_columns().items():
        setattr(record, "buffer" if name == "buffer" else name, value)
    restored = WindowState.from_columns(state.config, 2, record)
    assert np.array_equal(restored.rows, state.rows) and np.array_equal(restored.ts, state.ts)
    assert restored.next_window == state.next_window


def test_prediction_time_cusum_still_loads_the_suffix_sums_it_stored_before():
    """The suffix sums of the old format become the prefix sums in the concept state's upgrade."""
    from undertow.models.drift.concept_state import _prefix_sums
    from undertow.models.drift.detectors import PredictionTimeCusum

    rng = np.random.default_rng(5)
    detector = PredictionTimeCusum(k=0.5, h=50.0, bucket_seconds=60, horizon=20)
    for i in range(500):
        detector.update(rng.normal(0.8), prediction_ts=i * 5.0 - rng.uniform(0, 300))
    state = detector.state()
    # the old format: suffix sums W_v = T - P_v
    legacy = [state.first, state.floor, state.drift_detected, state.too_late, *(state.total - np.array(state.prefix))]
    upgraded = _prefix_sums(legacy)
    assert upgraded[4] == pytest.approx(state.total, abs=1e-9)
    assert upgraded[5:] == pytest.approx(state.prefix, abs=1e-9)


def _anderson_darling_directly(reference: np.ndarray, window: np.ndarray) -> float:
    """Pettitt's two-sample statistic over the pooled order, term by term (continuous data)."""
    pooled = np.sort(np.concatenate([reference, window]))
    n, m = window.size, reference.size
    big_n = n + m
    j = np.arange(1, big_n)
    window_so_far = np.searchsorted(np.sort(window), pooled[:-1], side="right")
    return float(np.sum((big_n * window_so_far - n * j) ** 2 / (j * (big_n - j))) / (m * n))


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_anderson_darling_matches_its_definition_and_its_limit_distribution(shift):
    from undertow.models.drift.two_sample import anderson_darling_sf, two_sample_tests

    rng = np.random.default_rng(11)
    reference, window = np.sort(rng.normal(size=5000)), rng.normal(shift, size=1000)
    assert two_sample_tests(reference, window)[3] == pytest.approx(_anderson_darling_directly(reference, window))
    # The limit's published points: 5 % at 2.492, 1 % at 3.857 (Anderson and Darling 1954).
    assert anderson_darling_sf([2.492, 3.857]) == pytest.approx([0.05, 0.01], rel=0.05)


def test_the_written_out_anderson_darling_tail_is_the_computed_one_to_the_last_bits():
    """``ad_tail_table`` spares a process the computation; it must be what the computation gives. To the
    bit on the numpy that wrote it; numpy's log, exp and sums are not bit-for-bit the same across its
    releases and CPUs (SIMD kernels), and numpy 2.4.6 gives 2 of the 389 values one unit in the last place
    apart, so a few units are allowed: the table is the one every process uses, the same everywhere."""
    from undertow.models.drift.two_sample import _saddlepoint_tail, computed_saddlepoint_tail

    grid, log_sf = _saddlepoint_tail()
    computed_grid, computed = computed_saddlepoint_tail()
    assert np.array_equal(grid, computed_grid) and grid.size == 389
    np.testing.assert_array_max_ulp(log_sf, computed, maxulp=4)


def test_on_tied_features_the_windows_tests_stay_uniform_where_plain_ks_piles_up_near_one():
    """A binary flag and a 17-level pixel-like feature: without drift, the rank sum (mid-ranks, tie-corrected
    variance) and Anderson-Darling (ties broken at random) give standard normal scores; the plain KS p-value
    is conservative (most of its mass near 1), which the evidence over windows would read as evidence against
    drift."""
    from scipy.special import ndtri

    from undertow.models.drift.evidence import window_z
    from undertow.models.drift.stats import evaluate_window

    rng = np.random.default_rng(3)
    population = {"flag": lambda n: (rng.random(n) < 0.45).astype(float), "level": lambda n: rng.binomial(16, 0.3, n)}
    for name, draw in population.items():
        evaluator = FeatureEvaluator(build_profile({name: draw(5000).astype(float).tolist()}).features[name])
        stats = [evaluate_window([evaluator], draw(1000).astype(float).reshape(-1, 1))[0] for _ in range(300)]
        z = np.array([window_z(s, 5000) for s in stats])
        ad = -ndtri(np.array([s.ad_pvalue for s in stats]))
        ks = np.array([s.ks_pvalue for s in stats])
        assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.2, (name, z.mean(), z.std())
        assert abs(ad.mean()) < 0.25 and 0.8 < ad.std() < 1.2, (name, ad.mean(), ad.std())
        assert np.mean(ks > 0.9) > 0.3, name  # uniform would put 10 % there


def test_the_tie_broken_statistics_are_the_same_on_a_replay():
    rng = np.random.default_rng(4)
    evaluator = FeatureEvaluator(build_profile({"x": rng.integers(0, 5, 5000).astype(float).tolist()}).features["x"])
    window = rng.integers(0, 5, 1000).astype(float)
    assert evaluator.evaluate(window) == evaluator.evaluate(window.copy())


def test_the_evidence_across_features_raises_no_later_than_any_features_own_sums_at_the_same_budget():
    """The harmonic mean of the features' p-values is never above k times the smallest: from the same windows,
    the combination crosses at the latest when one feature's sums do (Bonferroni over the features)."""
    from undertow.models.drift.evidence import CombinedEvidence, EvidenceAccumulator, evidence_threshold

    rng = np.random.default_rng(21)
    earlier = 0
    for trial in range(200):
        # Some features drift, by various amounts; or each of ten a little (z of 1 per window).
        k = int(rng.integers(1, 12)) if trial % 2 else 10
        lean = rng.uniform(0, 1.5, k) * (rng.random(k) < 0.5) if trial % 2 else np.ones(k)
        combined, own = CombinedEvidence(250), EvidenceAccumulator(evidence_threshold(k, 250))
        for window in range(40):
            zs = {f"f{j}": float(z) for j, z in enumerate(rng.normal(lean, 1))}
            across = combined.add(zs, rho=1 / 6).raised
            alone = any([own.add(name, z, rho=1 / 6) for name, z in zs.items()])
            assert across or not alone, (trial, window)
            if across:
                earlier += not alone
                break
    assert earlier > 15  # and often earlier where several features lean the same way (about a third of those)


def test_the_evidence_across_features_keeps_about_the_false_alarm_rate_of_the_per_feature_rule():
    """Ten features whose windows' z are equicorrelated standard normals (no drift), 40,000 windows at the
    default budget (one per 250 windows): the combination raises about as often as the per-feature rule does
    on independent features (whose Bonferroni split is then exact), whatever the features' dependence; the
    per-feature rule itself raises fewer as they grow alike (Bonferroni turns conservative)."""
    from undertow.models.drift.evidence import CombinedEvidence, EvidenceAccumulator, evidence_threshold

    rng = np.random.default_rng(22)
    windows, k = 40_000, 10
    counts = {}
    for correlation in (0.0, 0.5, 0.95):
        z = math.sqrt(correlation) * rng.normal(size=(windows, 1)) + math.sqrt(1 - correlation) * rng.normal(
            size=(windows, k)
        )
        combined, own = CombinedEvidence(250), EvidenceAccumulator(evidence_threshold(k, 250))
        counts[correlation] = [0, 0]
        for row in z:
            zs = {f"f{j}": float(v) for j, v in enumerate(row)}
            counts[correlation][0] += combined.add(zs, rho=0.0).raised
            counts[correlation][1] += any([own.add(name, v, rho=0.0) for name, v in zs.items()])
    independent = counts[0.0][1]
    assert 0.5 * windows / 250 < independent < 1.5 * windows / 250, counts
    assert all(across <= 1.2 * independent for across, _ in counts.values()), counts
    assert counts[0.95][1] < 0.5 * counts[0.95][0], counts  # Bonferroni over near-copies: a third of the rate
