"""Our Page-Hinkley against river's, step for step, on the same streams: the reference it is tested against."""
import json

import numpy as np
import pytest
from river.drift import PageHinkley as RiverPageHinkley

from undertow.models.drift.detectors import PageHinkley


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
    second = PageHinkley().load(json.loads(json.dumps(first.state())))
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
