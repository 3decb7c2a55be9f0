"""Our Page-Hinkley against river's, step for step, on the same streams: the reference it is tested against."""

import json

import numpy as np
import pydantic
import pytest
from river.drift import PageHinkley as RiverPageHinkley

from undertow.models.drift.detectors import (
    Cusum,
    Detection,
    Detector,
    PageHinkley,
    PageHinkleyState,
    PredictionTimeCusum,
    RollingMean,
)


def _streams():
    rng = np.random.default_rng(11)
    yield "stationary", rng.normal(size=20_000)
    yield "abrupt", np.r_[rng.normal(size=5000), rng.normal(1.5, size=5000)]
    yield "gradual", rng.normal(size=20_000) + np.clip(np.arange(20_000) - 8000, 0, None) / 6000
    yield "skewed", np.abs(rng.standard_t(3, size=20_000)) - 1.0
    yield "recurring", rng.normal(size=20_000) + 2.0 * ((np.arange(20_000) // 2500) % 2)


@pytest.mark.parametrize("delta, threshold, min_instances", [(0.25, 50.0, 30), (0.05, 10.0, 5), (0.0, 3.0, 30)])
def test_page_hinkley_alarms_where_river_does(delta, threshold, min_instances):
    alarms = 0
    for name, stream in _streams():
        ours = PageHinkley(delta=delta, threshold=threshold, min_instances=min_instances)
        river = RiverPageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, alpha=1.0, mode="up")
        for i, z in enumerate(stream):
            ours.update(float(z))
            river.update(float(z))
            assert ours.drift_detected == river.drift_detected, (name, i)
            alarms += ours.drift_detected
    assert alarms >= 3  # the comparison covered alarms and the restarts after them, not only quiet streams


def test_page_hinkley_finds_the_abrupt_change_and_its_state_survives_json():
    rng = np.random.default_rng(3)
    stream = np.r_[rng.normal(size=4000), rng.normal(2.0, size=2000)]
    first, alarms = PageHinkley(), []
    for z in stream[:3000]:
        first.update(float(z))
    second = PageHinkley().from_state(PageHinkleyState.model_validate_json(first.state().model_dump_json()))
    for i, z in enumerate(stream[3000:], start=3000):
        first.update(float(z))
        second.update(float(z))
        assert first.state() == second.state()
        if second.drift_detected:
            alarms.append(i)
    assert alarms and 4000 <= alarms[0] < 4100


def test_page_hinkley_rejects_parameters_that_cannot_work():
    with pytest.raises(ValueError, match="threshold > 0"):
        PageHinkley(threshold=0)
    with pytest.raises(ValueError, match="delta >= 0"):
        PageHinkley(delta=-1)


def _simulated_arl(rng, steps: np.ndarray, probabilities: np.ndarray, k: float, h: float, runs: int = 1500) -> float:
    """Mean run length to S > h of ``runs`` CUSUMs driven by i.i.d. draws from ``steps``."""
    s, alive, length, t = np.zeros(runs), np.ones(runs, bool), np.zeros(runs), 0
    while alive.any():
        t += 1
        s = np.maximum(0.0, s + rng.choice(steps, size=runs, p=probabilities) - k)
        hit = alive & (s > h)
        length[hit], alive = t, alive & ~hit
    return float(length.mean())


@pytest.mark.parametrize("rate", [0.116, 0.2])
@pytest.mark.parametrize("k", [0.25, 0.5])
def test_cusum_threshold_on_zero_one_errors_keeps_the_run_length_it_promises(rate, k):
    from undertow.models.drift.detectors import cusum_threshold_for

    sd = np.sqrt(rate * (1 - rate))
    steps, probabilities = np.array([-rate / sd, (1 - rate) / sd]), np.array([1 - rate, rate])
    sample = np.repeat(steps, (np.array([1 - rate, rate]) * 5000).round().astype(int))
    h = cusum_threshold_for(sample, k, 5000, clip=5.0)
    arl = _simulated_arl(np.random.default_rng(3), steps, probabilities, k, h)
    assert 0.85 * 5000 < arl < 1.15 * 5000, (h, arl)
    # At the monitor's rate the threshold stays in proportion (bisection on a biased lattice found 770).
    assert cusum_threshold_for(sample, k, 1e7, clip=5.0) < 3 * h


@pytest.mark.parametrize("k", [0.25, 0.5])
def test_a_threshold_for_two_samples_holds_for_both_and_costs_one_solve_where_the_first_suffices(k):
    from undertow.models.drift.detectors import cusum_threshold_for

    rng = np.random.default_rng(5)
    light, heavy = rng.normal(size=2000), rng.normal(size=2000) ** 2  # symmetric; skewed like squared errors
    light, heavy = (light - light.mean()) / light.std(), (heavy - heavy.mean()) / heavy.std()
    own_light = cusum_threshold_for(light, k, 1e6, clip=5.0)
    own_heavy = cusum_threshold_for(heavy, k, 1e6, clip=5.0)
    assert own_heavy > own_light  # a heavier tail needs a higher threshold for the same false-alarm rate
    # Already enough for the light sample: returned as it is.
    assert cusum_threshold_for(light, k, 1e6, clip=5.0, at_least=own_heavy) == own_heavy
    # Not enough for the heavy one: its own threshold, found from there (the chain's ARL wobbles by a
    # few per cent with h, so a bracket started elsewhere may settle a little apart).
    both = cusum_threshold_for(heavy, k, 1e6, clip=5.0, at_least=own_light)
    assert both == pytest.approx(own_heavy, rel=0.01)


def _detectors():
    return {
        "page_hinkley": lambda: PageHinkley(),
        "cusum": lambda: Cusum(k=0.5, h=6.0),
        "rolling_mean": lambda: RollingMean(window=100, step=10),
        "rolling_mean_linear": lambda: RollingMean(window=100, step=10, weights="linear"),
        "prediction_time_cusum": lambda: PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50),
    }


