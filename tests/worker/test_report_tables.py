"""The report's headline verdict and per-feature table (issue 32), on a real database holding what the monitor
and the trainer store: a registered version, its window results, its data-drift state (through its codec),
alerts (``record_alert``), labelled pairs and a training run. A regressor and a classifier, each drifting and
not drifting. ``scenario`` is also what the browser test renders (tests/worker/test_report_browser.py)."""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from undertow.models import registry, runs
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.drift_state import CODEC, DATASET, MULTIVARIATE, PERFORMANCE, CheckEpisode, DataDriftState
from undertow.models.drift.episodes import CALM, Episode
from undertow.models.profile import PREDICTION_FEATURE, build_profile
from undertow.storage import db, repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.report.alerts import dataset_drift
from undertow.worker.report.cards import sections
from undertow.worker.report.features import feature_rows
from undertow.worker.report.figures import psi_figure
from undertow.worker.report.gather import gather
from undertow.worker.report.times import readable
from undertow.worker.report.verdict import verdict
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.output_events import (
    Baseline,
    ConceptDrift,
    ConceptDriftAlert,
    DataDrift,
    DataDriftAlert,
    DatasetDrift,
    DatasetDriftAlert,
    ExplainedBin,
    Explanation,
    MultivariateDrift,
    MultivariateDriftAlert,
    PerformanceEstimate,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
    RankedFeature,
    Window,
)

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 12, 5, 20, 0, tzinfo=UTC).timestamp()  # the first window closes at 20:10
WINDOW = 600.0
WINDOWS = 12
ALERTS_TOPIC = "undertow.alerts"
# Per window: x0 drifts from window 4 and runs far past the PSI axis' clip (0.5); x1 jumps past it at window 6,
# at the same windows as x0 (two written values compete for the same place); plan never moves.
DRIFTING_PSI = {
    "x0": [0.02, 0.01, 0.03, 0.02, 0.16, 0.42, 0.9, 1.6, 2.4, 3.1, 3.0, 2.9],
    "x1": [0.01, 0.02, 0.01, 0.02, 0.03, 0.05, 0.7, 0.8, 0.75, 0.6, 0.62, 0.66],
    "plan": [0.01] * WINDOWS,
    PREDICTION_FEATURE: [0.01, 0.02, 0.01, 0.01, 0.12, 0.3, 0.45, 0.6, 0.7, 0.8, 0.75, 0.7],
}
X0_STARTED, X1_STARTED, OUTPUT_STARTED, MV_STARTED = 4, 6, 4, 5  # the windows whose alerts start the episodes
CONCEPT_DETECTED, CONCEPT_CHANGE = 7, 6  # the window of the concept alarm, and of its estimated start
MV_Z = 8.25


@dataclass
class Scenario:
    model_id: str
    task: str
    drifting: bool

    def end(self, window: int) -> float:
        return T0 + WINDOW * (window + 1)


def _severity(psi: float) -> str:
    return "significant" if psi >= 0.25 else "moderate" if psi >= 0.1 else "stable"


def _reference(task: str, rng) -> dict:
    n = 3000
    x0, x1 = rng.normal(0, 1, n), rng.normal(5, 2, n)
    plan = rng.choice(["basic", "pro", "team"], n).tolist()
    if task == "classification":
        output = np.where(x0 > 0, "yes", "no").tolist()
    else:
        output = (2 * x0 + x1 + rng.normal(0, 0.3, n)).tolist()
    return {"x0": x0.tolist(), "x1": x1.tolist(), "plan": plan, PREDICTION_FEATURE: output}


def _register(session, s: Scenario, tmp_path, rng, task: str | None) -> None:
    baseline = (0.1, 0.3) if s.task == "classification" else (0.25, 0.2)
    registry.register(
        session,
        model_id=s.model_id,
        profile=build_profile(_reference(s.task, rng)),
        artifacts_dir=tmp_path,
        baseline_error=baseline,
        error_sample=sorted(abs(rng.normal(baseline[0], baseline[1], 500)).tolist()),
        task=task,
        card={"intended_use": {"description": "report test"}},
    )


