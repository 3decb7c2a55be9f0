"""Training runs, outside the poll loop: wait for data, fit a candidate, judge it, promote or reject.

A run goes accepted → (waiting →) running → promoted | rejected | gave_up |
failed. Each step is its own transaction, and the last one does everything
the outcome means at once, compare-and-set on the run's status and attempt:
the candidate version and its artifact, the promotion (or rejection), the
model event in the outbox, the retrain request closed, the run's record.
A process that dies while training leaves the run ``running``; it is set
back to ``accepted`` and trained again, so it ends exactly once: with
SQLite (one trainer per database) at the next start, with PostgreSQL as
soon as any trainer sees that no live process holds the run's lock
(``RunLock``).

A claim takes the run's lock, then reads the run's data and commits it
``running``. A claim that fails (the database restarting, a connection
cut) gives the lock back, and the run is tried again after a back-off of
1 s, doubling up to 30 s, as is a run another trainer is claiming; a
failed step of the loop backs off the same way. Success resets both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from undertow.errors import UndertowError
from undertow.models import candidate as candidates
from undertow.models import gate, registry, runs, training
from undertow.models.drift.config import DriftConfig
from undertow.models.profile import PREDICTION_FEATURE
from undertow.models.runs import RunStatus
from undertow.models.segments import Segmentation, load_segmentation, segmentation_like
from undertow.storage import db, repo
from undertow.storage.tables import LabelledPair, ModelVersion, TrainingRun
from undertow.worker.runtime import cloudevents, output_events
from undertow.worker.runtime.output_events import (
    ModelChange,
    ModelPromoted,
    ModelRejected,
    ModelRejection,
)
from undertow.worker.runtime.settings import TrainerSettings
from undertow.worker.runtime.signing import signed_headers
from undertow.worker.runtime.topics import Topics
from undertow.worker.runtime.transport import OutboxRelay, TransientError, make_producer

log = logging.getLogger(__name__)

RECOVER_EVERY_S = 10.0
RETRY_FIRST_S = 1.0  # after a failure, the first wait; it doubles with each failure in a row...
RETRY_MAX_S = 30.0  # ...up to this


class RunLock:
    """Held while a run trains, so other trainers can tell a running run from an orphaned one.

    On PostgreSQL a session-level advisory lock on a connection of its own:
    the server releases it when the process dies, however it dies. With
    SQLite one trainer runs per database file (a file lock), so there is
    nothing to tell apart.
    """

    def __init__(self, engine, run_id: str):
        self.engine = engine
        self.key = int(hashlib.sha256(run_id.encode()).hexdigest()[:15], 16)
        self.conn = None

    @property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        if not self._postgres:
            return True
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            conn.commit()  # the lock is the session's: it outlives the transaction
        except BaseException:
            # The server may have granted the lock without the answer arriving: close the session, which frees it.
            conn.invalidate()
            conn.close()
            raise
        if got:
            self.conn = conn
        else:
            conn.close()
        return bool(got)

    def release(self) -> None:
        """Give the lock back; when that fails (a dead connection), close the session, which frees it too."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
        except BaseException as exc:
            conn.invalidate()  # never hand a connection that may hold the lock back to the pool
            if not isinstance(exc, SQLAlchemyError):
                raise
        finally:
            conn.close()

    def held_elsewhere(self) -> bool:
        """Whether a live process holds the lock (always True with SQLite: the one trainer is this one)."""
        if not self._postgres:
            return False
        if self.acquire():
            self.release()
            return False
        return True


class _Taken(Exception):
    """Another trainer claimed the run first."""