@pytest.mark.parametrize("name", list(_detectors()))
def test_every_detector_answers_the_same_interface_and_its_typed_state_restores_it_bit_for_bit(name):
    """One interface: update(z, prediction_ts), drift_detected, statistic against threshold, result() in one
    shape; state() a frozen model that, through JSON (as stored), restores a detector that goes on exactly."""
    make = _detectors()[name]
    rng = np.random.default_rng(4)
    z = rng.normal(size=900) + np.r_[np.zeros(600), np.full(300, 1.5)]
    ts = np.arange(900) * 5.0 - rng.uniform(0, 300, 900)
    kept = make()
    assert isinstance(kept, Detector)
    for i in range(500):
        kept.update(float(z[i]), float(ts[i]))
    state = kept.state()
    with pytest.raises(pydantic.ValidationError):
        state.__setattr__(next(iter(type(state).model_fields)), None)  # frozen
    restored = make().from_state(type(state).model_validate_json(state.model_dump_json()))
    fired = 0
    for i in range(500, 900):
        kept.update(float(z[i]), float(ts[i]))
        restored.update(float(z[i]), float(ts[i]))
        result = restored.result()
        assert isinstance(result, Detection) and result == kept.result() or np.isnan(result.statistic)
        assert result.drift_detected == kept.drift_detected and result.threshold == kept.threshold
        fired += result.drift_detected
    assert restored.state() == kept.state() and fired


def test_a_state_that_does_not_fit_the_detector_is_refused():
    small = PredictionTimeCusum(k=0.5, h=8.0, horizon=20)
    with pytest.raises(ValueError, match="horizon"):
        PredictionTimeCusum(k=0.5, h=8.0, horizon=30).from_state(small.state())
    with pytest.raises(ValueError, match="window"):
        RollingMean(window=50, step=10).from_state(RollingMean(window=100, step=10).state())


def test_prediction_time_cusum_restored_from_its_state_every_few_labels_continues_bit_for_bit():
    """Crash equivalence compares stored state exactly: a detector saved and restored (through JSON, as the
    monitor stores it) every few labels must reach the very numbers of one that never was."""
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
            state = type(restored.state()).model_validate(json.loads(restored.state().model_dump_json()))
            restored = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50).from_state(state)
        assert restored.statistic == kept.statistic and restored.drift_detected == kept.drift_detected
    assert restored.state() == kept.state()


def test_detectors_reject_parameters_that_cannot_work():
    for make in (
        lambda: Cusum(k=0.5, clip=0.4),
        lambda: Cusum(k=0.5, h=0.0),
        lambda: RollingMean(window=1),
        lambda: PredictionTimeCusum(h=0.0),
        lambda: PredictionTimeCusum(horizon=1),
    ):
        with pytest.raises(ValueError):
            make()


# Moved from tests/worker/test_drift_math.py with the detector interface (from_state instead of load).
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
            start = reference.first + int(reference.suffix.argmax())
            # Buckets before the floor (after a restart) hold nothing: a suffix over them all begins there.
            expected = (start if reference.floor is None else max(start, reference.floor)) * 60
            assert fast.change_ts == expected
        alarms += fast.drift_detected
        if i == 3000:
            fast = PredictionTimeCusum(k=0.5, h=8.0, bucket_seconds=60, horizon=50).from_state(fast.state())
    assert alarms >= 2


