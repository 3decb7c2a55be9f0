"""``undertow report`` with every alert the monitor can raise (issue 30): the page renders, each alert's row
shows its value against the threshold it was compared with, and the alert and episode tables never show
"None" or "nan". A regressor and a classifier, each registered in a real database, with alerts recorded as
the monitor records them (``record_alert``); the report run through the CLI as a user runs it."""

import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.conftest import REPO
from undertow.models import registry
from undertow.models.profile import PREDICTION_FEATURE, build_profile
from undertow.storage import db
from undertow.worker.dev.sample import SampleStream
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.runtime.output_events import (
    Baseline,
    ConceptDrift,
    ConceptDriftAlert,
    DataDrift,
    DataDriftAlert,
    DatasetDrift,
    DatasetDriftAlert,
    DependenceDrift,
    DependenceDriftAlert,
    DependencePair,
    MultivariateDrift,
    MultivariateDriftAlert,
    PerformanceEstimate,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
    Window,
)

pytestmark = pytest.mark.postgres


def _ts(minute: int) -> str:
    return f"2026-11-01T{minute // 60:02d}:{minute % 60:02d}:00.000Z"


def _window(minute: int) -> Window:
    return Window(index=minute, start_ts=_ts(minute - 1), end_ts=_ts(minute), n=1000)


def _data(
    model_id, minute, feature, episode, severity, psi, categorical=False, rule="window"
) -> DataDriftAlert | PredictionDriftAlert:
    tests = (
        {"ks_statistic": None, "ks_pvalue": None, "chi2_statistic": 41.5, "chi2_pvalue": 2e-9}
        if categorical
        else {"ks_statistic": 0.21, "ks_pvalue": 1e-9, "chi2_statistic": None, "chi2_pvalue": None}
    )
    kind = PredictionDriftAlert if feature == PREDICTION_FEATURE else DataDriftAlert
    return kind(
        id=f"{model_id}-data-{minute}",
        subject=model_id,
        time=_ts(minute),
        data=DataDrift(
            model_id=model_id,
            model_version="1",
            severity=severity,
            episode=episode,
            feature=feature,
            rule=rule,
            psi=psi,
            missing_share=0.0,
            window=_window(minute),
            **tests,
        ),
    )


def _concept(
    model_id, minute, episode, detector, metric, value, threshold, unit="baseline_sd", severity="significant"
) -> ConceptDriftAlert:
    return ConceptDriftAlert(
        id=f"{model_id}-concept-{minute}",
        subject=model_id,
        time=_ts(minute),
        data=ConceptDrift(
            model_id=model_id,
            model_version="1",
            severity=severity,
            episode=episode,
            detector=detector,
            metric=metric,
            value=value,
            threshold=threshold,
            unit=unit,
            baseline=Baseline(mean=0.4, sd=0.3),
            recent_mean_error=0.55 if episode != "deployment_gap" else None,
            detected_at=_ts(minute),
            label_count=5000,
            change_started_at=_ts(minute - 5) if episode == "started" else None,
        ),
    )