@dataclass
class Plan:
    """What a run trains on, read in one transaction, used outside any."""

    run_id: str
    attempt: int
    model_id: str
    request_id: str | None
    champion_version: str
    champion_task: str | None
    schema: dict[str, str]
    champion_model: object | None
    champion_sha256: str | None
    champion_test_set: dict | None
    drift_config: str
    champion_card: dict
    rows: list[dict]
    targets: list
    times: list[float]
    recorded_predictions: list
    event_ids: list[str]
    predicted_from: float | None
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What training and the gate made of a plan, computed outside any transaction; ``_commit`` stores it."""

    built: candidates.BuiltVersion  # the fitted candidate, its profile, holdout errors and metrics
    task: str
    artifact: Path  # the candidate's model file in a temporary folder (the registry stores its own copy)
    decision: gate.GateDecision  # before the check that the champion did not change meanwhile
    data: dict[str, object]  # the run's data section (``_data_section``)
    durations: dict[str, float]  # seconds: fit, gate, total
    params: dict[str, object]  # the run's parameters section (``TrainingWorker._params``)


class TrainingWorker:
    def __init__(self, settings: TrainerSettings, clock=time.time):
        self.settings = settings
        self.clock = clock
        self.topics = Topics(settings.topic_prefix)
        self.engine = db.make_engine(settings.db_url)
        self.sessions = db.make_session_factory(self.engine)
        self.rules = gate.GateRules(
            min_holdout=settings.gate_min_holdout,
            min_gain=settings.gate_min_gain,
            confidence=settings.gate_confidence,
            resamples=settings.gate_resamples,
            tolerance=settings.gate_tolerance,
        )
        self._next_check: dict[str, float] = {}
        self._training: set[str] = set()  # runs this process trains right now
        self._retry_in: dict[str, float] = {}  # per run: the back-off after its next failed or lost claim
        self._relay: OutboxRelay | None = None

    # -- the thread ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Train due runs until ``stop`` is set (the service runner's background thread)."""
        producer = None
        try:
            producer = make_producer(self.settings)
            self._relay = OutboxRelay(self.sessions, producer)
            recovered_at = -RECOVER_EVERY_S
            retry_in = RETRY_FIRST_S
            while not stop.is_set():
                try:
                    if time.monotonic() - recovered_at >= RECOVER_EVERY_S:
                        self.recover()
                        recovered_at = time.monotonic()
                    worked = self.step()
                except (SQLAlchemyError, TransientError, OSError) as exc:
                    # Backing off: a database that is restarting is not asked again and again meanwhile.
                    log.warning("training step failed (%s); retry in %.0f s", exc, retry_in)
                    stop.wait(retry_in)
                    retry_in = min(retry_in * 2, RETRY_MAX_S)
                    continue
                retry_in = RETRY_FIRST_S
                if not worked:
                    stop.wait(1.0)
        except Exception:  # the thread must say why it ended
            log.exception("the training thread stopped")
            raise
        finally:
            if producer is not None:
                producer.close(timeout=5)

    def busy(self) -> bool:
        with self.sessions() as session:
            return bool(runs.list_runs(session, status=runs.ACTIVE))

    def recover(self) -> int:
        """Runs left ``running`` by a trainer that died go back to ``accepted``."""
        with self.sessions.begin() as session:
            orphans = [
                r
                for r in runs.list_runs(session, status=(RunStatus.RUNNING,))
                if r.run_id not in self._training and not RunLock(self.engine, r.run_id).held_elsewhere()
            ]
            for run in orphans:
                run.status, run.outcome = RunStatus.ACCEPTED, "resumed: the trainer that ran it stopped"
        for run in orphans:
            log.warning("run %s was interrupted (its trainer stopped): training it again", run.run_id)
        return len(orphans)

    def step(self) -> bool:
        """Process the oldest due run; False when none is due."""
        now = self.clock()
        with self.sessions() as session:
            due = [
                r.run_id
                for r in runs.list_runs(session, status=(RunStatus.ACCEPTED, RunStatus.WAITING))
                if self._next_check.get(r.run_id, 0) <= now
            ]
        if not due:
            return False
        self.process(due[0])
        return True

    # -- one run ------------------------------------------------------------------------------------

    def process(self, run_id: str) -> str:
        """Move one run on as far as it can go now; its status afterwards."""
        lock = RunLock(self.engine, run_id)
        try:
            plan = self._claim(run_id, lock)
        except _Taken:
            self._back_off(run_id)  # another trainer is claiming it: look again later, not at once
            return RunStatus.RUNNING
        except BaseException:
            # A claim that did not commit keeps no lock. The lock's connection may well be alive while the
            # claim's is dead (the database restarted between the claim's first read and its lock): a lock
            # left there would make every later claim find the run taken, for as long as this process lives.
            self._training.discard(run_id)
            lock.release()
            self._back_off(run_id)
            raise
        self._retry_in.pop(run_id, None)
        if not isinstance(plan, Plan):
            lock.release()  # the run waits for data, or ended without a candidate
            return plan
        try:
            status = self._finish(plan)
        finally:
            self._training.discard(run_id)
            lock.release()
        self._publish()
        if self.settings.mlflow_tracking_uri:
            with self.sessions() as session:
                runs.mirror_to_mlflow(self.settings.mlflow_tracking_uri, runs.as_dict(runs.get_run(session, run_id)))
        return status

    def _claim(self, run_id: str, lock: RunLock) -> Plan | str:
        """Lock the run, read what it trains on and commit it ``running``: its plan; else its status.

        The lock comes first: a run another trainer is claiming costs no
        read of its data, and the lock is held before the claim commits, so
        no trainer takes the claimed run for an orphan. Raises ``_Taken``.
        """
        with self.sessions.begin() as session:
            run = runs.get_run(session, run_id)
            if run.status not in (RunStatus.ACCEPTED, RunStatus.WAITING):
                return run.status
            if not lock.acquire():
                raise _Taken
            try:
                plan = self._plan(session, run)
            except UndertowError as exc:
                self._end_without_candidate(session, run, RunStatus.FAILED, str(exc))
                return run.status
            if plan is None:
                return run.status
            self._training.add(run_id)
            return plan

    def _back_off(self, run_id: str) -> None:
        """The run is due again after the back-off, which doubles with each failed or lost claim in a row."""
        delay = self._retry_in.get(run_id, RETRY_FIRST_S)
        self._next_check[run_id] = self.clock() + delay
        self._retry_in[run_id] = min(delay * 2, RETRY_MAX_S)

    def _finish(self, plan: Plan) -> str:
        try:
            outcome = self._train_and_judge(plan)
        except UndertowError as exc:
            log.error("run %s failed: %s", plan.run_id, exc)
            with self.sessions.begin() as session:
                run = runs.find_run(session, plan.run_id)
                if run.status == RunStatus.RUNNING and run.attempts == plan.attempt:
                    self._end_without_candidate(session, run, RunStatus.FAILED, str(exc))
            return RunStatus.FAILED
        try:
            with self.sessions.begin() as session:
                return self._commit(session, plan, outcome)
        finally:
            shutil.rmtree(outcome.artifact.parent, ignore_errors=True)  # the registry has its own copy

    def _plan(self, session: Session, run: TrainingRun) -> Plan | None:
        """The run's plan, the run set ``running``; None when it waits for data or gave up (said on the run)."""
        champion = _champion(session, run.model_id)
        trigger = json.loads(run.trigger)
        predicted_from = trigger.get("change_at")
        policy = trigger.get("data_policy", {"kind": "rolling", "max_pairs": None})
        limit = policy.get("max_pairs") if policy.get("kind") == "rolling" else None
        have = repo.count_pairs(session, run.model_id, predicted_from)
        usable = min(have, limit) if limit else have
        if usable < self.pairs_needed():
            self._wait_or_give_up(session, run, usable, predicted_from)
            return None
        pairs = repo.newest_pairs(session, run.model_id, limit, predicted_from)
        model = registry.load_artifact(champion) if champion.artifact_path else None  # SHA-256 checked first
        run.status, run.started_at, run.attempts = RunStatus.RUNNING, self.clock(), run.attempts + 1
        run.champion_version = champion.version
        run.outcome = None
        log.info(
            "run %s: training a candidate for %s on %d pairs (attempt %d)",
            run.run_id,
            run.model_id,
            len(pairs),
            run.attempts,
        )
        return _plan_of(run, champion, model, pairs, predicted_from)

    def _wait_or_give_up(self, session: Session, run: TrainingRun, usable: int, predicted_from: float | None) -> None:
        """Too few labelled pairs: the run waits, looked at again now and then, until its deadline; then it gives up."""
        needed = self.pairs_needed()
        since = "" if predicted_from is None else f" predicted after the change ({cloudevents.rfc3339(predicted_from)})"
        if self.clock() < (run.wait_until or 0):
            run.status = RunStatus.WAITING
            run.outcome = f"waiting for {needed} labelled pairs{since}: {usable} so far"
            self._next_check[run.run_id] = self.clock() + self.settings.wait_check_seconds
            log.info("run %s: %s", run.run_id, run.outcome)
            return
        self._end_without_candidate(
            session,
            run,
            RunStatus.GAVE_UP,
            f"only {usable} labelled pairs{since} by the "
            f"deadline; {needed} are needed for training and a held-out part",
        )

    def pairs_needed(self) -> int:
        s = self.settings
        return max(
            math.ceil(s.min_train_pairs / (1 - s.holdout_fraction - s.gap_fraction)),
            math.ceil((s.min_train_pairs + s.gate_min_holdout) / (1 - s.gap_fraction)),
        )

    def _train_and_judge(self, plan: Plan) -> Outcome:
        """Fit a candidate on the plan's pairs and judge it against the champion; nothing is stored."""
        started = time.perf_counter()
        task = plan.champion_task or training.infer_task(plan.targets)
        split = training.split_by_time(
            plan.times, self.settings.holdout_fraction, self.settings.gap_fraction, self.settings.gate_min_holdout
        )
        pipeline = (
            plan.champion_model if plan.champion_model is not None else training.default_pipeline(plan.schema, task)
        )
        built = candidates.build_version(pipeline, plan.rows, plan.targets, plan.schema, task, split)
        champion_errors = _champion_holdout_errors(plan, task, split)
        own_test, own_test_note = _own_test(plan, task, built.model)
        artifact = candidates.dump_model(built.model)
        started_gate = time.perf_counter()
        decision = gate.judge(
            champion_errors,
            built.holdout_errors,
            self.rules,
            champion_sha256=plan.champion_sha256,
            candidate_sha256=registry.sha256_file(artifact),
            own_test=own_test,
            own_test_note=own_test_note,
            seed=int(hashlib.sha256(plan.run_id.encode()).hexdigest()[:8], 16),
        )
        return Outcome(
            built=built,
            task=task,
            artifact=artifact,
            decision=decision,
            data=_data_section(plan, split),
            durations={
                **built.durations,
                "gate_seconds": time.perf_counter() - started_gate,
                "total_seconds": time.perf_counter() - started,
            },
            params=self._params(plan, built, task),
        )

    def _params(self, plan: Plan, built: candidates.BuiltVersion, task: str) -> dict[str, object]:
        """The run's parameters section: the recipe, the estimator, the split and the gate's rules."""
        return {
            "pipeline": "champion clone" if plan.champion_model is not None else "default recipe",
            "estimator": _estimator_name(built.model),
            "holdout_fraction": self.settings.holdout_fraction,
            "gap_fraction": self.settings.gap_fraction,
            "task": task,
            **self.rules.model_dump(),
        }

    def _commit(self, session: Session, plan: Plan, outcome: Outcome) -> str:
        """Store what the outcome means, in one transaction, unless another attempt finished the run meanwhile."""
        run = runs.find_run(session, plan.run_id, for_update=True)
        if run is None or run.status != RunStatus.RUNNING or run.attempts != plan.attempt:
            log.warning("run %s was finished elsewhere meanwhile: this attempt's result is dropped", plan.run_id)
            return run.status if run else "missing"
        built, decision = outcome.built, outcome.decision
        champion = _champion(session, plan.model_id)
        if champion.version != plan.champion_version:
            decision = gate.GateDecision(
                False, [f"the champion changed to {champion.version} during training"], decision.numbers
            )
        row = registry.register(
            session,
            segments=_segments_like(champion, built),
            model_id=plan.model_id,
            profile=built.profile,
            artifacts_dir=Path(self.settings.artifacts_dir),
            artifact=outcome.artifact,
            drift_config=DriftConfig.model_validate_json(plan.drift_config),
            baseline_error=built.baseline_error,
            error_sample=built.error_sample,
            data_sha256=outcome.data["sha256"],
            card=_card(plan, outcome, decision),
            stage="candidate",
            task=outcome.task,
            test_set=built.test_set,
            run_id=plan.run_id,
            actor="trainer",
            reason="trained on request",
            request_id=plan.request_id,
        )
        status, reason, event = self._promote_or_reject(session, plan, row, decision)
        self._enqueue(session, event)
        if plan.request_id:
            repo.close_retrain_request(session, plan.request_id, f"{status}: {reason}")
        run.candidate_version = row.version
        runs.finish(
            run,
            status,
            reason,
            params=outcome.params,
            metrics={"candidate": built.metrics, "gate": decision.numbers},
            data=outcome.data,
            durations=outcome.durations,
        )
        log.info("run %s: candidate %s@%s %s (%s)", plan.run_id, plan.model_id, row.version, status, reason)
        return status

    def _promote_or_reject(
        self, session: Session, plan: Plan, row: ModelVersion, decision: gate.GateDecision
    ) -> tuple[RunStatus, str, ModelPromoted | ModelRejected]:
        """The gate's decision applied to the registered candidate: the run's status, why, and the model event."""
        numbers = decision.numbers
        if not decision.passed:
            reason = "gate failed: " + "; ".join(decision.reasons)
            registry.reject(session, row)
            return (
                RunStatus.REJECTED,
                reason,
                ModelRejected(
                    id=cloudevents.event_id(plan.model_id, row.version, "rejected", plan.run_id),
                    subject=plan.model_id,
                    time=cloudevents.rfc3339(self.clock()),
                    data=ModelRejection(
                        model_id=plan.model_id,
                        model_version=row.version,
                        champion_version=plan.champion_version,
                        reasons=decision.reasons,
                        request_id=plan.request_id,
                        run_id=plan.run_id,
                        gate=numbers,
                    ),
                ),
            )
        reason = (
            f"gate passed: error {numbers['champion_mean_error']:.4g} -> {numbers['candidate_mean_error']:.4g},"
            f" improvement {numbers['improvement_low']:.4g}..{numbers['improvement_high']:.4g} "
            f"({numbers['confidence']:.0%}) on {numbers['holdout_pairs']} held-out pairs"
        )
        registry.promote(
            session,
            plan.model_id,
            row.version,
            actor="trainer",
            reason=reason,
            request_id=plan.request_id,
            run_id=plan.run_id,
        )
        return (
            RunStatus.PROMOTED,
            reason,
            ModelPromoted(
                id=cloudevents.event_id(plan.model_id, row.version, "promoted", plan.run_id),
                subject=plan.model_id,
                time=cloudevents.rfc3339(self.clock()),
                data=ModelChange(
                    model_id=plan.model_id,
                    model_version=row.version,
                    previous_version=plan.champion_version,
                    action="promoted",
                    actor="trainer",
                    reason=reason,
                    request_id=plan.request_id,
                    run_id=plan.run_id,
                    gate=numbers,
                ),
            ),
        )

    def _end_without_candidate(self, session: Session, run: TrainingRun, status: RunStatus, reason: str) -> None:
        runs.finish(run, status, reason)
        if run.request_id:
            repo.close_retrain_request(session, run.request_id, f"{status}: {reason}")
        log.warning("run %s for %s ended %s: %s", run.run_id, run.model_id, status, reason)

    def _enqueue(self, session: Session, event) -> None:
        value = output_events.encode(event)
        repo.enqueue(
            session,
            self.topics.models,
            event.data.model_id.encode(),
            value,
            signed_headers(output_events.HEADERS, value, self.settings.signing_key),
        )

    def _publish(self) -> None:
        if self._relay is None:
            return
        try:
            self._relay.publish_pending()
        except (TransientError, OperationalError) as exc:
            log.warning("model event not published yet (%s); the outbox keeps it", exc)


