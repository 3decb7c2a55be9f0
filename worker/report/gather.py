"""What the report reads from the database, once, into plain values the other report modules work on.

Every read is a select: through the registry, the runs and ``storage.repo`` where they have the query, and
one select of its own (the champion's newest window with its test statistics, which ``repo`` has only for
every model at once). Stored state is read through its codec (``drift_state.load_state``,
``concept_state.concept_codec``), as the monitor reads it, never by the shape of its JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models import runs as training_runs
from undertow.models.card import model_card
from undertow.models.drift.concept_state import Context, concept_codec, legacy_format
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import RollingMean
from undertow.models.drift.drift_state import DataDriftState, load_state
from undertow.models.drift.production_baseline import BaselineState, floored_sd
from undertow.models.profile import PREDICTION_FEATURE, ReferenceProfile
from undertow.models.segment_status import SegmentStatus, segment_status
from undertow.storage import repo
from undertow.storage.tables import LabelledPair, ModelVersion, TrainingRun, WindowResult
from undertow.worker.monitor.concept.monitor import LOG_LOSS_BASELINE_LABELS
from undertow.worker.report import alerts as report_alerts
from undertow.worker.report.segments import split_events

RECENT_VALUES = 2000  # newest labelled predictions shown as "recent"


@dataclass(frozen=True)
class Version:
    """A registered version as the report shows it."""

    version: str
    stage: str
    created_at: float
    task: str  # regression | classification | "not recorded"
    task_source: str  # where ``task`` came from: "registry", "inferred from the model output", ""
    sha256: str
    config: DriftConfig
    profile: ReferenceProfile
    validation: tuple[float, float] | None  # the validation error's mean and sd
    error_sample: list[float] | None  # the validation errors the detectors were calibrated on
    run: TrainingRun | None  # the run that made it
    card: dict[str, Any]  # models.card.model_card: the card as `undertow models card` prints it

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"


@dataclass(frozen=True)
class Gate:
    """A training run's gate decision."""

    run_id: str
    status: str  # promoted | rejected
    candidate: str | None
    champion: str | None
    finished_at: float | None
    numbers: dict[str, Any]
    outcome: str  # the run's outcome line: the reasons of a rejection


@dataclass
class ReportData:
    model_id: str
    versions: list[Version]
    champion: Version
    windows: list[Any]  # repo.window_history rows: (version, window_index, feature, end_ts, psi, severity)
    latest: list[WindowResult]  # the champion's newest window, one row per feature
    state: DataDriftState | None  # the champion's data-drift state (episodes, checks' last values)
    pairs: list[Any]  # repo.error_history rows: (prediction_ts, error, version, features)
    recent: list[LabelledPair]  # the newest labelled predictions, oldest first
    events: list[dict[str, Any]]  # every alert's CloudEvent, oldest first
    details: list[report_alerts.Detail]  # the alert table's detail of each event
    baselines: dict[str, tuple[float, float]]  # version -> (baseline error, rolling-mean threshold)
    gates: list[Gate]  # every gate decision, oldest first
    history: list[Any]  # champion_history rows, oldest first
    # Drift per segment: the champion's segments now, and the segments' alerts (apart from ``events``).
    segments: list[SegmentStatus] = field(default_factory=list)
    segment_events: list[dict[str, Any]] = field(default_factory=list)
    segment_details: list[report_alerts.Detail] = field(default_factory=list)

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Every episode (started ... ended) of every version, oldest first."""
        return report_alerts.episodes(self.events, self.details)

    @property
    def open_spans(self) -> list[dict[str, Any]]:
        """The champion's episodes still open: what is drifting now, each since its start."""
        return [s for s in self.spans if s["ended"] is None and s["version"] == self.champion.version]


def gather(session: Session, model_id: str) -> ReportData:
    rows = registry.list_versions(session, model_id)
    if not rows:
        raise registry.not_registered(session, model_id)
    history = registry.history(session, model_id)
    runs = training_runs.list_runs(session, model_id)
    by_run = {r.run_id: r for r in runs}
    versions = [_version(row, by_run.get(row.run_id or ""), history) for row in rows]
    champion = next((v for v in versions if v.stage == "champion"), versions[-1])
    events, segment_events = split_events([json.loads(c) for c in repo.alert_history(session, model_id)])
    # Each alert is read with its own version's thresholds: a retrained version may have others.
    configs = {v.version: v.config for v in versions}
    details = [report_alerts.detail(e, configs, champion.config) for e in events]
    stored = repo.drift_state(session, model_id, champion.version)
    return ReportData(
        model_id=model_id,
        versions=versions,
        champion=champion,
        windows=repo.window_history(session, model_id),
        latest=newest_window(session, model_id, champion.version),
        state=None if stored is None else load_state(stored, len(champion.profile.features)),
        pairs=repo.error_history(session, model_id),
        recent=repo.newest_pairs(session, model_id, RECENT_VALUES),
        events=events,
        details=details,
        baselines={v.version: b for v in versions if (b := _baseline(session, model_id, v)) is not None},
        gates=[_gate(r) for r in runs if r.status in ("promoted", "rejected")],
        history=history,
        segments=segment_status(session, [row for row in rows if row.version == champion.version]),
        segment_events=segment_events,
        segment_details=[report_alerts.detail(e, configs, champion.config) for e in segment_events],
    )


