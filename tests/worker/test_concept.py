"""Concept drift: detectors against river on the same error streams, and end to end with late labels."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from river.drift import PageHinkley as RiverPageHinkley
from sqlalchemy import text

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import Cusum, PageHinkley, RollingMean
from undertow.models.drift.production_baseline import reference_z, threshold_for_all
from undertow.models.reference import error_sample
from undertow.worker.dev.sample import SampleStream
from undertow.worker.monitor.concept import ErrorStreamMonitor
from undertow.worker.runtime import cloudevents


def _record_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "data" / "concept_state" / "record.py"
    spec = importlib.util.spec_from_file_location("concept_state_record", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = _record_module()


def _episode_as_format_9(episode: dict) -> dict:
    """Format 10's episode as format 9 wrote it: only an episode under format 9's rule (or none) has one."""
    if episode["legacy"] is not None:
        return episode["legacy"]
    assert episode["bank"] is None and not episode["level_z"], "today's episode rule has no older format"
    return {
        "level_z": [],
        "level": None,
        "level_from": episode["level_from"],
        "escalation": None,
        "escalation_pt": None,
    }


def _positional(blob: dict) -> dict:
    """A stream's typed state (formats 9-10) with its detector states as the positional lists of formats 1-8."""

    def numbers(state: dict | None, kind: str) -> list | None:
        if state is None:
            return None
        if kind == "page_hinkley":
            return [
                state["n"],
                state["mean"],
                state["sum_increase"],
                state["sum_decrease"],
                min(state["min_increase"], 1e308),
                state["max_decrease"],
                float(state["drift_detected"]),
            ]
        if kind == "cusum":
            return [state["sum"], float(state["drift_detected"])]
        if kind.startswith("rolling_mean"):
            return [
                state["count"],
                float(state["drift_detected"]),
                math.nan if state["value"] is None else state["value"],
                *state["values"],
            ]
        return [
            math.nan if state["first"] is None else float(state["first"]),
            math.nan if state["floor"] is None else float(state["floor"]),
            float(state["drift_detected"]),
            float(state["too_late"]),
            state["total"],
            *state["prefix"],
        ]

    episode = _episode_as_format_9(blob["episode"])
    assert blob["detectors"].get("since") is None, "a bank started after an episode has no older format"
    return {
        "detectors": {name: numbers(state, name) for name, state in blob["detectors"].items() if name != "since"},
        "production": {
            key: (
                list(map(list, value))
                if key == "tighten_at" and value
                else list(value)
                if isinstance(value, list)
                else value
            )
            for key, value in blob["production"].items()
        },
        "episode": {
            **episode,
            "escalation": numbers(episode["escalation"], "cusum"),
            "escalation_pt": numbers(episode["escalation_pt"], "prediction_time_cusum"),
        },
    }


def _as_written_before(state: dict, format_number: int):
    """A monitor's row as the release writing ``format_number`` (2-8: before formats were numbered) wrote it."""
    typed = json.loads(state["detectors"])
    blob = _positional(typed)
    if typed.get("log_loss") is not None:
        loss = typed["log_loss"]
        blob["log_loss"] = {**loss["counts"], "detectors": json.dumps(_positional(loss))}
    row = {**state, "detectors": json.dumps(blob), "state_format": None}
    return SimpleNamespace(**(row if format_number == 8 else RECORD._older(row, format_number)))


def _errors(rng, n: int, change: int | None, shift: float) -> np.ndarray:
    """|label - prediction| of a model whose labels move by ``shift`` from ``change`` on."""
    noise = rng.normal(0, 0.5, n)
    if change is not None:
        noise[change:] += shift
    return np.abs(noise)


def _run(errors, baseline) -> tuple[list[int], list[int]]:
    ours = ErrorStreamMonitor(
        "m", "1", DriftConfig(), float(baseline.mean()), float(baseline.std()), error_sample=error_sample(baseline)
    )
    river = RiverPageHinkley()
    our_alerts, river_alarms = [], []
    for i, e in enumerate(errors):
        if any(a.data.episode == "started" for a in ours.update(float(e), "absolute_error", float(i))):
            our_alerts.append(i)
        river.update(float(e))
        if river.drift_detected:
            river_alarms.append(i)
    return our_alerts, river_alarms


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_abrupt_concept_drift_is_found_no_later_than_river_page_hinkley_with_one_alert(seed):
    rng = np.random.default_rng(seed)
    baseline = _errors(rng, 5000, None, 0)
    change = 20_000
    ours, river = _run(_errors(rng, 40_000, change, 1.0), baseline)
    our_delay = min(i for i in ours if i >= change) - change
    river_delay = min(i for i in river if i >= change) - change
    assert our_delay <= river_delay
    assert [i for i in ours if i >= change] == [change + our_delay]  # one alert for the whole episode


def test_stationary_100k_labels_give_fewer_false_alarms_than_river_page_hinkley():
    ours_total = river_total = 0
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        ours, river = _run(_errors(rng, 100_000, None, 0), _errors(rng, 5000, None, 0))
        ours_total += len(ours)
        river_total += len(river)
    assert river_total >= 3  # river's raw-unit defaults do fire on this stream
    assert ours_total < river_total


def test_detector_state_round_trips_through_json():
    rng = np.random.default_rng(4)
    z = rng.normal(size=700)
    for make in (
        lambda: PageHinkley(),
        lambda: Cusum(),
        lambda: RollingMean(window=100, step=10),
        lambda: RollingMean(window=100, step=10, weights="linear"),
    ):
        a, b = make(), make()
        for v in z[:500]:
            a.update(float(v))
        state = type(a.state()).model_validate_json(a.state().model_dump_json())
        b.from_state(state)
        for v in z[500:]:
            a.update(float(v))
            b.update(float(v))
            assert a.drift_detected == b.drift_detected
        assert a.state() == b.state()


