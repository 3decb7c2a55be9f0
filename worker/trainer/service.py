"""The trainer as a service of the shared runtime: retrain requests are accepted in the poll loop,
trained outside it (``worker.trainer.training``).

Accepting a request is one transaction with the offsets (the checkpoint's):
a training run row keyed by the request id, so a request delivered twice
finds its run and is ignored. What the run needs to know about its cause
(the alerts, when a concept change was detected, the data policy) is
recorded with it. A request naming a model that is not registered or a
version that does not exist is dead-lettered instead, signing key or not:
no run, no training, no artifact.
"""

from __future__ import annotations

import json
import logging
import time

from kafka import KafkaAdminClient
from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent
from undertow.models import registry, runs
from undertow.storage import repo
from undertow.worker.monitor.model_events import check_known, warn_if_unsigned
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.output_events import RetrainRequested, parse_event
from undertow.worker.runtime.service import Service, ServiceRunner
from undertow.worker.runtime.settings import TrainerSettings
from undertow.worker.runtime.signing import verify
from undertow.worker.runtime.topics import Topics, ensure_topics
from undertow.worker.trainer.training import TrainingWorker

log = logging.getLogger(__name__)


class RequestParser:
    """A retrain request record to its event; unsigned or forged ones (with a signing key set) are invalid."""

    def __init__(self, signing_key=None):
        self.signing_key = signing_key

    def __call__(self, record) -> RetrainRequested:
        verify(record, self.signing_key)
        event = parse_event(record.value or b"")
        if not isinstance(event, RetrainRequested):
            raise InvalidEvent(f"{event.type} is not a retrain request")
        return event


class AcceptStage:
    """One training run per retrain request; a redelivered request changes nothing.

    A request for a model or version the registry does not have raises InvalidEvent (the runtime
    dead-letters that record with the reason and commits the rest): without a signing key anyone who can
    write to the retrain topic could otherwise have a version trained and stored for every forged request.
    """

    def __init__(self, max_wait_seconds: float, clock=time.time):
        self.max_wait_seconds = max_wait_seconds
        self.clock = clock

    def reset(self) -> None:
        """Nothing cached."""

    def apply(self, session: Session, batch: Batch) -> None:
        # All checked before any is accepted: a failed check rolls the batch back, and the good requests,
        # processed again without the culprit, would otherwise be logged as accepted twice.
        for _, event in batch.events:
            check_known(
                session, f"retrain request {event.data.request_id!r}", event.data.model_id, event.data.model_version
            )
        for position, event in batch.events:
            request = event.data
            run_id = runs.run_id_for(request.request_id)
            if runs.find_run(session, run_id) is not None:
                log.info(
                    "retrain request %s (%s[%d]@%d) was accepted before as %s: ignored",
                    request.request_id,
                    position.topic,
                    position.partition,
                    position.offset,
                    run_id,
                )
                continue
            trigger = {
                "reason": request.reason,
                "alert_ids": request.alert_ids,
                "requested_at": event.time,
                "request_version": request.model_version,
                "data_policy": request.data_policy.model_dump(),
                "change_at": _change_at(session, request.alert_ids),
            }
            champion = registry.champions(session, [request.model_id]).get(request.model_id)
            run = runs.new_run(
                session,
                run_id=run_id,
                model_id=request.model_id,
                champion_version=champion,
                trigger=trigger,
                request_id=request.request_id,
            )
            run.wait_until = self.clock() + self.max_wait_seconds
            log.info(
                "retrain request %s for %s accepted as %s (%s)",
                request.request_id,
                request.model_id,
                run_id,
                request.reason,
            )


def _change_at(session: Session, alert_ids: list[str]) -> float | None:
    """When the change behind a concept alert began, in prediction time (None for data drift).

    The prediction-time CUSUM's estimate where the alert has one; else the
    event time at which it was detected (later than the change: safe, if wasteful).
    """
    for alert_id in alert_ids:
        row = repo.alert(session, alert_id)
        if row is not None and row.type == "undertow.drift.concept":
            data = json.loads(row.cloudevent)["data"]
            return cloudevents.epoch(data.get("change_started_at") or data["detected_at"])
    return None


def trainer_service(settings: TrainerSettings, partitions: int = 3, worker: TrainingWorker | None = None) -> Service:
    topics = Topics(settings.topic_prefix)
    worker = worker or TrainingWorker(settings)

    def prepare(admin: KafkaAdminClient) -> None:
        # Said here, at the start of a run (past the single-writer lock and the broker check), not when the
        # service is built: a start refused for another reason then stays one line.
        warn_if_unsigned(settings, log)
        ensure_topics(admin, topics, partitions)

    return Service(
        name="trainer",
        topics=[topics.retrain],
        parse=RequestParser(settings.signing_key),
        stages=[AcceptStage(settings.max_wait_seconds)],
        prepare=prepare,
        background=worker.run,
        busy=worker.busy,
    )


class Trainer(ServiceRunner):
    """The trainer, ready to ``run()``."""

    def __init__(self, settings: TrainerSettings, partitions: int = 3):
        self.worker = TrainingWorker(settings)
        super().__init__(settings, trainer_service(settings, partitions, self.worker))
