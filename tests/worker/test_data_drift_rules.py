"""The data-drift rules on windows fed straight to a version's monitor: hysteresis (a drift hovering around
a threshold costs at most two alerts), prediction drift as its own event, evidence over windows for gradual
drift, the multivariate check, and the performance estimate before labels."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from undertow.models.drift.config import DriftConfig
from undertow.models.profile import build_profile
from undertow.worker.monitor.data_drift import ModelVersionMonitor
from undertow.worker.runtime.events import PredictionEvent

START = datetime(2026, 11, 1, tzinfo=UTC)


def _monitor(reference: dict, accuracy: float | None = None, **config) -> ModelVersionMonitor:
    return ModelVersionMonitor("m", "1", build_profile(reference), DriftConfig(**config), accuracy=accuracy)


def _events(rows: list[dict], predictions, scores=None, start: int = 0) -> list[PredictionEvent]:
    return [
        PredictionEvent(
            event_id=f"e{start + i}",
            model_id="m",
            ts=(START + timedelta(seconds=start + i)).isoformat(),
            features=row,
            prediction=p,
            scores=None if scores is None else scores[i],
        )
        for i, (row, p) in enumerate(zip(rows, predictions))
    ]


def _feed(monitor, events) -> list:
    alerts = []
    rows, ts = monitor.encode(events)
    for window in monitor.window.add(rows, ts):
        alerts += monitor.evaluate(window)[1]
    return alerts


def _normal_rows(rng, n, shift=0.0, names=("x0", "x1", "x2", "x3")):
    return [dict(zip(names, map(float, v))) for v in rng.normal(size=(n, len(names))) + np.eye(len(names))[0] * shift]


def test_a_drift_hovering_around_the_significant_threshold_costs_at_most_two_alerts_until_it_ends():
    rng = np.random.default_rng(1)
    reference = _normal_rows(rng, 5000)
    monitor = _monitor({k: [r[k] for r in reference] for k in reference[0]})
    alerts, counted = [], 0
    for i in range(30):  # PSI of x0 alternates around 0.25 (about 0.19 and 0.33)
        rows = _normal_rows(rng, 1000, shift=0.43 if i % 2 else 0.6)
        alerts += _feed(monitor, _events(rows, [0.0] * 1000, start=i * 1000))
        counted = i
    x0 = [a.data.episode for a in alerts if getattr(a.data, "feature", None) == "x0"]
    assert counted == 29 and x0[:1] == ["started"] and len(x0) <= 2, x0
    for i in range(3):  # back to the reference: the episode ends
        alerts += _feed(monitor, _events(_normal_rows(rng, 1000), [0.0] * 1000, start=(30 + i) * 1000))
    x0 = [a.data.episode for a in alerts if getattr(a.data, "feature", None) == "x0"]
    assert x0[-1] == "ended" and len(x0) <= 3


def test_the_models_output_drifting_is_a_prediction_drift_event_with_its_own_thresholds():
    rng = np.random.default_rng(2)
    reference = _normal_rows(rng, 5000)
    columns = {k: [r[k] for r in reference] for k in reference[0]} | {"__prediction__": list(rng.normal(size=5000))}
    monitor = _monitor(columns, prediction_psi_moderate=0.5, prediction_psi_significant=0.8)
    shifted = _feed(monitor, _events(_normal_rows(rng, 1000), list(rng.normal(0.6, 1, 1000))))
    assert shifted == []  # PSI about 0.35: below this model's own prediction thresholds
    alerts = _feed(monitor, _events(_normal_rows(rng, 1000), list(rng.normal(1.5, 1, 1000)), start=1000))
    assert [(a.type, a.data.feature) for a in alerts] == [("undertow.drift.prediction", "__prediction__")]


def test_gradual_drift_is_found_by_evidence_over_windows_before_any_one_window_shows_it():
    rng = np.random.default_rng(3)
    reference = _normal_rows(rng, 5000)
    columns = {k: [r[k] for r in reference] for k in reference[0]}
    first = {}
    for rule, config in (("with evidence", {}), ("window only", {"evidence_false_alarm_windows": 1e300})):
        monitor, stream = _monitor(columns, **config), np.random.default_rng(30)
        for i in range(60):  # x0's mean moves 0.01 sd per window
            alerts = _feed(monitor, _events(_normal_rows(stream, 1000, shift=0.01 * i), [0.0] * 1000, start=i * 1000))
            x0 = [a.data for a in alerts if getattr(a.data, "feature", None) == "x0"]
            if x0:
                first[rule] = (i, x0[0].rule)
                break
    assert first["with evidence"][1] == "cumulative" and first["window only"][1] == "window"
    assert first["with evidence"][0] + 5 <= first["window only"][0], first


def _first_alarms(monitor, matrix: np.ndarray, after: int = 0) -> tuple[int | None, int | None, int]:
    """Windows ending after ``after`` of Undertow's first x0 episode and of KS-Bonferroni's first x0 alarm
    (any KS p-value below 0.01 / features), and Undertow's episodes started on any feature."""
    names = [f"x{j}" for j in range(matrix.shape[1])]
    ours = ks = None
    started = 0
    for i in range(matrix.shape[0] // 1000):
        rows, ts = monitor.encode(
            _events(
                [dict(zip(names, map(float, r))) for r in matrix[i * 1000 : (i + 1) * 1000]],
                [0.0] * 1000,
                start=i * 1000,
            )
        )
        for window in monitor.window.add(rows, ts):
            results, alerts = monitor.evaluate(window)
            started += sum(1 for a in alerts if a.data.episode == "started")
            end = (window.index + 1) * 1000
            if end <= after:
                continue
            if ours is None and any(getattr(a.data, "feature", None) == "x0" for a in alerts):
                ours = end
            if ks is None and any(r["feature"] == "x0" and r["ks_pvalue"] < 0.01 / len(names) for r in results):
                ks = end
    return ours, ks, started


def test_gradual_drift_is_found_no_later_than_ks_bonferroni_and_stationary_data_raises_fewer_false_alarms():
    ours, theirs, false_ours, false_theirs = [], [], 0, 0
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        reference = rng.normal(size=(5000, 4))
        columns = {f"x{j}": list(reference[:, j]) for j in range(4)}
        ramp = rng.normal(size=(40_000, 4))
        ramp[:, 0] += np.clip((np.arange(40_000) - 20_000) / 20_000, 0, 1) * 0.5  # to +0.5 sd over 20,000
        a, b, _ = _first_alarms(_monitor(columns), ramp, after=20_000)
        ours.append(a)
        theirs.append(b)
        monitor = _monitor(columns)
        stationary = rng.normal(size=(50_000, 4))
        _, _, false_ours_here = _first_alarms(monitor, stationary)
        false_ours += false_ours_here
        false_theirs += sum(
            1
            for i in range(50)
            if any(  # KS-Bonferroni's alarmed windows, any feature
                _ks_p(monitor, stationary[i * 1000 : (i + 1) * 1000, j], j) < 0.01 / 4 for j in range(4)
            )
        )
    assert None not in ours and np.median(ours) <= np.median(theirs), (ours, theirs)
    assert false_ours <= false_theirs, (false_ours, false_theirs)


def _tied_skewed(rng, n: int, ramp_from: int | None = None, ramp: int = 20_000) -> np.ndarray:
    """Four real-looking features: integer counts with a heavy right tail (x0, the one that drifts: its log
    scale moves by 0.4 over ``ramp`` predictions), a binary flag, a skewed measurement on a coarse grid and
    a 17-level score."""
    t = np.arange(n)
    shift = 0.0 if ramp_from is None else np.clip((t - ramp_from) / ramp, 0, 1) * 0.4
    return np.column_stack(
        [
            np.floor(rng.lognormal(0.5 + shift, 0.8, n)),
            (rng.random(n) < 0.3).astype(float),
            np.round(rng.gamma(2.0, 1.5, n), 1),
            rng.binomial(16, 0.25, n).astype(float),
        ]
    )


def test_gradual_drift_on_tied_skewed_features_is_found_no_later_than_ks_bonferroni_with_fewer_false_alarms():
    """Real features tie and skew: plain KS piles its p-values up near 1 there, which the evidence over
    windows once read as evidence against drift, so a gradual drift started from below."""
    ours, theirs, false_ours, false_theirs = [], [], 0, 0
    for seed in range(5):
        rng = np.random.default_rng(200 + seed)
        reference = _tied_skewed(rng, 5000)
        columns = {f"x{j}": list(reference[:, j]) for j in range(4)}
        a, b, _ = _first_alarms(_monitor(columns), _tied_skewed(rng, 40_000, ramp_from=20_000), after=20_000)
        ours.append(a)
        theirs.append(b)
        monitor = _monitor(columns)
        stationary = _tied_skewed(rng, 50_000)
        false_ours += _first_alarms(monitor, stationary)[2]
        false_theirs += sum(
            1
            for i in range(50)
            if any(_ks_p(monitor, stationary[i * 1000 : (i + 1) * 1000, j], j) < 0.01 / 4 for j in range(4))
        )
    assert None not in ours and np.median(ours) <= np.median(theirs), (ours, theirs)
    assert false_ours <= false_theirs, (false_ours, false_theirs)


def _ks_p(monitor, column: np.ndarray, j: int) -> float:
    return monitor.evaluators[j].evaluate(column).ks_pvalue


def test_the_evidence_budget_is_per_model_so_more_features_mean_a_stricter_test_per_feature():
    rng = np.random.default_rng(9)
    reference = rng.normal(size=(2000, 8))
    two = _monitor({f"x{j}": list(reference[:, j]) for j in range(2)})
    eight = _monitor({f"x{j}": list(reference[:, j]) for j in range(8)})
    from scipy.special import ndtr

    # One false alarm per 250 windows of the model: split over the input features and the moving sums (as
    # many false alarms as two independent tests).
    assert 2 * 2 * 250 * float(ndtr(-two.evidence.threshold)) == pytest.approx(1)
    assert 2 * 8 * 250 * float(ndtr(-eight.evidence.threshold)) == pytest.approx(1)
    assert eight.evidence.threshold > two.evidence.threshold


def _correlated(rng, n, rho):
    x0 = rng.normal(size=n)
    x1 = rho * x0 + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return [{"x0": float(a), "x1": float(b), "x2": float(c)} for a, b, c in zip(x0, x1, rng.normal(size=n))]


def test_a_correlation_only_drift_is_found_by_the_multivariate_and_dependence_checks_and_stationary_data_stays_silent():
    rng = np.random.default_rng(4)
    reference = _correlated(rng, 5000, 0.8)
    monitor = _monitor({k: [r[k] for r in reference] for k in reference[0]})
    quiet = []
    for i in range(100):  # 100,000 stationary predictions
        quiet += _feed(monitor, _events(_correlated(rng, 1000, 0.8), [0.0] * 1000, start=i * 1000))
    assert quiet == []
    flipped = _feed(monitor, _events(_correlated(rng, 1000, -0.8), [0.0] * 1000, start=100_000))
    # the marginals did not move
    assert [a.type for a in flipped] == ["undertow.drift.multivariate", "undertow.drift.dependence"]
    assert flipped[0].data.z > 6 and flipped[0].data.features == ["x0", "x1", "x2"]
    pair = flipped[1].data.pairs[0]
    assert pair.features == ["x0", "x1"] and pair.reference > 0.75 and pair.value < -0.75


def test_the_performance_estimate_flags_a_classifier_losing_accuracy_under_covariate_shift_before_labels():
    rng = np.random.default_rng(5)

    def scored(n, shift):
        x = rng.normal(shift, 1, n)
        p = 1 / (1 + np.exp(-3 * x))  # calibrated: the true P(class "1")
        predicted = np.where(p >= 0.5, "1", "0")
        realised = float(np.mean(predicted == np.where(rng.random(n) < p, "1", "0")))  # labels, hours later
        return (
            [{"x": float(v)} for v in x],
            list(predicted),
            [{"1": float(q), "0": float(1 - q)} for q in p],
            realised,
        )

    rows, _, _, accuracy = scored(5000, 1.5)  # validation: far from the boundary, about 0.94
    monitor = _monitor({"x": [r["x"] for r in rows]}, accuracy=accuracy)
    rows, predicted, scores, _ = scored(1000, 1.5)
    assert _feed(monitor, _events(rows, predicted, scores)) == []
    rows, predicted, scores, realised = scored(1000, 0.0)  # shifted onto the boundary: about 0.75
    alerts = [
        a
        for a in _feed(monitor, _events(rows, predicted, scores, start=1000))
        if a.type == "undertow.performance.estimated"
    ]
    assert len(alerts) == 1 and alerts[0].data.estimated is True
    assert abs(alerts[0].data.value - realised) < 0.03 and alerts[0].data.value < accuracy - 0.05


@pytest.mark.parametrize("width", ["legacy", "new"])
def test_a_window_stored_before_the_confidence_column_still_loads(width):
    from types import SimpleNamespace

    rng = np.random.default_rng(6)
    reference = _normal_rows(rng, 2000)
    profile = build_profile({k: [r[k] for r in reference] for k in reference[0]})
    columns = 4 + (width == "new")
    state = SimpleNamespace(
        buffer=np.zeros((10, columns)).tobytes(),
        buffer_ts=np.zeros(10).tobytes(),
        next_window=0,
        window_start_ts=None,
        since_evaluation=0,
        late_events=0,
        episodes="{}",
        state_format=None,
    )  # written before formats were numbered
    monitor = ModelVersionMonitor("m", "1", profile, DriftConfig(), state, accuracy=0.9)
    assert monitor.scored == (width == "new") and monitor.window.rows.shape == (10, columns)


@pytest.mark.parametrize(
    "names",
    [("colour",), ("colour", "x0"), ("colour", "x0", "x1", "x2")],
    ids=["categorical only", "one numeric", "several numeric"],
)
def test_encoding_takes_any_mix_of_feature_kinds_and_counts_nulls_strings_and_absent_values_as_missing(names):
    rng = np.random.default_rng(8)
    reference = [
        {name: str(rng.choice(["red", "blue"])) if name == "colour" else float(rng.normal()) for name in names}
        for _ in range(500)
    ]
    monitor = _monitor({k: [r[k] for r in reference] for k in names})
    clean = [{name: "red" if name == "colour" else 0.5 for name in names}] * 3
    messy = [dict(clean[0]), {**clean[0], names[-1]: None}, {k: v for k, v in clean[0].items() if k != names[-1]}]
    if len(names) > 1:
        messy.append({**clean[0], names[-1]: "oops"})  # a string in a numeric column counts as missing
    rows, _ = monitor.encode(_events(clean, [1.0] * len(clean)))
    assert not np.isnan(rows[:, : len(names)]).any()
    rows, _ = monitor.encode(_events(messy, [1.0] * len(messy)))
    last = monitor.columns.index(names[-1])
    assert not np.isnan(rows[0, : len(names)]).any()
    assert np.isnan(rows[1:, last]).all()