def _champion(session: Session, model_id: str) -> ModelVersion:
    row = registry.champion(session, model_id)
    if row is None:
        raise registry.RegistryError(f"model {model_id!r} has no champion to retrain")
    return row


def _plan_of(
    run: TrainingRun,
    champion: ModelVersion,
    model: object | None,
    pairs: list[LabelledPair],
    predicted_from: float | None,
) -> Plan:
    """A claimed run's plan: its champion (loaded ``model``, or None without an artifact) and its pairs."""
    schema = {k: v for k, v in json.loads(champion.feature_schema).items() if k != PREDICTION_FEATURE}
    return Plan(
        run_id=run.run_id,
        attempt=run.attempts,
        model_id=run.model_id,
        request_id=run.request_id,
        champion_version=champion.version,
        champion_task=champion.task,
        schema=schema,
        champion_model=model,
        champion_sha256=champion.artifact_sha256,
        champion_test_set=json.loads(champion.test_set) if champion.test_set else None,
        drift_config=champion.drift_config,
        champion_card=json.loads(champion.model_card or "{}"),
        rows=[json.loads(p.features) for p in pairs],
        targets=[json.loads(p.label) for p in pairs],
        times=[p.prediction_ts for p in pairs],
        recorded_predictions=[json.loads(p.prediction) for p in pairs],
        event_ids=[p.event_id for p in pairs],
        predicted_from=predicted_from,
    )