def test_cusum_threshold_keeps_its_false_alarm_rate_on_skewed_errors():
    rng = np.random.default_rng(5)
    reference = np.abs(rng.normal(size=5000))
    mean, sd = reference.mean(), reference.std()
    cusum = Cusum(k=0.5, false_alarm_every=5000, reference_z=(reference - mean) / sd)
    alarms = 0
    for e in np.abs(rng.normal(size=200_000)):
        cusum.update(float((e - mean) / sd))
        alarms += cusum.drift_detected
    assert 200_000 / 5000 * 0.6 <= alarms <= 200_000 / 5000 * 1.5  # ~40 expected


def _late_labelled_stream(n: int, change: int, late: int, lost_every: int, shift: float, seed: int):
    """Predictions in order; each label sent ``late`` predictions later; every ``lost_every``-th never."""
    stream = SampleStream(seed=seed)
    pairs = list(stream.events(change)) + list(stream.events(n - change, start_index=change, concept_shift=shift))
    sent_labels = []
    for i, (prediction, _) in enumerate(pairs):
        yield "prediction", prediction
        j = i - late
        if j >= 0 and j % lost_every != 0:
            sent_labels.append(j)
            yield "label", pairs[j][1]
    for j in range(max(0, n - late), n):
        if j % lost_every != 0:
            yield "label", pairs[j][1]


def _rows(env, sql: str) -> list[tuple]:
    with env.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


JOIN_ENV = {"UNDERTOW_JOIN_TTL_SECONDS": "7200", "UNDERTOW_JOIN_MAX_PENDING": "5000"}


@pytest.mark.slow
def test_late_and_lost_labels_still_detect_drift_once_and_ask_for_one_retrain(env):
    env.register_reference(SampleStream(seed=31))
    n, change = 12_000, 6_000
    env.send_sequence(_late_labelled_stream(n, change, late=2000, lost_every=20, shift=1.5, seed=31))
    env.drain(env=JOIN_ENV)

    concept = _rows(env, "SELECT cloudevent FROM alerts WHERE type = 'undertow.drift.concept'")
    assert len(concept) == 1
    alert = json.loads(concept[0][0])
    assert alert["data"]["label_count"] > change * 0.95 - 2000  # after the change, counted in labels
    requests = _rows(env, "SELECT request_id, status, alert_ids, cloudevent FROM retrain_requests")
    assert len(requests) == 1
    request_id, status, alert_ids, event = requests[0]
    assert status == "open" and json.loads(alert_ids) == [alert["id"]]
    assert json.loads(event)["data"]["data_policy"] == {"kind": "rolling", "max_pairs": 50_000}
    published = env.read_all(env.topics.retrain, expected=1)
    assert [json.loads(r.value)["id"] for r in published] == [request_id]

    ((pending_p, pending_l, joined, expired_p, evicted_p),) = _rows(
        env,
        "SELECT pending_predictions, pending_labels, joined, expired_predictions, evicted_predictions FROM join_stats",
    )
    lost = len(range(0, n, 20))
    assert joined == n - lost
    assert pending_p + expired_p + evicted_p == lost  # every prediction without a label is accounted for
    assert pending_p <= 5000 and pending_l == 0
    assert expired_p > 0
    assert _rows(env, "SELECT COUNT(*) FROM join_pending WHERE kind = 'prediction'") == [(pending_p,)]
    assert _rows(env, "SELECT COUNT(*) FROM labelled_pairs") == [(joined,)]


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_with_labels_gives_the_uninterrupted_state(make_env):
    def stream():
        return _late_labelled_stream(8000, 4000, late=500, lost_every=20, shift=1.5, seed=32)

    uninterrupted, crashed = make_env(), make_env()
    for world in (uninterrupted, crashed):
        world.register_reference(SampleStream(seed=32))
    uninterrupted.send_sequence(stream())
    uninterrupted.drain(env=JOIN_ENV)
    kills = crashed.run_with_kills(
        lambda: crashed.send_sequence(stream(), rate=350), seed=9, env={**JOIN_ENV, "UNDERTOW_BATCH_MAX_RECORDS": "150"}
    )
    assert kills >= 3

    queries = [
        "SELECT model_id, version, labels, error_sum, in_episode, episode_started_label, episodes, "
        "silenced_alarms, calm_evaluations, detectors FROM concept_state",
        "SELECT model_id, kind, event_id, version, ts, payload FROM join_pending ORDER BY kind, event_id",
        # All but arrived_at: the wall clock of the last arrival, not state that a replay reproduces.
        "SELECT model_id, pending_predictions, pending_labels, joined, expired_predictions, expired_labels, "
        "evicted_predictions, evicted_labels, watermark_ts FROM join_stats",
        "SELECT model_id, seq, event_id, version, error FROM labelled_pairs ORDER BY seq",
        "SELECT request_id, model_id, version, status, created_ts, alert_ids FROM retrain_requests",
        "SELECT id FROM alerts ORDER BY id",
    ]
    for sql in queries:
        assert _rows(crashed, sql) == _rows(uninterrupted, sql), sql
    assert len(_rows(uninterrupted, queries[4])) == 1