def _windows(session, s: Scenario) -> None:
    rows = []
    for feature, psis in DRIFTING_PSI.items():
        for i, psi in enumerate(psis):
            psi = psi if s.drifting else 0.01 + 0.002 * i
            categorical = feature == "plan" or (feature == PREDICTION_FEATURE and s.task == "classification")
            rows.append(
                {
                    "model_id": s.model_id,
                    "version": "1",
                    "window_index": i,
                    "feature": feature,
                    "start_ts": s.end(i) - WINDOW,
                    "end_ts": s.end(i),
                    "n": 1000,
                    "psi": psi,
                    "ks_statistic": None if categorical else min(0.9, psi / 2),
                    "ks_pvalue": None if categorical else (1e-12 if psi >= 0.1 else 0.4),
                    "chi2_statistic": 80.0 if psi >= 0.1 else 2.0,
                    "chi2_pvalue": 1e-12 if psi >= 0.1 else 0.4,
                    "missing_share": 0.0,
                    "severity": _severity(psi),
                }
            )
    repo.add_window_results(session, rows)


def _state(session, s: Scenario, performance: float | None) -> None:
    """The data-drift state the monitor stores, written through its codec."""
    up = Episode("significant", 0, "significant")
    episodes = {name: CALM for name in DRIFTING_PSI} | {DATASET: CALM}
    checks = {MULTIVARIATE: CheckEpisode("stable", 0, "stable", 1.42)}
    if s.drifting:
        episodes |= {"x0": up, "x1": up, PREDICTION_FEATURE: up, DATASET: up}
        checks[MULTIVARIATE] = CheckEpisode("significant", 0, "significant", MV_Z)
    if performance is not None:
        level = "significant" if s.drifting else "stable"
        checks[PERFORMANCE] = CheckEpisode(level, 0, level, performance)
    state = DataDriftState.model_construct(episodes=episodes, checks=checks, evidence={}, confidence_column=False)
    blob, number = CODEC.dump(state)
    repo.save_drift_state(session, s.model_id, "1", {}, blob, number, exists=False)


def _window(s: Scenario, i: int) -> Window:
    return Window(
        index=i, start_ts=cloudevents.rfc3339(s.end(i) - WINDOW), end_ts=cloudevents.rfc3339(s.end(i)), n=1000
    )


def _common(s: Scenario, i: int, episode: str, severity: str) -> dict:
    return {"model_id": s.model_id, "model_version": "1", "episode": episode, "severity": severity}


def _data_alert(s: Scenario, feature: str, i: int, episode: str, severity: str):
    kind = PredictionDriftAlert if feature == PREDICTION_FEATURE else DataDriftAlert
    categorical = feature == "plan" or (feature == PREDICTION_FEATURE and s.task == "classification")
    return kind(
        id=f"{s.model_id}-{feature}-{i}",
        subject=s.model_id,
        time=cloudevents.rfc3339(s.end(i)),
        data=DataDrift(
            **_common(s, i, episode, severity),
            feature=feature,
            psi=DRIFTING_PSI[feature][i],
            ks_statistic=None if categorical else 0.3,
            ks_pvalue=None if categorical else 1e-12,
            chi2_statistic=80.0,
            chi2_pvalue=1e-12,
            missing_share=0.0,
            window=_window(s, i),
        ),
    )


