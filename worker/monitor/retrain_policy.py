"""When drift asks for retraining: one open request per model, and a cooldown."""

from __future__ import annotations

import json
import logging

from sqlalchemy.orm import Session

from undertow.models.drift.config import DriftConfig
from undertow.storage import repo
from undertow.storage.tables import RetrainRequest as RetrainRequestRow
from undertow.worker.runtime import cloudevents, output_events
from undertow.worker.runtime.output_events import (
    Alert,
    AllData,
    RetrainRequest,
    RetrainRequested,
    RollingData,
)
from undertow.worker.runtime.signing import signed_headers

log = logging.getLogger(__name__)


class RetrainPolicy:
    """Turns the first alert of a drift episode into a retrain request.

    A request is created when there is no open request for the model (the
    trainer closes them) and the cooldown (event time since the previous
    request) has passed; otherwise the alert only counts. So one drift
    episode - which raises one concept alert, or one dataset alert, or both -
    gives one request. Requests are CloudEvents on the retrain topic, written
    through the outbox in the same transaction as the alert.
    """

    def __init__(self, retrain_topic: str, signing_key=None):
        self.retrain_topic = retrain_topic
        self.signing_key = signing_key

    def consider(self, session: Session, alert: Alert, config: DriftConfig, reason: str) -> str | None:
        model_id, version = alert.data.model_id, alert.data.model_version
        trigger_ts = cloudevents.epoch(alert.time)
        if repo.open_retrain_request(session, model_id) is not None:
            log.info("%s: retrain already requested; alert %s only counts", model_id, alert.id)
            return None
        last = repo.last_retrain_request(session, model_id)
        if last is not None and trigger_ts - last.created_ts < config.retrain_cooldown_seconds:
            log.info(
                "%s: retrain cooldown until %s; alert %s only counts",
                model_id,
                cloudevents.rfc3339(last.created_ts + config.retrain_cooldown_seconds),
                alert.id,
            )
            return None
        request_id = cloudevents.event_id(model_id, version, "retrain", alert.id)
        policy = (
            RollingData(max_pairs=config.retrain_window_pairs) if config.retrain_data_policy == "rolling" else AllData()
        )
        event = RetrainRequested(
            id=request_id,
            subject=model_id,
            time=alert.time,
            data=RetrainRequest(
                request_id=request_id,
                model_id=model_id,
                model_version=version,
                reason=reason,
                alert_ids=[alert.id],
                data_policy=policy,
            ),
        )
        session.add(
            RetrainRequestRow(
                request_id=request_id,
                model_id=model_id,
                version=version,
                status="open",
                created_ts=trigger_ts,
                alert_ids=json.dumps([alert.id]),
                cloudevent=output_events.encode(event).decode(),
            )
        )
        value = output_events.encode(event)
        repo.enqueue(
            session,
            self.retrain_topic,
            model_id.encode(),
            value,
            signed_headers(output_events.HEADERS, value, self.signing_key),
        )
        log.info("%s: retrain requested (%s) after %s", model_id, request_id, reason)
        return request_id