def _production_stream(n: int, seed: int, gap: float, shifts: dict[int, float]):
    """Half-normal errors ``gap`` above a validation sample; ``shifts``: prediction index -> added level in
    validation sd; one prediction a second, labels after lognormal delays (median 5 min), in arrival order."""
    rng = np.random.default_rng(seed)
    validation = np.abs(rng.normal(0, 1, 5000))
    level = np.zeros(n)
    for start, shift in shifts.items():
        level[start:] += shift
    errors = np.abs(rng.normal(0, 1, n)) * (1 + gap) + level * validation.std()
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(300), 1.0, n)
    order = np.argsort(arrived, kind="stable")
    return validation, [(float(errors[i]), float(arrived[i]), float(predicted[i])) for i in order]


def _alerts(validation, labels, monitor=None):
    monitor = monitor or ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    out = []
    for error, arrived, predicted in labels:
        out += [(a.data.episode, predicted, a) for a in monitor.update(error, "absolute_error", arrived, predicted)]
    return out, monitor


def test_production_10_percent_above_validation_gives_one_deployment_gap_and_no_concept_alert():
    for seed in (1, 2):
        validation, labels = _production_stream(100_000, seed, gap=0.10, shifts={})
        alerts, _ = _alerts(validation, labels)
        assert [episode for episode, _, _ in alerts] == ["deployment_gap"], alerts
        gap = alerts[0][2].data
        assert gap.detector == "production_baseline" and gap.unit == "error" and gap.value > gap.threshold


def test_a_classifier_gap_too_small_for_the_first_labels_is_alerted_once_as_the_baseline_refines():
    # 15 % above a 10 % error rate is 1.4 standard errors of the difference on 1,000 labels (the validation
    # estimate's own, from 5,000 rows, counted): not significant there, but on the labels the baseline
    # keeps learning from.
    rng = np.random.default_rng(11)
    validation = np.zeros(5000)
    validation[:500] = 1.0  # exactly 10 %
    errors = (rng.random(60_000) < 0.115).astype(float)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    alerts = [
        (i, a.data)
        for i, e in enumerate(errors)
        for a in monitor.update(float(e), "misclassification", float(i), float(i))
    ]
    assert [a.episode for _, a in alerts] == ["deployment_gap"], alerts
    at, gap = alerts[0]
    assert 1000 < at <= 10_000 and gap.value > gap.threshold and gap.metric == "misclassification"


def test_a_deployment_gap_is_not_tested_across_a_concept_change():
    # The same stream as above, but the error rate rises to 40 % for labels 2,000-4,000 before the gap is
    # significant: the episode that starts makes any later gap a change's, so no deployment_gap is raised.
    rng = np.random.default_rng(11)
    validation = np.zeros(5000)
    validation[:500] = 1.0
    rate = np.full(60_000, 0.115)
    rate[2000:4000] = 0.4
    errors = (rng.random(60_000) < rate).astype(float)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    episodes = [
        a.data.episode
        for i, e in enumerate(errors)
        for a in monitor.update(float(e), "misclassification", float(i), float(i))
    ]
    assert episodes[0] == "started" and "ended" in episodes and "deployment_gap" not in episodes, episodes


def test_a_drift_under_way_while_the_baseline_refines_is_seldom_taken_for_a_deployment_gap():
    # A classifier that matches its validation error at deployment, then drifts slowly (10 % to 15 % error
    # over labels 1,000-9,000), while the production baseline refines. Taking those labels in made the
    # baseline report the drift as a deployment gap in 7 of these 10 seeds; the newest labels are now
    # compared with the first, and a clear rise stops the refinement instead.
    gaps, started = 0, 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        validation = (rng.random(5000) < 0.10).astype(float)
        rate = 0.10 * (1 + 0.5 * np.clip((np.arange(20_000) - 1000) / 8000, 0, 1))
        errors = (rng.random(20_000) < rate).astype(float)
        monitor = ErrorStreamMonitor(
            "m",
            "1",
            DriftConfig(),
            float(validation.mean()),
            float(validation.std()),
            error_sample=error_sample(validation),
        )
        episodes = [
            a.data.episode
            for i, e in enumerate(errors)
            for a in monitor.update(float(e), "misclassification", float(i), float(i))
        ]
        gaps += "deployment_gap" in episodes
        started += "started" in episodes
    assert gaps <= 3 and started >= 8, (gaps, started)


def test_state_written_before_the_first_labels_were_kept_still_refines():
    validation, labels = _production_stream(4_600, 5, gap=0.0, shifts={})
    _, monitor = _alerts(validation, labels[:3_500])
    state = monitor.state_values()
    assert json.loads(state["detectors"])["production"]["first_labels"][0] == 1_000
    old = _as_written_before(state, 4)  # before the trend rule: no first labels
    restored = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=old,
        error_sample=error_sample(validation),
    )
    assert _alerts(validation, labels[3_500:], restored)[0] == []
    assert restored.error.baseline.labels == 4_000 and restored.error.baseline.refine is not None