def _alerts(s: Scenario) -> list:
    alerts = [
        _data_alert(s, "x0", X0_STARTED, "started", "moderate"),
        _data_alert(s, PREDICTION_FEATURE, OUTPUT_STARTED, "started", "moderate"),
        _data_alert(s, "x0", X0_STARTED + 1, "escalated", "significant"),
        _data_alert(s, PREDICTION_FEATURE, OUTPUT_STARTED + 1, "escalated", "significant"),
        _data_alert(s, "x1", X1_STARTED, "started", "significant"),
        DatasetDriftAlert(
            id=f"{s.model_id}-dataset",
            subject=s.model_id,
            time=cloudevents.rfc3339(s.end(X1_STARTED)),
            data=DatasetDrift(
                **_common(s, X1_STARTED, "started", "significant"),
                drifted_share=2 / 3,
                drifted_features=["x0", "x1"],
                threshold=0.5,
                window=_window(s, X1_STARTED),
                ranked=[
                    RankedFeature(feature="x1", psi=0.4, importance=0.7, score=0.28),
                    RankedFeature(feature="x0", psi=2.9, importance=0.05, score=0.145),
                ],
            ),
        ),
        MultivariateDriftAlert(
            id=f"{s.model_id}-mv",
            subject=s.model_id,
            time=cloudevents.rfc3339(s.end(MV_STARTED)),
            data=MultivariateDrift(
                **_common(s, MV_STARTED, "started", "significant"),
                features=["x0", "x1"],
                value=3.1,
                reference=1.2,
                z=MV_Z,
                threshold=6.0,
                window=_window(s, MV_STARTED),
            ),
        ),
        ConceptDriftAlert(
            id=f"{s.model_id}-concept",
            subject=s.model_id,
            time=cloudevents.rfc3339(s.end(CONCEPT_DETECTED)),
            data=ConceptDrift(
                **_common(s, CONCEPT_DETECTED, "started", "significant"),
                detector="page_hinkley",
                metric="misclassification" if s.task == "classification" else "absolute_error",
                value=61.0,
                threshold=50.0,
                unit="baseline_sd",
                baseline=Baseline(mean=0.25, sd=0.2),
                recent_mean_error=0.5,
                detected_at=cloudevents.rfc3339(s.end(CONCEPT_DETECTED)),
                label_count=2000,
                change_started_at=cloudevents.rfc3339(s.end(CONCEPT_CHANGE)),
                explained_by=[
                    Explanation(
                        feature="x1",
                        share=0.93,
                        z=11.2,
                        bins=[ExplainedBin(range="> 1.28", error_before=0.21, error_after=0.9, share_of_pairs=0.1)],
                    )
                ],
                explained_against="production",
            ),
        ),
    ]
    if s.task == "classification":
        alerts.append(
            PerformanceEstimateAlert(
                id=f"{s.model_id}-perf",
                subject=s.model_id,
                time=cloudevents.rfc3339(s.end(6)),
                data=PerformanceEstimate(
                    **_common(s, 6, "started", "significant"),
                    value=0.78,
                    reference=0.9,
                    threshold=0.85,
                    scored_rows=1000,
                    window=_window(s, 6),
                ),
            )
        )
    return alerts


def _pairs(session, s: Scenario, rng) -> None:
    """Labelled pairs over the twelve windows; with drift, x0 moves from window 4 and the error grows after the
    concept change."""
    rows = []
    n = 2400
    for seq in range(n):
        ts = T0 + (WINDOWS * WINDOW) * seq / n
        late = s.drifting and ts > s.end(CONCEPT_CHANGE)
        shifted = s.drifting and ts > s.end(X0_STARTED - 1)
        x0 = float(rng.normal(1.5 if shifted else 0.0, 1))
        features = {"x0": x0, "x1": float(rng.normal(5, 2)), "plan": str(rng.choice(["basic", "pro", "team"]))}
        if s.task == "classification":
            prediction = "yes" if x0 > 0 else "no"
            error = float(rng.random() < (0.35 if late else 0.1))
            label = prediction if not error else ("no" if prediction == "yes" else "yes")
        else:
            prediction = 2 * x0 + features["x1"]
            error = float(abs(rng.normal(0.5 if late else 0.25, 0.2)))
            label = prediction + error
        rows.append(
            (
                s.model_id,
                seq,
                f"e{seq}",
                "1",
                ts,
                ts + 30,
                json.dumps(features),
                json.dumps(prediction),
                json.dumps(label),
                error,
                None,
            )
        )
    repo.add_pairs(session, rows)


def _rejected_run(session, s: Scenario, tmp_path, rng) -> None:
    """A retrained candidate the gate rejected: the champion stays, the verdict says why with the numbers."""
    run = runs.new_run(
        session,
        run_id=f"run-{s.model_id}",
        model_id=s.model_id,
        champion_version="1",
        trigger={"reason": "concept drift (started)"},
    )
    row = registry.register(
        session,
        model_id=s.model_id,
        profile=build_profile(_reference(s.task, rng)),
        artifacts_dir=tmp_path,
        baseline_error=(0.3, 0.2),
        stage="candidate",
        task=s.task,
        run_id=run.run_id,
    )
    registry.reject(session, row)
    run.candidate_version = row.version
    gate = {
        "holdout_pairs": 412,
        "min_holdout": 300,
        "min_gain": 0.0,
        "confidence": 0.95,
        "resamples": 1000,
        "tolerance": 0.1,
        "champion_mean_error": 0.5123,
        "candidate_mean_error": 0.5011,
        "mean_improvement": 0.0112,
        "improvement_low": -0.0042,
        "improvement_high": 0.0265,
    }
    reason = "gate failed: the 95% interval of the improvement [-0.0042, 0.0265] does not lie above the minimum gain 0"
    runs.finish(run, runs.RunStatus.REJECTED, reason, metrics={"gate": gate, "candidate": {"mae": 0.5011}})