def newest_window(session: Session, model_id: str, version: str) -> list[WindowResult]:
    """The rows of a version's newest closed window, one per feature (its tests' statistics and p-values,
    which ``repo.window_history`` leaves out)."""
    newest = select(func.max(WindowResult.window_index)).where(
        WindowResult.model_id == model_id, WindowResult.version == version
    )
    return list(
        session.scalars(
            select(WindowResult).where(
                WindowResult.model_id == model_id,
                WindowResult.version == version,
                WindowResult.window_index == newest.scalar_subquery(),
            )
        )
    )


def _version(row: ModelVersion, run: TrainingRun | None, history: list[Any]) -> Version:
    profile = ReferenceProfile.model_validate_json(row.profile)
    card = model_card(row, run, history)
    task, source = _task(row, profile)
    card["model_details"]["task"] = task
    validation = (
        (row.baseline_error_mean, row.baseline_error_std)
        if row.baseline_error_mean is not None and row.baseline_error_std is not None
        else None
    )
    return Version(
        version=row.version,
        stage=row.stage,
        created_at=row.created_at,
        task=task,
        task_source=source,
        sha256=row.artifact_sha256 or "",
        config=DriftConfig.model_validate_json(row.drift_config),
        profile=profile,
        validation=validation,
        error_sample=json.loads(row.baseline_errors) if row.baseline_errors else None,
        run=run,
        card=card,
    )


def _task(row: ModelVersion, profile: ReferenceProfile) -> tuple[str, str]:
    """The version's task: the registry's, else the stored card's, else what the model output's profile
    says (class labels are categorical, a regressor's output numeric), said to be inferred."""
    if row.task:
        return row.task, "registry"
    stored = json.loads(row.model_card or "{}").get("model_details", {}).get("task")
    if stored:
        return stored, "model card"
    output = profile.features.get(PREDICTION_FEATURE)
    if output is None:
        return "not recorded", ""
    return ("classification" if output.kind == "categorical" else "regression"), "inferred from the model output"


def _gate(run: TrainingRun) -> Gate:
    return Gate(
        run_id=run.run_id,
        status=run.status,
        candidate=run.candidate_version,
        champion=run.champion_version,
        finished_at=run.finished_at,
        numbers=json.loads(run.metrics or "{}").get("gate") or {},
        outcome=run.outcome or "",
    )


def _production(session: Session, model_id: str, v: Version) -> BaselineState | None:
    """The production baseline the monitor keeps in the version's concept state, read through the state's
    codec (upgraded from whatever format it was written in, as the monitor reads it); None before the
    monitor stored any."""
    row = repo.concept_state(session, model_id, v.version)
    if row is None:
        return None
    validation = None if v.validation is None else (v.validation[0], floored_sd(*v.validation))
    log_loss = v.config.model_copy(
        update={"production_baseline_labels": max(v.config.production_baseline_labels, LOG_LOSS_BASELINE_LABELS)}
    )
    codec = concept_codec(Context(v.config, validation, v.error_sample), Context(log_loss, None, None))
    number = row.state_format
    if number is None:
        number = legacy_format(row.detectors, v.config.pt_horizon_buckets)
    return codec.load(row.detectors, number).production


def _baseline(session: Session, model_id: str, v: Version) -> tuple[float, float] | None:
    """(baseline error, rolling-mean threshold) in error units, for the error figure: the production
    baseline the monitor refined if there is one, else the validation one."""
    production = _production(session, model_id, v)
    if production is not None and production.mean is not None and production.sd is not None:
        mean, sd, labels, skewness = production.mean, production.sd, production.labels, production.skewness or 0.0
    elif v.validation is not None:
        mean, sd, labels, skewness = v.validation[0], floored_sd(*v.validation), None, 0.0
    else:
        return None
    c = v.config
    rolling = RollingMean(c.rolling_window, c.rolling_step, c.rolling_sigmas, labels, skewness)
    return mean, mean + rolling.threshold * sd