def _window_checks(model_id: str, input_feature: str, categorical: bool) -> list[tuple]:
    """(event, value shown, threshold shown) of the window-based alerts: data (started, escalated, ended, and
    one raised by the cumulative rule), prediction, dataset and multivariate, with the default thresholds."""
    return [
        (_data(model_id, 10, input_feature, "started", "moderate", 0.1421, categorical), "0.1421", "0.1"),
        (_data(model_id, 11, input_feature, "escalated", "significant", 0.4123, categorical), "0.4123", "0.25"),
        (_data(model_id, 12, input_feature, "ended", "stable", 0.0312, categorical), "0.0312", "0.08"),
        (_data(model_id, 13, "x1", "started", "moderate", 0.0613, rule="cumulative"), "0.0613", "0.1"),
        (_data(model_id, 14, PREDICTION_FEATURE, "started", "significant", 0.3317, categorical), "0.3317", "0.25"),
        (
            DatasetDriftAlert(
                id=f"{model_id}-dataset",
                subject=model_id,
                time=_ts(15),
                data=DatasetDrift(
                    model_id=model_id,
                    model_version="1",
                    severity="significant",
                    episode="started",
                    drifted_share=0.6667,
                    drifted_features=[input_feature, "x1"],
                    threshold=0.5,
                    window=_window(15),
                ),
            ),
            "0.6667",
            "0.5",
        ),
        # The largest |z| over the pairs against its Sidak threshold; the pairs as correlations go in the note.
        (
            DependenceDriftAlert(
                id=f"{model_id}-dependence",
                subject=model_id,
                time=_ts(17),
                data=DependenceDrift(
                    model_id=model_id,
                    model_version="1",
                    severity="significant",
                    episode="started",
                    pairs=[DependencePair(features=["x0", "x1"], reference=0.01, value=0.51, z=16.7)],
                    z=16.7,
                    threshold=6.69,
                    moderate=0.1,
                    significant=0.3,
                    pairs_tested=45,
                    features=["x0", "x1"],
                    window=_window(17),
                ),
            ),
            "16.7",
            "6.69",
        ),
        # z against its threshold, both in standard errors; the raw reconstruction error (0.4321) is another unit.
        (
            MultivariateDriftAlert(
                id=f"{model_id}-mv",
                subject=model_id,
                time=_ts(16),
                data=MultivariateDrift(
                    model_id=model_id,
                    model_version="1",
                    severity="significant",
                    episode="started",
                    features=["x0", "x1"],
                    value=0.4321,
                    reference=0.3012,
                    z=7.25,
                    threshold=6.0,
                    window=_window(16),
                ),
            ),
            "7.25",
            "6",
        ),
    ]


def _concept_checks(model_id: str, metric: str) -> list[tuple]:
    return [
        (_concept(model_id, 30, "started", "page_hinkley", metric, 12.5, 10.0), "12.5", "10"),
        (_concept(model_id, 31, "escalated", "escalation_cusum", metric, 8.75, 7.5), "8.75", "7.5"),
        (_concept(model_id, 32, "ended", "rolling_mean", metric, 0.125, 0.5, severity="stable"), "0.125", "0.5"),
        (
            _concept(
                model_id,
                33,
                "deployment_gap",
                "production_baseline",
                metric,
                0.62,
                0.55,
                unit="error",
                severity="moderate",
            ),
            "0.62",
            "0.55",
        ),
        (_concept(model_id, 34, "started", "cusum", metric, 6.5, None), "6.5", "–"),  # no threshold recorded
    ]


def _performance_check(model_id: str) -> tuple:
    return (
        PerformanceEstimateAlert(
            id=f"{model_id}-perf",
            subject=model_id,
            time=_ts(20),
            data=PerformanceEstimate(
                model_id=model_id,
                model_version="1",
                severity="significant",
                episode="started",
                value=0.7512,
                reference=0.94,
                threshold=0.89,
                scored_rows=1000,
                window=_window(20),
            ),
        ),
        "0.7512",
        "0.89",
    )


def _register_classifier(env, model_id: str) -> None:
    """A classifier's reference: a numeric and a categorical input, class labels as prediction and target,
    its baseline a misclassification rate."""
    rng = np.random.default_rng(3)
    n = 2000
    x0 = rng.normal(0, 1, n)
    x1 = rng.normal(2, 1, n)
    plan = rng.choice(["basic", "pro", "team"], n).tolist()
    predicted = np.where(x0 > 0, "yes", "no")
    target = np.where(rng.random(n) < 0.9, predicted, np.where(predicted == "yes", "no", "yes"))
    errors = (predicted != target).astype(float)
    profile = build_profile(
        {"x0": x0.tolist(), "x1": x1.tolist(), "plan": plan, PREDICTION_FEATURE: predicted.tolist()}
    )
    with db.make_session_factory(env.engine).begin() as session:
        registry.register(
            session,
            model_id=model_id,
            profile=profile,
            artifacts_dir=env.artifacts_dir,
            baseline_error=(float(errors.mean()), float(errors.std())),
            task="classification",
        )


