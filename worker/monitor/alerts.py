"""Recording an alert: its row for `undertow alerts` and its outbox message, in the caller's transaction."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from undertow.storage import repo
from undertow.storage.tables import Alert as AlertRow
from undertow.worker.runtime import cloudevents, output_events
from undertow.worker.runtime.output_events import Alert

log = logging.getLogger(__name__)


def record_alert(session: Session, alerts_topic: str, event: Alert) -> None:
    data = event.data
    subject = getattr(data, "feature", None) or getattr(data, "detector", "")
    where = "".join(f" [{column}={value}]" for column, value in (data.segment or {}).items())
    log.info(
        "alert %s %s@%s%s %s: %s (%s)",
        event.type,
        data.model_id,
        data.model_version,
        where,
        subject,
        data.severity,
        data.episode,
    )
    value = output_events.encode(event)
    repo.add_alert(
        session,
        AlertRow(
            id=event.id,
            model_id=data.model_id,
            version=data.model_version,
            type=event.type,
            feature=getattr(data, "feature", None),
            severity=data.severity,
            event_ts=cloudevents.epoch(event.time),
            cloudevent=value.decode(),
        ),
    )
    repo.enqueue(session, alerts_topic, data.model_id.encode(), value, output_events.HEADERS)