def test_the_cusum_thresholds_tighten_as_the_baseline_refines_and_a_restart_mid_refinement_changes_nothing():

    validation, labels = _production_stream(10_800, 8, gap=0.1, shifts={})
    config = DriftConfig(production_refine_labels=10_000)
    first = np.array([error for error, _, _ in labels[:1_000]])

    def calibrated(baseline_labels):
        # On the first 1,000 errors and the validation sample, as when the baseline was set, with the
        # allowance of that many labels (2 standard errors: 0.02 sd on 10,000, not 0.063 on 1,000), for
        # the run lengths in arrival order that the prediction-time CUSUMs' factors measured then give.
        samples = [
            reference_z(validation.tolist(), float(validation.mean()), float(validation.std()), baseline_labels),
            reference_z(first, float(first.mean()), float(first.std()), baseline_labels),
        ]
        factor, small_factor = monitor.error.baseline.pt_factors
        return threshold_for_all(samples, 0.5, 1e7 / factor), threshold_for_all(samples, 0.25, 1e7 / small_factor)

    monitor = ErrorStreamMonitor(
        "m", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    _alerts(validation, labels[:1_000], monitor)
    assert monitor.error.baseline.pt_factors[0] > 2 and monitor.error.baseline.pt_factors[1] > 1
    set_at = (monitor.error.baseline.cusum_h, monitor.error.baseline.small_cusum_h)
    _alerts(validation, labels[1_000:5_000], monitor)
    # Each doubling of the first 1,000 labels, then the 10,000 it settles on.
    assert [t[0] for t in monitor.error.baseline.tighten_at] == [8_000, 10_000]
    assert (monitor.error.baseline.cusum_h, monitor.error.baseline.small_cusum_h) == pytest.approx(
        calibrated(4_000), rel=1e-9
    )
    state = monitor.state_values()
    assert len(json.loads(state["detectors"])["production"]["tighten_at"]) == 2  # numbers, not the errors
    restored = ErrorStreamMonitor(
        "m",
        "1",
        config,
        float(validation.mean()),
        float(validation.std()),
        state=SimpleNamespace(**state),
        error_sample=error_sample(validation),
    )
    for m in (monitor, restored):
        assert _alerts(validation, labels[5_000:], m)[0] == []
    assert (
        monitor.error.baseline.labels == 10_000
        and monitor.error.baseline.refine is None
        and monitor.error.baseline.tighten_at is None
    )
    assert restored.state_values() == monitor.state_values()
    assert (monitor.error.baseline.cusum_h, monitor.error.baseline.small_cusum_h) == pytest.approx(
        calibrated(10_000), rel=1e-9
    )
    assert (
        monitor.error.baseline.cusum_h < 0.95 * set_at[0] and monitor.error.baseline.small_cusum_h < 0.9 * set_at[1]
    ), set_at
    assert monitor.error.bank.detectors["prediction_time_cusum"].threshold == monitor.error.baseline.cusum_h
    assert monitor.error.bank.detectors["prediction_time_cusum_small"].threshold == monitor.error.baseline.small_cusum_h


def test_state_from_before_the_milestones_settles_with_its_one_pair_of_thresholds():
    validation, labels = _production_stream(10_800, 8, gap=0.1, shifts={})
    config = DriftConfig(production_refine_labels=10_000)
    monitor = ErrorStreamMonitor(
        "m", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    _alerts(validation, labels[:1_500], monitor)  # set, not yet tightened: as old state had it
    first = [monitor.error.baseline.cusum_h, monitor.error.baseline.small_cusum_h]
    state = monitor.state_values()
    settled = json.loads(state["detectors"])["production"]["tighten_at"][-1][1:]
    # As written then: the pair for when it settles (settled_thresholds).
    old = ErrorStreamMonitor(
        "m",
        "1",
        config,
        float(validation.mean()),
        float(validation.std()),
        state=_as_written_before(state, 7),
        error_sample=error_sample(validation),
    )
    for count, (error, arrived, predicted) in enumerate(labels[1_500:], start=1_501):
        assert old.update(error, "absolute_error", arrived, predicted) == []
        assert [old.error.baseline.cusum_h, old.error.baseline.small_cusum_h] == (
            first if count < 10_000 else settled
        ), count
    assert old.error.baseline.labels == 10_000 and old.error.baseline.tighten_at is None
    assert all(tight < loose for tight, loose in zip(settled, first))


@pytest.mark.parametrize(
    ("baseline", "refine", "milestones"),
    [
        (1_000, 30_000, [2_000, 4_000, 8_000, 16_000, 30_000]),
        (1_500, 30_000, [3_000, 6_000, 12_000, 24_000, 30_000]),
        (1_000, 2_500, [2_000, 3_000]),
        (2_000, 2_001, [3_000]),
        (1_850, 30_000, [4_000, 8_000, 15_000, 30_000]),
    ],
)  # 29,600 rounds up to where it settles: once
def test_the_cusum_thresholds_tighten_at_each_doubling_of_the_first_labels_and_where_the_baseline_settles(
    baseline, refine, milestones
):
    config = DriftConfig(production_baseline_labels=baseline, production_refine_labels=refine)
    assert ErrorStreamMonitor("m", "1", config, 0.5, 0.3).error.baseline._milestones(baseline) == milestones


@pytest.mark.parametrize(
    ("baseline", "refine", "settles_on"),
    [(1_000, 10_000, 10_000), (1_500, 10_000, 10_000), (1_000, 2_500, 3_000), (2_000, 2_001, 3_000)],
)
def test_the_baseline_settles_on_the_labels_its_thresholds_were_calibrated_for(baseline, refine, settles_on):
    validation, labels = _production_stream(settles_on + 1_000, 10, gap=0.0, shifts={})
    config = DriftConfig(production_baseline_labels=baseline, production_refine_labels=refine)
    monitor = ErrorStreamMonitor(
        "m", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    for count, (error, arrived, predicted) in enumerate(labels[:settles_on], start=1):
        monitor.update(error, "absolute_error", arrived, predicted)
        assert (monitor.error.baseline.tighten_at is None) == (count < baseline or count == settles_on)
    assert monitor.error.baseline.refine is None and monitor.error.baseline.labels == settles_on


def test_a_half_sd_step_is_found_by_the_small_prediction_time_cusum_without_false_alarms_before_it():
    validation, labels = _production_stream(40_000, 6, gap=0.1, shifts={25_000: 0.5})
    alerts, monitor = _alerts(validation, labels)
    started = [(predicted, a.data) for episode, predicted, a in alerts if episode == "started"]
    assert len(started) == 1 and 25_000 <= started[0][0] < 26_500, started
    assert (
        started[0][1].detector == "prediction_time_cusum"
        and started[0][1].threshold == monitor.error.baseline.small_cusum_h
    )
    # When the change began comes from the CUSUM that fired.
    assert abs(cloudevents.epoch(started[0][1].change_started_at) - 25_000) < 300


def test_state_written_before_the_small_cusum_existed_still_loads():
    validation, labels = _production_stream(5_000, 7, gap=0.3, shifts={})
    _, monitor = _alerts(validation, labels)
    state = monitor.state_values()
    old = _as_written_before(state, 3)  # before the k/2 CUSUM and gap_pending
    restored = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=old,
        error_sample=error_sample(validation),
    )
    # Scaled from the calibrated k CUSUM's threshold: near what calibration gives, not below it by the gap.
    assert (
        restored.error.baseline.small_cusum_h == pytest.approx(monitor.error.baseline.small_cusum_h, rel=0.1)
        and not restored.error.baseline.gap_pending
    )
    assert restored.update(1.0, "absolute_error", 5_001.0, 5_000.0) == []


def test_state_with_the_arrival_order_cusum_of_before_loads_and_goes_on_as_state_without_it():
    validation, labels = _production_stream(6_000, 12, gap=0.1, shifts={4_000: 1.0})
    _, monitor = _alerts(validation, labels[:3_000])
    state = monitor.state_values()
    assert "cusum" not in json.loads(state["detectors"])["detectors"]
    old = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=_as_written_before(state, 6),  # as written while it existed
        error_sample=error_sample(validation),
    )
    alerts, _ = _alerts(validation, labels[3_000:], old)
    assert [episode for episode, _, _ in alerts][:1] == ["started"]
    # Its cusum entry is ignored: whatever it held, the same alerts and state follow.
    row = _as_written_before(state, 6)
    blob = json.loads(row.detectors)
    blob["detectors"]["cusum"] = [1e6, 1.0]
    other = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=SimpleNamespace(**{**vars(row), "detectors": json.dumps(blob)}),
        error_sample=error_sample(validation),
    )
    assert alerts == _alerts(validation, labels[3_000:], other)[0] and old.state_values() == other.state_values()


