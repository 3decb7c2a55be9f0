"""The delivery outbox of ``undertow notify`` (``storage.deliveries``) on a real database: an event queued once
per sink, digests that collect until closed, outcomes that never undo a retry, and pruning that keeps the
tables bounded."""

from __future__ import annotations

import pytest

from undertow.storage import db, deliveries
from undertow.storage.deliveries import Status

pytestmark = pytest.mark.postgres


@pytest.fixture
def sessions(engine):
    return db.make_session_factory(engine)


def _add(session, sink: str, event_id: str, now: float, group: float = 0.0, model: str = "m") -> int | None:
    return deliveries.add_event(
        session,
        sink=sink,
        model_id=model,
        event_id=event_id,
        event_type="undertow.drift.data",
        cloudevent=f'{{"id":"{event_id}"}}',
        now=now,
        digest_id=f"digest-{event_id}",
        group_seconds=group,
    )


def test_an_event_is_queued_once_per_sink_and_sinks_go_in_order(sessions):
    with sessions.begin() as session:
        first = _add(session, "a", "e1", 100.0)
        assert _add(session, "a", "e1", 101.0) is None  # read twice: queued once
        assert _add(session, "b", "e1", 101.0) is not None  # another sink has its own
        _add(session, "a", "e2", 102.0)
    with sessions.begin() as session:
        head = deliveries.head(session, "a")
        assert (head.id, head.delivery_id, head.status, head.due_at) == (first, "e1", Status.PENDING, 100.0)
        assert deliveries.mark_delivered(session, head.id, 110.0)
        assert deliveries.head(session, "a").delivery_id == "e2"
        assert not deliveries.mark_delivered(session, head.id, 111.0)  # only a pending delivery moves


def test_a_digest_collects_a_models_events_until_it_is_closed(sessions):
    with sessions.begin() as session:
        digest = _add(session, "slack", "e1", 100.0, group=60)
        assert _add(session, "slack", "e2", 130.0, group=60) == digest
        other = _add(session, "slack", "x1", 131.0, group=60, model="other")
        assert other != digest
    with sessions.begin() as session:
        head = deliveries.head(session, "slack")
        assert (head.id, head.status, head.due_at, head.delivery_id) == (digest, Status.COLLECTING, 160.0, "digest-e1")
        assert deliveries.close_digest(session, digest) and not deliveries.close_digest(session, digest)
        assert _add(session, "slack", "e3", 170.0, group=60) not in (None, digest)  # closed: a new digest
        assert deliveries.events_of(session, digest) == ['{"id":"e1"}', '{"id":"e2"}']


def test_outcomes_and_retries_and_pruning(sessions):
    with sessions.begin() as session:
        ids = [_add(session, "a", f"e{i}", 100.0) for i in range(4)]
    with sessions.begin() as session:
        assert deliveries.schedule_retry(session, ids[0], attempts=1, due_at=105.0, error="HTTP 503", now=101.0)
        assert deliveries.mark_dead(session, ids[0], attempts=2, error="x" * 5000, now=106.0)
        assert deliveries.mark_delivered(session, ids[1], 107.0)
        assert deliveries.mark_dead(session, ids[2], attempts=1, error="HTTP 404", now=1000.0)
        listed = deliveries.outstanding(session)
        assert [(r.id, r.status, n) for r, n, _ in listed] == [
            (ids[0], "dead", 1),
            (ids[2], "dead", 1),
            (ids[3], "pending", 1),
        ]
        assert len(listed[0][0].last_error) == deliveries.ERROR_CHARS
        assert deliveries.has_open(session)
        assert deliveries.counts(session) == {("a", "dead"): 2, ("a", "delivered"): 1, ("a", "pending"): 1}
    with sessions.begin() as session:
        (retried,) = deliveries.retry_dead(session, 2000.0, [ids[0]])
        assert (retried.status, retried.attempts, retried.due_at) == (Status.PENDING, 0, 2000.0)
        assert not deliveries.mark_dead(session, ids[1], attempts=1, error="late", now=2001.0)  # delivered stays
        assert deliveries.head(session, "a").id == ids[0]  # a retried delivery keeps its place
    with sessions.begin() as session:
        assert deliveries.prune(session, delivered_before=200.0, dead_before=500.0) == (1, 0)
        assert deliveries.prune(session, delivered_before=200.0, dead_before=5000.0) == (0, 1)
        assert {r.id for r, _, _ in deliveries.outstanding(session)} == {ids[0], ids[3]}
        assert not deliveries.seen(session, "a", "e1") and deliveries.seen(session, "a", "e0")


def test_one_process_per_schema_sends_and_another_takes_over_when_it_goes(db_url):
    """PostgreSQL: the sender lock (an advisory lock per schema) is held by one process at a time."""
    from tests.conftest import requires_postgres
    from undertow.worker.notify.sender import SenderLock

    requires_postgres(db_url)
    engines = [db.make_engine(db_url), db.make_engine(db_url)]
    first, second = (SenderLock(e) for e in engines)
    try:
        first.refresh()
        second.refresh()
        assert first.held.is_set() and not second.held.is_set()
        first.refresh()  # still its own
        assert first.held.is_set()
        first.release()  # the process goes away: its session ends
        second.refresh()
        assert second.held.is_set() and not first.held.is_set()
    finally:
        first.release()
        second.release()
        for engine in engines:
            engine.dispose()


def test_an_ended_concept_episode_dates_from_the_start_of_its_own_metric(sessions):
    """A model has one concept episode per error metric: the end of the misclassification episode is dated
    from that episode's start, not from a log-loss episode that started in between (found in a trial)."""
    import json

    from undertow.storage.tables import Alert

    def concept(alert_id: str, metric: str, episode: str, ts: float) -> Alert:
        data = {"model_id": "m", "model_version": "1", "metric": metric, "episode": episode}
        return Alert(
            id=alert_id,
            model_id="m",
            version="1",
            type="undertow.drift.concept",
            feature=None,
            severity="significant",
            event_ts=ts,
            cloudevent=json.dumps({"id": alert_id, "data": data}),
        )

    with sessions.begin() as session:
        session.add(concept("a", "misclassification", "started", 100.0))
        session.add(concept("b", "log_loss", "started", 150.0))
        session.add(concept("c", "misclassification", "ended", 200.0))
    with sessions() as session:

        def since(metric):
            return deliveries.episode_started_at(
                session,
                model_id="m",
                version="1",
                event_type="undertow.drift.concept",
                feature=None,
                before=200.0,
                metric=metric,
            )

        assert since("misclassification") == 100.0
        assert since("log_loss") == 150.0
        assert since(None) == 150.0  # without a metric (data drift): the newest start of the stream
