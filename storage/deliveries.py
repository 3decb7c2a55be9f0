"""The delivery outbox of ``undertow notify``: repository functions. Each takes a Session and never commits.

A delivery is one message to one sink (``tables.NotifyDelivery``) carrying
one event or a digest of one model's events (``tables.NotifyDeliveryEvent``).
The notify service's stage adds events in the transaction of the consumer
offsets; its sender takes the oldest open delivery of a sink (``head``),
sends it and records the outcome, one transaction per attempt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from undertow.storage.tables import Alert, NotifyDelivery, NotifyDeliveryEvent, RetrainRequest


class Status(StrEnum):
    COLLECTING = "collecting"  # a digest still taking its model's events until due_at
    PENDING = "pending"  # due_at: the next attempt
    DELIVERED = "delivered"
    DEAD = "dead"  # dead-lettered: given up, until `undertow notify retry`


OPEN = (Status.COLLECTING, Status.PENDING)
ERROR_CHARS = 2000  # the last error kept per delivery


def seen(session: Session, sink: str, event_id: str) -> bool:
    """Whether ``sink`` has (or had, within the retention) a delivery carrying this event."""
    found = session.execute(
        select(NotifyDeliveryEvent.id).where(NotifyDeliveryEvent.sink == sink, NotifyDeliveryEvent.event_id == event_id)
    ).first()
    return found is not None


def add_event(
    session: Session,
    *,
    sink: str,
    model_id: str,
    event_id: str,
    event_type: str,
    cloudevent: str,
    now: float,
    digest_id: str | None = None,
    group_seconds: float = 0.0,
) -> int | None:
    """Queue one event for ``sink``; the delivery's row id, or None when the sink already has this event.

    With ``group_seconds`` > 0 the event joins the model's digest that is still
    collecting, or starts one (``digest_id`` its CloudEvent id) that closes
    ``group_seconds`` from now. The collecting row is read ``FOR UPDATE``: on
    PostgreSQL, a sender closing the digest at the same moment either waits for
    this transaction (and sends the event with the digest) or has closed it
    first (and this event starts a new digest).
    """
    if seen(session, sink, event_id):
        return None
    delivery = None
    if group_seconds > 0:
        delivery = session.execute(
            select(NotifyDelivery.id)
            .where(
                NotifyDelivery.sink == sink,
                NotifyDelivery.model_id == model_id,
                NotifyDelivery.status == Status.COLLECTING,
            )
            .order_by(NotifyDelivery.id)
            .limit(1)
            .with_for_update()
        ).scalar()
    if delivery is None:
        row = NotifyDelivery(
            sink=sink,
            delivery_id=digest_id if group_seconds > 0 and digest_id else event_id,
            model_id=model_id,
            status=Status.COLLECTING if group_seconds > 0 else Status.PENDING,
            created_at=now,
            due_at=now + group_seconds,
            attempts=0,
        )
        session.add(row)
        session.flush()
        delivery = row.id
    session.add(
        NotifyDeliveryEvent(
            delivery=delivery, sink=sink, event_id=event_id, event_type=event_type, cloudevent=cloudevent
        )
    )
    return delivery


def head(session: Session, sink: str) -> NotifyDelivery | None:
    """The oldest delivery of ``sink`` not yet delivered or dead-lettered: the only one that may be sent."""
    return session.execute(
        select(NotifyDelivery)
        .where(NotifyDelivery.sink == sink, NotifyDelivery.status.in_(OPEN))
        .order_by(NotifyDelivery.id)
        .limit(1)
    ).scalar()


def close_digest(session: Session, delivery: int) -> bool:
    """A collecting digest becomes pending (its events are fixed from here on); False if it was not collecting."""
    return _set(session, delivery, (Status.COLLECTING,), status=Status.PENDING) == 1


def events_of(session: Session, delivery: int) -> list[str]:
    """The CloudEvents (JSON, as consumed) a delivery carries, in the order they were added."""
    return list(
        session.execute(
            select(NotifyDeliveryEvent.cloudevent)
            .where(NotifyDeliveryEvent.delivery == delivery)
            .order_by(NotifyDeliveryEvent.id)
        ).scalars()
    )


def mark_delivered(session: Session, delivery: int, now: float) -> bool:
    return (
        _set(session, delivery, (Status.PENDING,), status=Status.DELIVERED, finished_at=now, last_attempt_at=now) == 1
    )


def schedule_retry(session: Session, delivery: int, *, attempts: int, due_at: float, error: str, now: float) -> bool:
    return (
        _set(
            session,
            delivery,
            (Status.PENDING,),
            attempts=attempts,
            due_at=due_at,
            last_error=error[:ERROR_CHARS],
            last_attempt_at=now,
        )
        == 1
    )


def mark_dead(session: Session, delivery: int, *, attempts: int, error: str, now: float) -> bool:
    return (
        _set(
            session,
            delivery,
            (Status.PENDING,),
            status=Status.DEAD,
            attempts=attempts,
            last_error=error[:ERROR_CHARS],
            last_attempt_at=now,
            finished_at=now,
        )
        == 1
    )


def _set(session: Session, delivery: int, when: Sequence[Status], **values: Any) -> int:
    """Update one delivery if its status is one of ``when`` (so a concurrent retry or close is never undone)."""
    result = session.execute(
        update(NotifyDelivery).where(NotifyDelivery.id == delivery, NotifyDelivery.status.in_(when)).values(**values)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def retry_dead(session: Session, now: float, ids: Sequence[int] | None = None) -> list[NotifyDelivery]:
    """Dead-lettered deliveries (those of ``ids``, or all) pending again, due now, with their attempts reset.

    They keep their place: a sink sends its oldest open delivery first.
    """
    query = select(NotifyDelivery).where(NotifyDelivery.status == Status.DEAD)
    if ids is not None:
        query = query.where(NotifyDelivery.id.in_(list(ids)))
    rows = list(session.execute(query.order_by(NotifyDelivery.id)).scalars())
    for row in rows:
        row.status, row.due_at, row.attempts, row.finished_at = Status.PENDING, now, 0, None
        row.created_at = now  # the give-up clock starts again
    return rows


def find(session: Session, delivery: int) -> NotifyDelivery | None:
    return session.get(NotifyDelivery, delivery)


def outstanding(session: Session, sink: str | None = None) -> list[tuple[NotifyDelivery, int, str]]:
    """Deliveries not delivered (collecting, pending, dead), oldest first, each with its number of events and
    the type of its first event."""
    query = (
        select(NotifyDelivery, func.count(NotifyDeliveryEvent.id), func.min(NotifyDeliveryEvent.event_type))
        .join(NotifyDeliveryEvent, NotifyDeliveryEvent.delivery == NotifyDelivery.id)
        .where(NotifyDelivery.status != Status.DELIVERED)
        .group_by(NotifyDelivery.id)
        .order_by(NotifyDelivery.id)
    )
    if sink is not None:
        query = query.where(NotifyDelivery.sink == sink)
    return [(row, int(n), str(kind)) for row, n, kind in session.execute(query).all()]


def has_open(session: Session) -> bool:
    """Whether any delivery is still collecting or pending (waiting or backing off)."""
    return (
        session.execute(select(NotifyDelivery.id).where(NotifyDelivery.status.in_(OPEN)).limit(1)).first() is not None
    )


def counts(session: Session) -> dict[tuple[str, str], int]:
    """(sink, status) -> deliveries."""
    rows = session.execute(
        select(NotifyDelivery.sink, NotifyDelivery.status, func.count()).group_by(
            NotifyDelivery.sink, NotifyDelivery.status
        )
    ).all()
    return {(sink, status): int(n) for sink, status, n in rows}


def prune(session: Session, *, delivered_before: float, dead_before: float) -> tuple[int, int]:
    """Delete deliveries (and their events) delivered before ``delivered_before`` or dead-lettered before
    ``dead_before``; (delivered, dead) deleted."""
    deleted = []
    for status, before in ((Status.DELIVERED, delivered_before), (Status.DEAD, dead_before)):
        ids = list(
            session.execute(
                select(NotifyDelivery.id).where(NotifyDelivery.status == status, NotifyDelivery.finished_at < before)
            ).scalars()
        )
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            session.execute(delete(NotifyDeliveryEvent).where(NotifyDeliveryEvent.delivery.in_(chunk)))
            session.execute(delete(NotifyDelivery).where(NotifyDelivery.id.in_(chunk)))
        deleted.append(len(ids))
    return deleted[0], deleted[1]


# --- what a notification says about its alert, from the monitor's records in the same database ---


def episode_started_at(
    session: Session,
    *,
    model_id: str,
    version: str,
    event_type: str,
    feature: str | None,
    before: float,
    metric: str | None = None,
    segment: dict[str, str] | None = None,
) -> float | None:
    """Event time of the newest ``started`` alert of the same stream (model version, type, feature, the
    error metric of a concept alert: a model has one concept episode per metric, and the segment, None for
    the whole stream) at or before ``before``: when the episode an escalation or an end belongs to began
    (None if not recorded)."""
    rows = session.execute(
        select(Alert.event_ts, Alert.cloudevent)
        .where(
            Alert.model_id == model_id,
            Alert.version == version,
            Alert.type == event_type,
            Alert.feature.is_(None) if feature is None else Alert.feature == feature,
            Alert.event_ts <= before,
        )
        .order_by(Alert.event_ts.desc())
        .limit(200)
    ).all()
    for event_ts, cloudevent in rows:
        data = json.loads(cloudevent).get("data", {})
        same_metric = metric is None or data.get("metric") == metric
        if data.get("episode") == "started" and same_metric and data.get("segment") == segment:
            return float(event_ts)
    return None


def retrain_request_for(session: Session, model_id: str, alert_id: str) -> str | None:
    """The id of the retrain request the monitor made from this alert, if it made one."""
    rows = session.execute(
        select(RetrainRequest.request_id, RetrainRequest.alert_ids)
        .where(RetrainRequest.model_id == model_id)
        .order_by(RetrainRequest.created_ts.desc())
        .limit(50)
    ).all()
    for request_id, alert_ids in rows:
        if alert_id in json.loads(alert_ids):
            return str(request_id)
    return None