def test_the_linear_rolling_mean_weighs_each_label_by_its_age_in_the_window():
    rng = np.random.default_rng(8)
    z = rng.normal(size=1_337)
    rolling = RollingMean(window=300, step=1, sigmas=4.3, weights="linear")
    weights = np.arange(1, 301) / (300 * 301 / 2)
    for i, value in enumerate(z, start=1):
        rolling.update(float(value))
        if i >= 300:  # across the ring buffer's wrap-around too
            assert rolling.value == pytest.approx(float(np.dot(z[i - 300 : i], weights)), abs=1e-12)
    standard_error = math.sqrt(np.sum(weights**2))
    assert rolling.threshold == pytest.approx(4.3 * standard_error)
    assert standard_error == pytest.approx(math.sqrt(4 / (3 * 300)), rel=0.01)
    # Skewness counts less than in an equal mean of the same window: the weights' effective window is smaller.
    skewed = RollingMean(window=300, step=1, sigmas=4.3, skewness=2.0, weights="linear")
    equal = RollingMean(window=300, step=1, sigmas=4.3, skewness=2.0)
    assert (skewed.threshold / standard_error - 4.3) > (equal.threshold * math.sqrt(300) - 4.3) > 0
    with pytest.raises(ValueError, match="weights"):
        RollingMean(weights="exponential")


def test_the_long_rolling_mean_finds_a_ramp_sooner_with_linear_weights_at_its_calibrated_threshold():
    # bench/rolling_false_alarms.py: at 4.4 standard errors the linear mean keeps the promised false-alarm rate,
    # as the equal one did at 4.5; on a ramp the linear mean lags a third of its window instead of half.
    config = DriftConfig()
    found = {"linear": [], "equal": []}
    for seed in range(9):
        rng = np.random.default_rng(seed)
        ramp = rng.normal(size=12_000) + np.clip(np.arange(12_000) - 2_000, 0, None) * 7e-5  # 0.14 sd per 2,000
        for weights, sigmas in (("linear", config.rolling_long_sigmas), ("equal", 4.5)):
            rolling = RollingMean(config.rolling_long_window, config.rolling_step, sigmas, 10_000, weights=weights)
            for i, z in enumerate(ramp):  # noqa: B007 - i is read after the loop: where it stopped
                rolling.update(float(z))
                if rolling.drift_detected:
                    break
            found[weights].append(i)
    assert np.median(found["linear"]) < np.median(found["equal"]) - 150
    monitor = ErrorStreamMonitor("m", "1", config, 1.0, 1.0)
    assert monitor.error.bank.detectors["rolling_mean_long"].weights == "linear"
    assert monitor.error.bank.detectors["rolling_mean"].weights == "equal"


def test_rolling_thresholds_for_skewed_errors_match_the_binomial_tail():
    from scipy import stats

    # 0/1 errors at 10 %: the window mean's exact upper tail (binomial) at the normal 4.7 sd's probability.
    skewness = 0.8 / math.sqrt(0.09)
    for window, sigmas in ((500, 4.7), (2000, 4.5)):
        rolling = RollingMean(window=window, step=50, sigmas=sigmas, skewness=skewness)
        count = stats.binom.isf(stats.norm.sf(sigmas), window, 0.1)
        exact = (count - 0.1 * window) / math.sqrt(window * 0.09)
        assert rolling.threshold * math.sqrt(window) == pytest.approx(exact, abs=0.06)
        assert rolling.threshold > RollingMean(window=window, step=50, sigmas=sigmas).threshold
    assert RollingMean(window=500, sigmas=4.7, skewness=-1.0).threshold == RollingMean(window=500, sigmas=4.7).threshold


