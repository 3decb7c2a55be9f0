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


class _SuffixSumCusum:
    """The prediction-time CUSUM as first written: every label adds to the suffix sums of the buckets up to
    its own, O(horizon) per label. The reference the incremental one must agree with."""

    def __init__(self, k, h, bucket_seconds, horizon, clip=5.0):
        self.k, self.h, self.bucket_seconds, self.horizon, self.clip = k, h, bucket_seconds, horizon, clip
        self.suffix, self.first, self.floor, self.detected = np.zeros(horizon), None, None, False

    def update(self, z, prediction_ts):
        if self.detected:
            newest = self.first + self.horizon - 1
            self.suffix, self.first, self.floor, self.detected = (
                np.zeros(self.horizon),
                newest - self.horizon + 1,
                newest,
                False,
            )
        bucket = int(prediction_ts // self.bucket_seconds)
        if self.first is None:
            self.first = bucket - self.horizon + 1
        if bucket >= self.first + self.horizon:
            shift = bucket - (self.first + self.horizon - 1)
            if shift >= self.horizon:
                self.suffix[:] = 0.0
            else:
                self.suffix[:-shift] = self.suffix[shift:]
                self.suffix[-shift:] = 0.0
            self.first += shift
        if bucket < self.first or (self.floor is not None and bucket < self.floor):
            return
        self.suffix[: bucket - self.first + 1] += min(max(z, -self.clip), self.clip) - self.k
        self.detected = max(0.0, float(self.suffix.max())) > self.h


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prediction_time_cusum_agrees_with_the_suffix_sums_it_replaces(seed):
    """Late labels (seconds to hours), time jumps past the horizon, alarms and restarts, a save and load
    midway: the statistic, its alarm and its change time are those of the O(horizon) definition."""
    from undertow.models.drift.detectors import PredictionTimeCusum

    rng = np.random.default_rng(seed)
    fast = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50)
    reference = _SuffixSumCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50)
    now, alarms = 0.0, 0
    for i in range(6000):
        now += rng.exponential(2.0) + (5000.0 if i % 1500 == 1499 else 0.0)  # now and then a long gap
        delay = rng.lognormal(np.log(30.0), 2.0)  # seconds to hours late
        z = rng.normal(1.2 if 2000 <= i < 2600 or i >= 4500 else 0.0)
        fast.update(z, prediction_ts=now - delay)
        reference.update(z, prediction_ts=now - delay)
        statistic = max(0.0, float(reference.suffix.max()))
        assert fast.statistic == pytest.approx(statistic, abs=1e-9)
        assert fast.drift_detected == reference.detected
        if statistic > 1e-9:
            expected = (reference.first + int(reference.suffix.argmax())) * 60
            assert fast.change_ts == expected
        alarms += fast.drift_detected
        if i == 3000:
            fast = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50).from_state(fast.state())
    assert alarms >= 2


def test_prediction_time_cusum_restored_from_its_state_continues_bit_for_bit():
    """Crash equivalence compares stored state exactly: a detector saved and restored (through JSON, as the
    monitor stores it) every few labels must reach the very numbers of one that never was."""
    import json

    from undertow.models.drift.detectors import PredictionTimeCusum

    rng = np.random.default_rng(4)
    kept = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50)
    restored = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50)
    now = 0.0
    for i in range(5000):
        now += rng.exponential(2.0) + (4000.0 if i % 1700 == 1699 else 0.0)
        z = rng.normal(1.0 if i >= 3000 else 0.0) * 0.1 + rng.random() * 1e-3  # values that round
        ts = now - rng.lognormal(np.log(30.0), 2.0)
        kept.update(z, prediction_ts=ts)
        restored.update(z, prediction_ts=ts)
        if i % 7 == 0:
            restored = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50).from_state(
                type(restored.state()).model_validate(json.loads(restored.state().model_dump_json()))
            )
        assert restored.statistic == kept.statistic and restored.drift_detected == kept.drift_detected
    assert restored.state() == kept.state()


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