def scenario(engine, tmp_path, task: str, drifting: bool, registered_task: str | None = "same") -> Scenario:
    """A model as the monitor and the trainer leave it after twelve windows (``registered_task``: the task the
    registry records; None leaves it out, as an old registration did)."""
    s = Scenario(f"{'churn' if task == 'classification' else 'prices'}", task, drifting)
    rng = np.random.default_rng(7)
    with db.make_session_factory(engine).begin() as session:
        _register(session, s, tmp_path, rng, task if registered_task == "same" else registered_task)
        _windows(session, s)
        _state(session, s, (0.74 if drifting else 0.89) if task == "classification" else None)
        _pairs(session, s, rng)
        if drifting:
            for alert in _alerts(s):
                record_alert(session, ALERTS_TOPIC, alert)
            _rejected_run(session, s, tmp_path, rng)
    return s


def _read(engine, s: Scenario):
    with db.make_session_factory(engine)() as session:
        data = gather(session, s.model_id)
    rows = feature_rows(data)
    return data, {r.name: r for r in rows}, verdict(data, rows)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_drifting_model_s_verdict_and_table_name_what_drifts_and_since_when(engine, tmp_path, task):
    s = scenario(engine, tmp_path, task, drifting=True)
    data, rows, v = _read(engine, s)

    assert [name for name, r in rows.items() if r.drifted] == [
        "x0",
        "x1",
        PREDICTION_FEATURE,
        DATASET,
        MULTIVARIATE,
        *([PERFORMANCE] if task == "classification" else []),
    ]
    assert rows["x0"].since == readable(s.end(X0_STARTED)) and rows["x1"].since == readable(s.end(X1_STARTED))
    assert rows["plan"].since == "" and rows["plan"].test == "chi-square" and rows["x0"].test == "KS"
    assert (rows["x0"].psi, rows["x0"].pvalue, rows["x0"].severity) == ("2.9", "1e-12", "significant")
    assert rows["x0"].threshold == "until PSI < 0.08 for 2 windows"  # a drifting feature is held to the exit
    assert rows["plan"].threshold == "PSI ≥ 0.1 (≥ 0.25 significant), p < 0.01"
    mv = rows[MULTIVARIATE]
    assert (mv.statistic, mv.threshold) == ("8.25", "until z ≤ 4.8 for 2 windows") and "z" in mv.test
    # Share of inputs whose newest window is in a band: x0 and x1 of three.
    assert rows[DATASET].statistic == "0.6667" and rows[DATASET].threshold == "until share < 0.5 for 2 windows"
    assert rows[DATASET].since == readable(s.end(X1_STARTED))

    assert v.state == "drift"
    checks = "dataset; multivariate" + ("; estimated accuracy" if task == "classification" else "")
    metric = "misclassification" if task == "classification" else "absolute_error"
    assert v.headline == (
        f"Drift on version 1, the champion, since {readable(s.end(X0_STARTED))}: inputs x0, x1; the model output; "
        f"{checks}; concept drift ({metric})"
    )
    lines = {line.label: line.text for line in v.lines}
    assert lines["Inputs"].startswith("2 of 3 drifting: x0 (significant, since ")
    assert lines["Model output"].startswith("drifting (significant, PSI 0.7) since ")
    # Concept drift since the detector's estimate of the change, not since the alarm.
    assert lines["Concept drift"].startswith(f"{metric} since {readable(s.end(CONCEPT_CHANGE))} (page_hinkley fired at")
    # What explains it, and which drifted inputs matter to the model.
    assert lines["Concept drift"].endswith("explained by x1 (93 % of the change, in > 1.28: error 0.21 to 0.9)"), lines[
        "Concept drift"
    ]
    (dataset,) = [a.data.model_dump() for a in _alerts(s) if a.type == "undertow.drift.dataset"]
    assert dataset_drift(dataset, DriftConfig()).note == (
        "drifting, those that matter most to the model first (PSI x importance): x1 (0.4 x 0.7), x0 (2.9 x 0.05)"
    )
    assert lines["Champion"].startswith(f"version 1 ({task}), registered by operator on ")
    assert lines["Last gate decision"].startswith("candidate version 2 rejected on ")
    for words in ("0.5123", "0.5011", "[-0.0042, 0.0265]", "412 held-out pairs", "does not lie above"):
        assert lines["Last gate decision"].count(words) == 1, lines["Last gate decision"]
    if task == "classification":
        perf = rows[PERFORMANCE]
        assert (perf.statistic, perf.threshold, perf.drifted) == ("0.74", "accuracy < 0.85", True)
        assert lines["Estimated accuracy"].startswith("0.74 (accuracy < 0.85) since ")


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_model_without_drift_reads_no_drift_and_every_row_is_stable(engine, tmp_path, task):
    s = scenario(engine, tmp_path, task, drifting=False)
    data, rows, v = _read(engine, s)

    assert not any(r.drifted or r.since for r in rows.values()), rows
    assert set(rows) == {"x0", "x1", "plan", PREDICTION_FEATURE, DATASET, MULTIVARIATE} | (
        {PERFORMANCE} if task == "classification" else set()
    )
    # The multivariate row compares z with z: 1.42 under 6 is not drifting (the issue saw it marked significant).
    assert (rows[MULTIVARIATE].statistic, rows[MULTIVARIATE].threshold) == ("1.42", "z > 6")
    assert rows["x0"].psi == "0.032" and rows[DATASET].statistic == "0"
    assert (v.state, v.headline) == ("no-drift", "No drift on version 1, the champion")
    lines = {line.label: line.text for line in v.lines}
    assert lines["Inputs"] == f"none of 3 drifting (12 windows evaluated; the newest ended {readable(s.end(11))})"
    assert lines["Concept drift"] == "none (2,400 labelled predictions of version 1 checked)"
    assert lines["Last gate decision"] == "none yet: no candidate has been judged"
    if task == "classification":
        assert rows[PERFORMANCE].statistic == "0.89" and rows[PERFORMANCE].threshold.startswith(
            "accuracy < 0.85 at most"
        )


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