def test_a_classifier_s_rolling_means_allow_for_its_skewed_errors_and_old_state_keeps_normal_ones():
    rng = np.random.default_rng(4)
    validation, errors = (rng.random(5000) < 0.1).astype(float), (rng.random(3000) < 0.1).astype(float)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    for i, e in enumerate(errors):
        monitor.update(float(e), "misclassification", float(i), float(i))
    first = errors[:1000]
    expected = float(np.mean((first - first.mean()) ** 3) / first.std() ** 3)
    assert monitor.error.baseline.skewness == pytest.approx(expected) and 2.0 < monitor.error.baseline.skewness < 3.4
    assert (
        monitor.error.bank.detectors["rolling_mean"].skewness
        == monitor.error.bank.detectors["rolling_mean_long"].skewness
        == monitor.error.baseline.skewness
    )
    state = monitor.state_values()
    restored = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=SimpleNamespace(**state),
        error_sample=error_sample(validation),
    )
    assert (
        restored.error.bank.detectors["rolling_mean"].threshold
        == monitor.error.bank.detectors["rolling_mean"].threshold
    )
    old = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=_as_written_before(state, 6),  # before the skewness
        error_sample=error_sample(validation),
    )
    assert old.error.baseline.skewness is None and old.error.bank.detectors["rolling_mean"].skewness == 0.0


def test_a_validation_baseline_takes_the_skewness_of_its_sample_and_keeps_it_across_a_restart():
    rng = np.random.default_rng(5)
    validation = np.abs(rng.normal(0, 1, 5000))
    config = DriftConfig(production_baseline_labels=0)
    monitor = ErrorStreamMonitor(
        "m", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    assert 0.7 < monitor.error.baseline.skewness < 1.3  # a half-normal's is 0.995
    monitor.update(0.5, "absolute_error", 1.0, 0.0)
    restored = ErrorStreamMonitor(
        "m",
        "1",
        config,
        float(validation.mean()),
        float(validation.std()),
        state=SimpleNamespace(**monitor.state_values()),
        error_sample=error_sample(validation),
    )
    assert (
        restored.error.baseline.skewness == monitor.error.baseline.skewness
        and restored.state_values() == monitor.state_values()
    )


def test_errors_near_the_float_limit_set_a_baseline_without_overflow():
    monitor = ErrorStreamMonitor("m", "1", DriftConfig(), 1.0, 0.5)
    errors = np.abs(np.random.default_rng(6).normal(0, 1e110, 1_001))
    alerts = [a for i, e in enumerate(errors) for a in monitor.update(float(e), "absolute_error", float(i), float(i))]
    assert monitor.error.baseline.labels == 1_000 and math.isfinite(monitor.error.baseline.skewness)
    assert [a.data.episode for a in alerts] == ["deployment_gap"]


def test_every_change_of_at_least_one_sd_is_alerted_started_or_escalated_inside_one_episode():
    validation, labels = _production_stream(100_000, 3, gap=0.08, shifts={25_000: 0.5, 50_000: 1.0, 75_000: 2.0})
    alerts, monitor = _alerts(validation, labels)
    raised = [(episode, predicted) for episode, predicted, _ in alerts if episode in ("started", "escalated")]
    for change in (50_000, 75_000):
        assert any(change <= predicted < change + 2000 for _, predicted in raised), (change, raised)
    assert (
        raised[0][0] == "started"
        and all(e == "escalated" for e, _ in raised[1:])
        and monitor.error.episode.episodes == 1
    )
    started = next(a for e, _, a in alerts if e == "started").data
    estimated = cloudevents.epoch(started.change_started_at)  # prediction time, here seconds since 1970
    assert abs(estimated - raised[0][1]) < 3600


def test_the_monitor_state_round_trips_mid_episode():
    validation, labels = _production_stream(30_000, 4, gap=0.0, shifts={10_000: 1.5, 20_000: 2.0})
    whole, _ = _alerts(validation, labels)
    first, monitor = _alerts(validation, labels[:15_000])
    restored = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=SimpleNamespace(**json.loads(json.dumps(monitor.state_values()))),
        error_sample=error_sample(validation),
    )
    second, _ = _alerts(validation, labels[15_000:], restored)
    assert [a.id for _, _, a in whole] == [a.id for _, _, a in first + second]
    assert len(whole) >= 2


