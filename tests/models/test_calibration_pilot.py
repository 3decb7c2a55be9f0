"""The prediction-time calibration's replay in stages: stopped early only where the factor is surely 1, and
otherwise the same counts to the bit as one pass (``prediction_time_calibration._Replay``)."""

from __future__ import annotations

import numpy as np
import pytest

from undertow.models.drift import prediction_time_calibration as ptc


def _z(seed: int) -> np.ndarray:
    errors = (np.random.default_rng(seed).random(2_000) < 0.115).astype(float)
    return (errors - errors.mean()) / errors.std()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_replay_in_stages_counts_what_one_pass_counts(seed):
    rng = np.random.default_rng(seed)
    n, streams, window = 3_000, 16, 12
    steps = np.clip(rng.choice(_z(seed), size=(n, streams)), -5, 5) - 0.5
    buckets = np.sort(rng.integers(0, 900, n)) - rng.integers(0, 5, n)  # mostly in order, some late
    counted = rng.random(n) < 0.9
    h = np.linspace(1.5, 3.0, streams)
    staged = ptc._Replay(h, window, int(buckets[0]))
    for start, end in [(0, 7), (7, 400), (400, 401), (401, n)]:
        staged.run(steps[start:end], buckets[start:end], counted[start:end])
    assert (staged.alarms, staged.arrival_order) == ptc._replay(steps, buckets, counted, h, window)
    assert staged.alarms > 10


def _traffic(labels_per_bucket: float, delays: np.ndarray) -> ptc.Traffic:
    return ptc.Traffic(labels_per_bucket / 20.0, delays, np.full(delays.size, 1 / delays.size))


def _full_factor(z: np.ndarray, k: float, traffic: ptc.Traffic, seed: int) -> float:
    """The factor from the whole simulation, as before the replay could stop early."""
    h_test = ptc.cusum_threshold_from(z, k, ptc.TEST_ARL)
    thresholds = [h_test + offset for offset in ptc.SPREAD]
    window = ptc._window(traffic, 20.0, thresholds[-1], k)
    assert window is not None
    h = np.repeat(thresholds, ptc.STREAMS // len(ptc.SPREAD))
    alarms, arrival_order, _ = ptc.simulate(z, k, h, traffic, 20.0, window, seed)
    return ptc._factor(alarms, arrival_order)


def test_thin_traffic_stops_early_with_the_factor_the_whole_simulation_gives(monkeypatch):
    """2.5 labels a bucket and lognormal delays (the ingest benchmark's traffic), the small CUSUM (k/2): the
    factor is 1 after the discount, and a prefix of the labels already says so."""
    z, delays = _z(4), np.random.default_rng(5).lognormal(np.log(200), 1.5, 2_000)
    traffic = _traffic(2.5, delays)
    replayed: list[int] = []
    run = ptc._Replay.run
    monkeypatch.setattr(ptc._Replay, "run", lambda self, steps, *a: replayed.append(len(steps)) or run(self, steps, *a))
    assert ptc.prediction_time_factor(z, 0.25, traffic, 20.0, 7) == 1.0
    total = ptc.SIMULATED_LABELS // ptc.STREAMS
    assert sum(replayed) < 0.3 * total  # stopped after a quarter of the labels
    monkeypatch.undo()
    assert _full_factor(z, 0.25, traffic, 7) == 1.0


def test_busy_traffic_with_long_delays_runs_to_the_end_and_measures_the_same_factor():
    """Delays spread over two hours mix many buckets' labels: the factor is above 1, never stopped early,
    and the same to the bit as the whole simulation's."""
    z, delays = _z(6), np.random.default_rng(7).uniform(0, 7_200, 2_000)
    traffic = _traffic(8.0, delays)
    factor = ptc.prediction_time_factor(z, 0.5, traffic, 20.0, 9)
    assert factor > 1.5
    assert factor == _full_factor(z, 0.5, traffic, 9)