@pytest.mark.parametrize("drifting", [False, True])
def test_every_check_row_agrees_with_its_own_numbers(engine, tmp_path, drifting):
    """A stable check's value is on the quiet side of the threshold shown; a drifting one is past the entry
    threshold or still above the exit threshold shown, in the same unit."""
    s = scenario(engine, tmp_path, "classification", drifting=drifting)
    _, rows, _ = _read(engine, s)
    for name in (DATASET, MULTIVARIATE, PERFORMANCE):
        row = rows[name]
        value, threshold = float(row.statistic), _numbers(row.threshold)[0]
        below = name == PERFORMANCE  # the estimated accuracy alerts below its floor
        past = value < threshold if below else value >= threshold if name == DATASET else value > threshold
        assert past == row.drifted, row


def test_a_card_without_a_task_takes_the_output_s_kind_and_reads_as_sections(engine, tmp_path):
    s = scenario(engine, tmp_path, "classification", drifting=True, registered_task=None)
    data, _, _ = _read(engine, s)
    v1 = data.versions[0]
    assert (v1.task, v1.task_source) == ("classification", "inferred from the model output")
    cards = sections(v1)
    assert [c.title for c in cards] == [
        "Model",
        "Intended use",
        "Data",
        "Training",
        "Evaluation",
        "Caveats",
        "Lineage",
        "Environment",
    ]
    model = {e.label: e.value for e in cards[0].entries}
    assert model["task"] == "classification (inferred from the model output)"
    rejected = sections(data.versions[1])
    assert "Gate" in [c.title for c in rejected]
    training = {e.label: e for e in next(c for c in rejected if c.title == "Training").entries}
    assert training["status"].value == "rejected" and training["reason"].value == "concept drift (started)"

    def flat(entries):
        for e in entries:
            yield e.value
            yield from flat(e.children)

    texts = [t for card in cards + rejected for t in [*flat(card.entries), *card.notes]]
    assert not any(t in ("None", "null") or "{" in t for t in texts), texts


def test_the_psi_axis_is_clipped_and_every_value_past_it_is_written_or_counted(engine, tmp_path):
    s = scenario(engine, tmp_path, "regression", drifting=True)
    data, _, _ = _read(engine, s)
    svg = psi_figure(data)
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    past = [v for values in DRIFTING_PSI.values() for v in values if v > 0.5]
    written = [t for t in texts if t in {f"{v:.4g}" for v in past}]
    hidden = re.search(r"(\d+) more values past it", svg)
    assert written and len(written) + (int(hidden.group(1)) if hidden else 0) == len(past), (written, hidden)
    assert "3.1" in written  # the largest is always written
    ticks = [t for t in texts if re.fullmatch(r"\d\.\d", t) and t not in written]
    assert max(float(t) for t in ticks) <= 0.5  # the y axis stops at the clip, not at 3.1
    assert any(re.fullmatch(r"05 Dec \d\d:\d\d", t) for t in texts), texts  # day and month on the time axis