def _champion_holdout_errors(plan: Plan, task: str, split: training.Split) -> np.ndarray:
    """The champion's errors on the held-out rows: re-scored by its model, else what it answered in production."""
    held_targets = [plan.targets[i] for i in split.holdout]
    if plan.champion_model is not None:
        predictions = training.predict(plan.champion_model, [plan.rows[i] for i in split.holdout], plan.schema, task)
    else:
        predictions = [plan.recorded_predictions[i] for i in split.holdout]
    return training.row_errors(predictions, held_targets)


NO_TEST_SET = "the champion has no test set"


def _own_test(plan: Plan, task: str, candidate: object) -> tuple[tuple[float, float] | None, str]:
    """(champion, candidate) mean error on the champion's own test set, or None; and the gate's note for None."""
    if plan.predicted_from is not None:
        return None, (
            "not applied: the request follows a concept change, so the champion's test set "
            "carries the old concept's labels"
        )
    test = plan.champion_test_set
    if not test:
        return None, NO_TEST_SET
    if plan.champion_model is not None:
        champion_own = candidates.test_set_errors(plan.champion_model, test, plan.schema, task)
    elif test.get("predictions") is not None:
        champion_own = training.row_errors(test["predictions"], test["targets"])
    else:
        return None, NO_TEST_SET
    candidate_own = candidates.test_set_errors(candidate, test, plan.schema, task)
    return (float(champion_own.mean()), float(candidate_own.mean())), NO_TEST_SET


