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
