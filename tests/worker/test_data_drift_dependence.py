"""The dependence check in a version's monitor: a correlation between two inputs appearing with unchanged
marginals is found, with the pair named; stationary streams stay silent; its episode starts, escalates and
ends; the cap; versions registered before profiles kept the pairs are checked from their stored test set."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.drift_state import CODEC, DEPENDENCE
from undertow.models.profile import build_profile, dependence_from_rows
from undertow.worker.monitor.data_drift import DataDriftStage, ModelVersionMonitor
from undertow.worker.runtime.events import PredictionEvent
from undertow.worker.runtime.output_events import DependenceDriftAlert, encode, parse_event

START = datetime(2026, 11, 1, tzinfo=UTC)
DEPENDENCE_TYPE = "undertow.drift.dependence"


def _names(k: int) -> list[str]:
    return [f"x{j}" for j in range(k)]


def _columns(matrix: np.ndarray) -> dict[str, list[float]]:
    return {name: matrix[:, j].tolist() for j, name in enumerate(_names(matrix.shape[1]))}


def _paired(rng, n: int, k: int, rho: float) -> np.ndarray:
    """k standard normal features; x0 and x1 correlated ``rho`` (each still N(0, 1))."""
    x = rng.normal(size=(n, k))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    return x


def _feed(monitor: ModelVersionMonitor, matrix: np.ndarray, start: int) -> list:
    names = _names(matrix.shape[1])
    events = [
        PredictionEvent.model_construct(
            event_id=f"e{start + i}",
            model_id="m",
            model_version=None,
            ts=START + timedelta(seconds=start + i),
            features=dict(zip(names, map(float, row))),
            prediction=0.0,
            scores=None,
        )
        for i, row in enumerate(matrix)
    ]
    rows, ts = monitor.encode(events)
    alerts = []
    for window in monitor.window.add(rows, ts):
        alerts += monitor.evaluate(window)[1]
    return alerts


def test_a_correlation_appearing_between_two_of_ten_inputs_is_found_within_two_windows_after_100k_silent():
    rng = np.random.default_rng(40)
    monitor = ModelVersionMonitor("m", "1", build_profile(_columns(_paired(rng, 5000, 10, 0.0))), DriftConfig())
    quiet = []
    for i in range(100):  # 100,000 stationary predictions
        quiet += _feed(monitor, _paired(rng, 1000, 10, 0.0), start=i * 1000)
    assert [a for a in quiet if a.type == DEPENDENCE_TYPE] == []
    found = []
    for i in range(100, 102):  # x0 and x1 from 0 to 0.5, marginals unchanged
        found += [(i, a) for a in _feed(monitor, _paired(rng, 1000, 10, 0.5), start=i * 1000)]
    assert [a.type for _, a in found] == [DEPENDENCE_TYPE]  # no per-feature alert: the marginals did not move
    window, alert = found[0]
    assert window == 100 and alert.data.episode == "started" and alert.data.severity == "significant"
    top = alert.data.pairs[0]
    assert top.features == ["x0", "x1"] and abs(top.reference) < 0.05 and 0.4 < top.value < 0.6
    assert top.z > alert.data.threshold > 6 and alert.data.z == top.z and alert.data.pairs_tested == 45
    assert parse_event(encode(alert)) == alert


def test_a_dependence_episode_starts_moderate_escalates_once_and_ends_when_the_pair_comes_back():
    rng = np.random.default_rng(41)
    monitor = ModelVersionMonitor("m", "1", build_profile(_columns(_paired(rng, 5000, 4, 0.0))), DriftConfig())
    episodes = []
    for i, rho in enumerate([0.0, 0.25, 0.25, 0.6, 0.6, 0.25, 0.0, 0.0, 0.0]):
        alerts = [a for a in _feed(monitor, _paired(rng, 1000, 4, rho), start=i * 1000) if a.type == DEPENDENCE_TYPE]
        episodes += [(i, a.data.episode, a.data.severity) for a in alerts]
    # 0.25: moderate (a change from 0.1, below 0.3) and beyond noise (z about 7.4, the threshold for 6 pairs
    # 6.5); 0.6: significant; back at 0.25 still above the lower threshold (0.8 x 0.3); at 0, ended after two
    # calm windows (end_after)
    assert episodes == [(1, "started", "moderate"), (3, "escalated", "significant"), (7, "ended", "stable")]
    blob, number = monitor.state_blob()
    assert number == CODEC.current >= 5 and json.loads(blob)[DEPENDENCE][:3] == ["stable", 0, "stable"]


def test_heavy_tailed_inputs_with_strong_non_gaussian_dependence_stay_silent():
    """Lognormal and Student-t marginals on a t copula (3 df): Pearson's r on these would be all noise, and a
    Fisher z taking 1 / n as its variance runs 1.3 times too wide (tests/models/test_dependence.py)."""
    rng = np.random.default_rng(42)

    def draw(n):
        cov = np.full((6, 6), 0.6) + 0.4 * np.eye(6)
        t = rng.multivariate_normal(np.zeros(6), cov, n) / np.sqrt(rng.chisquare(3, n) / 3)[:, None]
        return np.column_stack([np.exp(t[:, :3]), t[:, 3:] ** 3])

    monitor = ModelVersionMonitor(
        "m", "1", build_profile(_columns(draw(5000))), DriftConfig(evidence_false_alarm_windows=1e12)
    )
    alerts = []
    for i in range(60):
        alerts += _feed(monitor, draw(1000), start=i * 1000)
    # (The PCA check is not silent here: its z takes the reconstruction error's mean as normal.)
    assert [a for a in alerts if a.type == DEPENDENCE_TYPE] == []
    assert monitor.checks[DEPENDENCE].value < 5  # the largest |z| of the last window, well below the threshold


def test_the_cap_tests_the_first_features_of_the_profile_and_zero_turns_the_check_off():
    rng = np.random.default_rng(43)
    reference = _paired(rng, 2000, 12, 0.0)
    reference[:, 11] = np.round(reference[:, 11])  # few distinct values: last in the profile's order
    profile = build_profile(_columns(reference))
    assert profile.dependence is not None and profile.dependence.features[-1] == "x11"
    capped = ModelVersionMonitor("m", "1", profile, DriftConfig(dependence_max_features=5))
    assert capped.dependence is not None and capped.dependence.features == ("x0", "x1", "x2", "x3", "x4")
    assert capped.dependence.pairs == 10
    off = ModelVersionMonitor("m", "1", profile, DriftConfig(dependence_max_features=0))
    alerts = _feed(off, _paired(rng, 1000, 12, 0.9), 0)
    assert off.dependence is None and [a for a in alerts if a.type == DEPENDENCE_TYPE] == []


def test_missing_values_and_a_constant_window_column_neither_crash_nor_alarm():
    rng = np.random.default_rng(44)
    reference = _paired(rng, 5000, 4, 0.5)
    reference[rng.random(reference.shape) < 0.1] = np.nan
    monitor = ModelVersionMonitor("m", "1", build_profile(_columns(reference)), DriftConfig())
    for i in range(5):
        window = _paired(rng, 1000, 4, 0.5)
        window[rng.random(window.shape) < 0.1] = np.nan
        assert [a for a in _feed(monitor, window, i * 1000) if a.type == DEPENDENCE_TYPE] == []
    stuck = _paired(rng, 1000, 4, 0.5)
    stuck[:, 2] = 1.0  # a stuck sensor: the per-feature checks' business; its pairs read as unchanged
    assert [a for a in _feed(monitor, stuck, 5000) if a.type == DEPENDENCE_TYPE] == []


def test_a_version_registered_before_profiles_kept_pairs_is_checked_from_its_stored_test_set(engine, tmp_path):
    rng = np.random.default_rng(45)
    reference = _paired(rng, 3000, 5, 0.0)
    old_profile = build_profile(_columns(reference)).model_copy(update={"dependence": None})
    rows = [dict(zip(_names(5), map(float, r))) for r in reference[::2]]
    with Session(engine) as session, session.begin():
        registry.register(
            session,
            model_id="m",
            profile=old_profile,
            artifacts_dir=tmp_path,
            test_set={"features": rows, "targets": [0.0] * len(rows), "predictions": [0.0] * len(rows)},
        )
    stage = DataDriftStage("alerts")
    with Session(engine) as session, session.begin():
        monitor = stage._monitor(session, "m", "1")
    assert monitor is not None and monitor.dependence is not None and monitor.dependence.pairs == 10
    stage.reset()  # a rebalance: the monitor is rebuilt, the pairs are not measured again
    with Session(engine) as session, session.begin():
        again = stage._monitor(session, "m", "1")
    assert again is not monitor and list(again.dependence.reference) == list(monitor.dependence.reference)
    assert len(stage._measured_pairs) == 1
    expected = dependence_from_rows(rows, old_profile)
    assert list(monitor.dependence.reference) == expected.correlations
    alerts = _feed(monitor, _paired(rng, 1000, 5, 0.6), 0)
    assert [type(a) for a in alerts] == [DependenceDriftAlert] and alerts[0].data.pairs[0].features == ["x0", "x1"]
