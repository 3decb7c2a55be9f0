"""Training runs as experiments: what caused a run, its data, parameters, metrics, durations and outcome.

Undertow's own records are the source of truth; with the ``mlflow`` extra
and ``UNDERTOW_MLFLOW_TRACKING_URI`` set, finished runs are mirrored to
MLflow as well (:func:`mirror_to_mlflow`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from undertow.errors import NotFound
from undertow.models.registry import environment
from undertow.storage.tables import TrainingRun

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    """A training run's status; the value is what ``training_runs.status`` stores (a plain string)."""

    ACCEPTED = "accepted"  # the request is recorded; no trainer has looked at it yet
    WAITING = "waiting"  # too few labelled pairs so far: looked at again until ``wait_until``
    RUNNING = "running"  # claimed by a trainer, training
    PROMOTED = "promoted"  # the candidate passed the gate and is champion
    REJECTED = "rejected"  # the candidate failed the gate
    GAVE_UP = "gave_up"  # not enough labelled pairs by the deadline
    FAILED = "failed"  # an error ended it (a tampered artifact, a training error)
    REGISTERED = "registered"  # `undertow train`: trained and registered by hand, no gate


ACTIVE = (RunStatus.ACCEPTED, RunStatus.WAITING, RunStatus.RUNNING)
FINISHED = (RunStatus.PROMOTED, RunStatus.REJECTED, RunStatus.REGISTERED, RunStatus.GAVE_UP, RunStatus.FAILED)


def run_id_for(request_id: str) -> str:
    """The run of a retrain request has a deterministic id: a redelivered request finds its run."""
    return "run-" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


def new_run(
    session: Session,
    *,
    run_id: str,
    model_id: str,
    champion_version: str | None,
    trigger: dict[str, Any],
    request_id: str | None = None,
    status: RunStatus = RunStatus.ACCEPTED,
) -> TrainingRun:
    run = TrainingRun(
        run_id=run_id,
        request_id=request_id,
        model_id=model_id,
        champion_version=champion_version,
        status=status,
        trigger=json.dumps(trigger, default=str),
        accepted_at=time.time(),
        attempts=0,
        params="{}",
        metrics="{}",
        data="{}",
        durations="{}",
        environment=json.dumps(environment()),
    )
    session.add(run)
    session.flush()
    return run


def finish(run: TrainingRun, status: RunStatus, outcome: str, **sections: dict[str, Any]) -> None:
    """Record the outcome and the run's sections (params, metrics, data, durations) as JSON."""
    for name, value in sections.items():
        setattr(run, name, json.dumps(value, default=str))
    run.status, run.outcome, run.finished_at = status, outcome, time.time()


def find_run(session: Session, run_id: str, *, for_update: bool = False) -> TrainingRun | None:
    """The run, or None; ``for_update`` locks its row until the transaction ends (PostgreSQL)."""
    return session.get(TrainingRun, run_id, with_for_update=for_update or None)


def get_run(session: Session, run_id: str) -> TrainingRun:
    run = find_run(session, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id!r}")
    return run


def list_runs(session: Session, model_id: str | None = None, status: tuple[RunStatus, ...] = ()) -> list[TrainingRun]:
    query = select(TrainingRun).order_by(TrainingRun.accepted_at, TrainingRun.run_id)
    if model_id:
        query = query.where(TrainingRun.model_id == model_id)
    if status:
        query = query.where(TrainingRun.status.in_(status))
    return list(session.scalars(query))


def as_dict(run: TrainingRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "request_id": run.request_id,
        "model_id": run.model_id,
        "champion_version": run.champion_version,
        "candidate_version": run.candidate_version,
        "status": run.status,
        "outcome": run.outcome,
        "accepted_at": run.accepted_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "wait_until": run.wait_until,
        "attempts": run.attempts,
        "trigger": json.loads(run.trigger),
        "params": json.loads(run.params),
        "metrics": json.loads(run.metrics),
        "data": json.loads(run.data),
        "durations": json.loads(run.durations),
        "environment": json.loads(run.environment),
    }


def mirror_to_mlflow(tracking_uri: str | None, run: dict[str, Any], experiment: str = "undertow") -> str | None:
    """Log a finished run to MLflow (parameters, numeric metrics, the rest as tags); its MLflow run id.

    Failures are logged, never raised: MLflow is a mirror, not the record.
    """
    if not tracking_uri:
        return None
    try:
        import mlflow
    except ImportError:
        log.warning("UNDERTOW_MLFLOW_TRACKING_URI is set but mlflow is not installed: pip install 'undertow[mlflow]'")
        return None
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        mirrored = client.create_run(
            experiment_id,
            run_name=run["run_id"],
            tags={
                "undertow.run_id": run["run_id"],
                "undertow.model_id": run["model_id"],
                "undertow.status": run["status"],
                "undertow.outcome": (run["outcome"] or "")[:5000],
                "undertow.request_id": run["request_id"] or "",
                "undertow.candidate_version": run["candidate_version"] or "",
            },
        )
        for key, value in _flat(run["params"]).items():
            client.log_param(mirrored.info.run_id, key, str(value)[:500])
        for key, value in _flat(
            {"metrics": run["metrics"], "data": run["data"], "durations": run["durations"]}
        ).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(mirrored.info.run_id, key, float(value))
        client.set_terminated(mirrored.info.run_id, "FINISHED" if run["status"] in FINISHED else "FAILED")
        run_id: str = mirrored.info.run_id  # mlflow is untyped here
        return run_id
    except Exception as exc:  # noqa: BLE001 - a mirror must never fail the run it mirrors
        log.warning("could not mirror run %s to MLflow at %s: %s", run["run_id"], tracking_uri, exc)
        return None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat(value, name + ".")
        else:
            out[name] = value
    return out