class _Tables(HTMLParser):
    """The rows (lists of cell texts) of the page's tables, by table id."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _report(env, model_id, out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow",
            "--log-level",
            "WARNING",
            "report",
            "--model-id",
            model_id,
            *env.cli_args(),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_report_shows_every_alert_type_with_its_value_against_its_threshold(env, tmp_path, task):
    if task == "regression":
        model_id, metric = "housing", "absolute_error"
        env.register_reference(SampleStream(seed=2), model_id=model_id, rows=1000)
        checks = _window_checks(model_id, "x0", categorical=False) + _concept_checks(model_id, metric)
    else:
        model_id, metric = "churn", "misclassification"
        _register_classifier(env, model_id)
        checks = (
            _window_checks(model_id, "plan", categorical=True)
            + [_performance_check(model_id)]
            + _concept_checks(model_id, metric)
            + [(_concept(model_id, 40, "started", "page_hinkley", "log_loss", 11.0, 10.0), "11", "10")]
        )
    with db.make_session_factory(env.engine).begin() as session:
        for event, _, _ in checks:
            record_alert(session, env.topics.alerts, event)

    out = tmp_path / "report.html"
    done = _report(env, model_id, out)
    assert done.returncode == 0, done.stderr
    parser = _Tables()
    parser.feed(out.read_text())
    header, *rows = parser.tables["alerts"]
    assert header == [
        "time",
        "type",
        "version",
        "about",
        "severity",
        "episode",
        "measure",
        "value",
        "threshold",
        "note",
    ]
    assert len(rows) == len(checks)
    cells = {(row[1], row[0]): row for row in rows}  # by type and time: one alert each
    for event, value, threshold in checks:
        row = cells[(event.type.removeprefix("undertow."), event.time)]
        assert (row[5], row[7], row[8]) == (event.data.episode, value, threshold), row
        assert all(row), row  # every cell says something
    types = {event.type for event, _, _ in checks}
    assert {
        "undertow.drift.data",
        "undertow.drift.prediction",
        "undertow.drift.dataset",
        "undertow.drift.multivariate",
        "undertow.drift.dependence",
        "undertow.drift.concept",
    } <= types
    assert ("undertow.performance.estimated" in types) == (task == "classification")

    by_time = {row[0]: row for row in rows}
    multivariate = by_time[_ts(16)]
    assert multivariate[6].startswith("z:") and "0.4321" in multivariate[9]  # the raw error only in the note
    assert "cumulative" in by_time[_ts(13)][9]
    assert by_time[_ts(33)][6] == f"production mean error ({metric})"  # the gap is in error units
    assert "no threshold recorded" in by_time[_ts(34)][9]

    header, *episodes = parser.tables["episodes"]
    assert header == ["what drifted", "type", "version", "started", "ended", "alerts"]
    # (type, what drifted, ended): the data episode ended, every other one is still open.
    spans = {(e[1], e[0], e[4]) for e in episodes}
    input_feature = "x0" if task == "regression" else "plan"
    assert ("drift.data", f"input {input_feature}", _ts(12)) in spans
    assert {
        ("drift.dataset", "share of inputs drifting", "open"),
        ("drift.multivariate", "all inputs together (multivariate)", "open"),
        ("drift.prediction", "the model's output", "open"),
        ("drift.data", "input x1", "open"),
    } <= spans
    # The concept episode on the metric: started, escalated and ended (its cusum restarted it afterwards).
    error = f"the model's error ({metric})"
    assert ("drift.concept", error, _ts(32)) in spans and ("drift.concept", error, "open") in spans
    if task == "classification":
        assert ("performance.estimated", "estimated accuracy", "open") in spans
        assert ("drift.concept", "the model's error (log_loss)", "open") in spans
    for table in ("alerts", "episodes"):
        text = " | ".join(" | ".join(row) for row in parser.tables[table])
        assert "None" not in text and not re.search(r"\bnan\b", text, re.IGNORECASE), (table, text)


def test_a_summing_detectors_statistic_is_not_read_as_a_rise_of_the_error():
    """Page-Hinkley at 50 against 50 with the error up from 0.40 to 0.47 (sd 0.54): its unit says the 50
    is summed over labels; a rolling mean's is a rise of the mean itself."""
    import json

    from undertow.worker.report.alerts import concept_drift

    def measure(detector: str, value: float, threshold: float) -> str:
        alert = _concept("m", 30, "started", detector, "misclassification", value, threshold)
        return concept_drift(json.loads(alert.data.model_dump_json()), registry.DriftConfig()).measure

    assert measure("page_hinkley", 50.4, 50.0) == (
        "Page-Hinkley statistic (excess over the baseline error summed over labels, in its standard deviations)"
    )
    assert (
        measure("rolling_mean", 4.6, 4.5) == "rolling mean of the error (standard deviations above the baseline error)"
    )