def _scored_stream(n: int, seed: int, change: int, flip: float):
    """A calibrated binary classifier's (0/1 error, log loss) per label; from ``change`` on a share ``flip``
    of the labels contradicts the scores (the concept moved), in arrival order after lognormal delays."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1, 4, n)  # score of the positive class
    q = np.where(np.arange(n) >= change, p + flip * (1 - 2 * p), p)
    y = rng.random(n) < q
    errors = ((p >= 0.5) != y).astype(float)
    losses = -np.log(np.where(y, p, 1 - p))
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(300), 1.0, n)
    order = np.argsort(arrived, kind="stable")
    validation = ((rng.random(5000) < p[:5000]) != (p[:5000] >= 0.5)).astype(float)
    return validation, [(float(errors[i]), float(losses[i]), float(arrived[i]), float(predicted[i])) for i in order]


def test_log_loss_of_scored_classifiers_is_a_second_stream_with_its_own_baseline_and_alerts():
    validation, labels = _scored_stream(40_000, 5, change=30_000, flip=0.15)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    alerts = []
    for i, (error, loss, arrived, predicted) in enumerate(labels):
        if i == 20_000:  # the log-loss monitor's state travels inside the version's state
            monitor = ErrorStreamMonitor(
                "m",
                "1",
                DriftConfig(),
                float(validation.mean()),
                float(validation.std()),
                state=SimpleNamespace(**json.loads(json.dumps(monitor.state_values()))),
                error_sample=error_sample(validation),
            )
        alerts += [(a, predicted) for a in monitor.update(error, "misclassification", arrived, predicted)]
        alerts += [(a, predicted) for a in monitor.update_log_loss(loss, arrived, predicted)]
    loss_alerts = [(a, predicted) for a, predicted in alerts if a.data.metric == "log_loss"]
    assert loss_alerts, "the log loss rose by a fifth and nothing fired"
    first, at = loss_alerts[0]
    assert first.data.episode == "started" and at >= 30_000  # silent on the stationary part, its baseline set
    assert all(a.data.episode != "deployment_gap" for a, _ in loss_alerts)  # no validation estimate to compare
    ids = [a.id for a, _ in alerts]
    assert len(ids) == len(set(ids))  # the two streams never share an alert id


@pytest.mark.parametrize("rate", [0.116, 0.2])
def test_a_classifier_state_from_before_the_small_cusum_gets_a_threshold_near_a_calibrated_one(rate):
    rng = np.random.default_rng(2)
    validation, errors = (rng.random(5000) < rate).astype(float), (rng.random(3000) < rate).astype(float)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    for i, e in enumerate(errors):
        monitor.update(float(e), "misclassification", float(i), float(i))
    state = monitor.state_values()
    restored = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=_as_written_before(state, 3),
        error_sample=error_sample(validation),
    )
    assert (
        0.9 * monitor.error.baseline.small_cusum_h
        <= restored.error.baseline.small_cusum_h
        <= 1.2 * monitor.error.baseline.small_cusum_h
    )


def _local_stream(n: int, seed: int, gap: float, shares: dict[int, float], bump: float = 2.0):
    """Half-normal errors as ``_production_stream``'s, but the change local: from each prediction index in
    ``shares`` on, that share of the predictions (a region of the inputs) has its error ``bump`` validation
    sd higher (the region grows with each entry)."""
    rng = np.random.default_rng(seed)
    validation = np.abs(rng.normal(0, 1, 5000))
    share = np.zeros(n)
    for start, value in shares.items():
        share[start:] = value
    errors = np.abs(rng.normal(0, 1, n)) * (1 + gap) + bump * validation.std() * (rng.random(n) < share)
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(300), 1.0, n)
    order = np.argsort(arrived, kind="stable")
    return validation, [(float(errors[i]), float(arrived[i]), float(predicted[i])) for i in order]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_local_drift_that_widens_in_steps_of_half_an_sd_is_alerted_at_each_step(seed):
    # The region of the inputs where the model is wrong grows: a quarter, a half, three quarters of the
    # predictions, each step raising the mean error by 0.5 sd. Escalation against the peak with a fixed
    # test missed the second step; the detectors re-based on the episode's level find each.
    changes = (20_000, 40_000, 60_000)
    validation, labels = _local_stream(80_000, seed, 0.08, dict(zip(changes, (0.25, 0.5, 0.75))))
    alerts, monitor = _alerts(validation, labels)
    raised = [(episode, predicted) for episode, predicted, _ in alerts if episode not in ("deployment_gap",)]
    assert [episode for episode, _ in raised] == ["started", "escalated", "escalated"], raised
    for (_, predicted), change in zip(raised, changes):
        assert change <= predicted < change + 3000, raised
    assert monitor.error.episode.episodes == 1


def test_a_fall_inside_an_episode_is_improved_and_a_fall_back_to_the_baseline_ends_it():
    validation, labels = _production_stream(60_000, 5, gap=0.05, shifts={15_000: 1.5, 30_000: -1.0, 45_000: -0.5})
    alerts, monitor = _alerts(validation, labels)
    raised = [(episode, predicted) for episode, predicted, _ in alerts if episode != "deployment_gap"]
    assert [episode for episode, _ in raised] == ["started", "improved", "ended"], raised
    assert 30_000 <= raised[1][1] < 32_000 and 45_000 <= raised[2][1] < 48_000
    improved = next(a for e, _, a in alerts if e == "improved").data
    assert improved.detector == "escalation_cusum" and improved.severity == "moderate"
    assert improved.value > improved.threshold
    assert 29_000 <= cloudevents.epoch(improved.change_started_at) <= 31_000
    assert not monitor.in_episode


@pytest.mark.parametrize("seed", [1, 2])
def test_an_episode_at_a_steady_level_raises_nothing_after_it_started(seed):
    # Inside an episode the re-based detectors keep the baseline's false-alarm promise: 75,000 labels at
    # the episode's level (half-normal errors one sd up, and 0/1 errors at twice the rate) give no escalated
    # or improved alert (bench/concept.py --episode-false-alarms counts them on millions).
    validation, labels = _production_stream(80_000, seed, gap=0.05, shifts={5_000: 1.0})
    alerts, _ = _alerts(validation, labels)
    assert [e for e, _, _ in alerts if e != "deployment_gap"] == ["started"], alerts
    rng = np.random.default_rng(seed)
    validation01 = (rng.random(5000) < 0.1).astype(float)
    errors = (rng.random(80_000) < np.where(np.arange(80_000) >= 5_000, 0.2, 0.1)).astype(float)
    monitor = ErrorStreamMonitor(
        "m", "1", DriftConfig(), 0.1, float(validation01.std()), error_sample=error_sample(validation01)
    )
    arrived = np.arange(80_000) + rng.lognormal(np.log(300), 1.0, 80_000)
    episodes = []
    for i in np.argsort(arrived, kind="stable"):
        episodes += [a.data.episode for a in monitor.update(float(errors[i]), "misclassification", arrived[i], i)]
    assert [e for e in episodes if e != "deployment_gap"] == ["started"], episodes


def test_the_late_labels_of_an_ended_episode_do_not_start_another():
    # A pure data drift makes a calibrated classifier less sure for 1,000 s (20 predictions a second): its
    # log loss and 0/1 error rise, an episode starts and ends on each stream. The labels of the drift's
    # predictions keep arriving after the end (lognormal delays, median 5 min); detectors started afresh at
    # the end used to take them for a new change (a started, then ended a minute later).
    rng = np.random.default_rng(2)
    n, rate = 200_000, 20.0
    t = np.arange(n) / rate
    drift = (t >= 4000) & (t < 5000)
    p = np.where(drift, rng.beta(2, 4, n), rng.beta(1, 4, n))  # calibrated before and during the drift
    y = rng.random(n) < p
    errors, losses = ((p >= 0.5) != y).astype(float), -np.log(np.where(y, p, 1 - p))
    arrived = t + rng.lognormal(np.log(300), 1.0, n)
    vp = rng.beta(1, 4, 5000)
    validation = ((vp >= 0.5) != (rng.random(5000) < vp)).astype(float)
    monitor = ErrorStreamMonitor(
        "m",
        "1",
        DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        error_sample=error_sample(validation),
    )
    alerts = []
    for i in np.argsort(arrived, kind="stable"):
        alerts += monitor.update(float(errors[i]), "misclassification", float(arrived[i]), float(t[i]))
        alerts += monitor.update_log_loss(float(losses[i]), float(arrived[i]), float(t[i]))
    for metric in ("misclassification", "log_loss"):
        phases = [a.data.episode for a in alerts if a.data.metric == metric and a.data.episode != "deployment_gap"]
        assert phases == ["started", "ended"], (metric, phases)


def _monitor(validation, config=None, state=None):
    return ErrorStreamMonitor(
        "m",
        "1",
        config or DriftConfig(),
        float(validation.mean()),
        float(validation.std()),
        state=None if state is None else SimpleNamespace(**state),
        error_sample=error_sample(validation),
    )


def test_the_prediction_time_thresholds_are_set_for_the_traffic_and_a_restart_mid_collection_sets_the_same():
    """Calibrated for the version's traffic, lower than for arrival order, and a pure function of the stored
    state: a monitor restored from a row written while the baseline collected sets the same thresholds."""
    validation, labels = _production_stream(1_000, 3, gap=0.1, shifts={})
    monitor = _monitor(validation)
    _alerts(validation, labels[:600], monitor)
    row = monitor.state_values()
    assert len(json.loads(row["detectors"])["production"]["traffic"]) == 600
    restored = _monitor(validation, state=row)
    for m in (monitor, restored):
        _alerts(validation, labels[600:], m)  # the 1,000th sets the baseline
    assert restored.state_values() == monitor.state_values()
    baseline = monitor.error.baseline
    production = json.loads(monitor.state_values()["detectors"])["production"]
    assert production["traffic"] is None and production["pt_factors"] == list(baseline.pt_factors)
    # In arrival order the same errors would need these (the validation sample's and the first errors' larger).
    first = np.array([error for error, _, _ in labels[:1_000]])
    samples = [
        reference_z(validation.tolist(), float(validation.mean()), float(validation.std()), 1_000),
        reference_z(first, float(first.mean()), float(first.std()), 1_000),
    ]
    arrival_order = threshold_for_all(samples, 0.5, 1e7), threshold_for_all(samples, 0.25, 1e7)
    factor, small_factor = baseline.pt_factors
    assert factor > 2 and small_factor > 1
    assert baseline.cusum_h < arrival_order[0] - 0.5 and baseline.small_cusum_h < arrival_order[1]
    assert (baseline.cusum_h, baseline.small_cusum_h) == pytest.approx(
        (threshold_for_all(samples, 0.5, 1e7 / factor), threshold_for_all(samples, 0.25, 1e7 / small_factor)),
        rel=1e-9,
    )


def test_a_format_10_row_still_collecting_completes_with_the_arrival_order_thresholds():
    """Format 10 kept no traffic: its baseline completes as format 10's code did it (no factors)."""
    validation, labels = _production_stream(1_000, 4, gap=0.1, shifts={})
    today = _monitor(validation)
    _alerts(validation, labels[:600], today)
    typed = json.loads(today.state_values()["detectors"])
    for key in ("traffic", "pt_factors"):
        del typed["production"][key]
    row = {**today.state_values(), "detectors": json.dumps(typed), "state_format": 10}
    restored = _monitor(validation, state=row)
    _alerts(validation, labels[600:], restored)
    first = np.array([error for error, _, _ in labels[:1_000]])
    samples = [
        reference_z(validation.tolist(), float(validation.mean()), float(validation.std()), 1_000),
        reference_z(first, float(first.mean()), float(first.std()), 1_000),
    ]
    assert restored.error.baseline.pt_factors is None
    assert (restored.error.baseline.cusum_h, restored.error.baseline.small_cusum_h) == pytest.approx(
        (threshold_for_all(samples, 0.5, 1e7), threshold_for_all(samples, 0.25, 1e7)), rel=1e-9
    )
    assert json.loads(restored.state_values()["detectors"])["production"]["pt_factors"] is None
    assert restored.state_values()["state_format"] == 11