def _delayed_stream(n: int, rate: float, seed: int):
    """0/1 errors at 11 % standardised, predictions at ``rate`` a second, lognormal label delays (median 5
    minutes): (z, prediction times, arrival times)."""
    rng = np.random.default_rng(seed)
    errors = (rng.random(n) < 0.11).astype(float)
    predicted = np.arange(n) / rate
    return (errors - errors.mean()) / errors.std(), predicted, predicted + rng.lognormal(np.log(300), 1.0, n)


@pytest.mark.parametrize("h", [3.05, 4.1, 5.05])
def test_the_calibration_simulation_alarms_where_the_prediction_time_cusum_does(h):
    """The vectorised replay of the calibration, one stream and a window of a few buckets, raises the very
    alarms of ``PredictionTimeCusum`` (720 buckets kept) on the same labels in their arrival order."""
    from undertow.models.drift.prediction_time_calibration import Traffic, _replay, _window

    z, predicted, arrived = _delayed_stream(20_000, 1.0, 1)
    order = np.argsort(arrived, kind="stable")
    detector, alarms = PredictionTimeCusum(k=0.5, h=h, bucket_seconds=60, horizon=720), 0
    for i in order:
        detector.update(float(z[i]), float(predicted[i]))
        alarms += detector.drift_detected
    delays = arrived - predicted
    window = _window(Traffic(1.0, delays, np.full(delays.size, 1 / delays.size)), 60.0, h, 0.5)
    assert window is not None and window < 40
    steps = (np.clip(z[order], -5, 5) - 0.5)[:, None]
    buckets = np.floor(predicted[order] / 60).astype(np.int64)
    replayed, arrival_order = _replay(steps, buckets, np.ones(z.size, bool), np.array([h]), window)
    assert alarms > 1 and replayed == alarms
    assert arrival_order > 3 * alarms  # in arrival order the same h alarms several times as often


def test_the_prediction_time_factor_is_seeded_grows_with_the_labels_a_bucket_and_is_1_for_thin_traffic():
    from undertow.models.drift.prediction_time_calibration import Traffic, prediction_time_factor

    z, _, _ = _delayed_stream(1_000, 1.0, 2)
    delays = np.random.default_rng(3).lognormal(np.log(300), 1.0, 2_000)
    weights = np.full(delays.size, 1 / delays.size)

    def factor(rate: float, seed: int = 5) -> float:
        return prediction_time_factor(z, 0.5, Traffic(rate, delays, weights), 60.0, seed)

    assert factor(1.0) == factor(1.0)  # a replay after a crash sets the same thresholds
    assert factor(0.02) == 1.0  # about one label a bucket: not measured, the arrival-order threshold holds
    assert 1.0 < factor(0.2) < factor(0.4) < factor(1.0), (factor(0.2), factor(0.4), factor(1.0))


def test_the_traffic_of_a_versions_first_labels_gives_its_rate_and_its_delays():
    """The first labels to arrive come from the first predictions and favour short delays: the rate is
    counted over predictions whose labels are mostly in (still a little low, which errs towards fewer false
    alarms), and short delays weigh less than long ones."""
    from undertow.models.drift.prediction_time_calibration import traffic_from

    _, predicted, arrived = _delayed_stream(50_000, 2.0, 4)
    first = np.argsort(arrived, kind="stable")[:1_000]
    traffic = traffic_from(list(zip(predicted[first].tolist(), arrived[first].tolist(), strict=True)))
    assert traffic is not None and 1.4 < traffic.rate <= 2.0  # low by a fifth: a smaller factor, not a larger
    weighted_median = traffic.delays[np.argsort(traffic.delays)][
        np.searchsorted(np.cumsum(traffic.delay_weights[np.argsort(traffic.delays)]), 0.5)
    ]
    assert weighted_median > np.median(traffic.delays)  # towards the 300 s of all labels
    # A batch whose labels are all in: exactly its rate.
    _, predicted, arrived = _delayed_stream(1_000, 1.0, 5)
    traffic = traffic_from(list(zip(predicted.tolist(), arrived.tolist(), strict=True)))
    assert traffic is not None and traffic.rate == pytest.approx(1.0, rel=0.02)
    assert traffic_from([(0.0, 1.0)] * 100) is None  # too few to say
