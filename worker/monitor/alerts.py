"""Recording an alert: its row for `undertow alerts` and its outbox message, in the caller's transaction."""
from __future__ import annotations

import json
import logging

from sqlalchemy.orm import Session

from storage import repo
from storage.tables import Alert
from worker.runtime import cloudevents

log = logging.getLogger(__name__)


def record_alert(session: Session, alerts_topic: str, event: dict) -> None:
    data = event["data"]
    log.info("alert %s %s@%s %s: %s (%s)", event["type"], data["model_id"], data["model_version"],
             data.get("feature") or data.get("detector") or "", data["severity"], data["episode"])
    repo.add_alert(session, Alert(
        id=event["id"], model_id=data["model_id"], version=data["model_version"], type=event["type"],
        feature=data.get("feature"), severity=data["severity"], event_ts=cloudevents.epoch(event["time"]),
        cloudevent=json.dumps(event)))
    repo.enqueue(session, alerts_topic, data["model_id"].encode(), cloudevents.encode(event), cloudevents.HEADERS)