def _data_section(plan: Plan, split: training.Split) -> dict[str, object]:
    """The run's data section: how many pairs, how they were split, the time each part covers, their hash."""
    times = np.asarray(plan.times)
    return {
        "pairs": len(plan.rows),
        "train_rows": int(split.train.size),
        "gap_rows": split.gap,
        "holdout_rows": int(split.holdout.size),
        "train_from": cloudevents.rfc3339(float(times[split.train].min())),
        "train_to": cloudevents.rfc3339(float(times[split.train].max())),
        "holdout_from": cloudevents.rfc3339(float(times[split.holdout].min())),
        "holdout_to": cloudevents.rfc3339(float(times[split.holdout].max())),
        "predicted_from": None if plan.predicted_from is None else cloudevents.rfc3339(plan.predicted_from),
        "sha256": _data_hash(plan),
    }


def _estimator_name(model: object) -> str:
    """The estimator's class, the final step's for a pipeline."""
    steps = getattr(model, "steps", None)
    return type(steps[-1][1] if steps else model).__name__


def _card(plan: Plan, outcome: Outcome, decision: gate.GateDecision) -> dict:
    """The candidate's model card sections beyond the generated ones; the intended use is the champion's."""
    return {
        "model_details": {"algorithm": outcome.params["estimator"]},
        "intended_use": plan.champion_card.get("intended_use", {}),
        "training_data": {k: outcome.data[k] for k in ("train_from", "train_to", "train_rows")},
        "evaluation": {"gate": decision.numbers, "holdout": outcome.built.metrics},
    }


def _data_hash(plan: Plan) -> str:
    digest = hashlib.sha256()
    for event_id, target in zip(plan.event_ids, plan.targets):
        digest.update(f"{event_id}\x1f{target}\x1e".encode())
    return digest.hexdigest()


def _segments_like(champion: ModelVersion, built: candidates.BuiltVersion) -> Segmentation | None:
    """The candidate is segmented as the champion it would replace (models.segments.segmentation_like)."""
    previous = load_segmentation(champion.segments)
    if previous is None:
        return None
    predictions = training.predict(built.model, built.test_set["features"], built.schema, built.task)
    return segmentation_like(previous, built.test_set, predictions, built.profile, built.task == "classification")
