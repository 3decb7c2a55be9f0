"""The sender of ``undertow notify``: drains the delivery outbox, one thread per sink, strictly in order.

Each sink's thread takes the sink's oldest open delivery (``deliveries.head``)
and nothing else: a delivery that fails blocks the ones after it until it is
delivered or dead-lettered, so a receiver sees a sink's messages in the
order the events were consumed. Per attempt:

1. one short transaction closes a digest that is due, reads the delivery's
   events and what the message says about them (thresholds, episode start,
   retrain request) and builds the request;
2. the request is sent outside any transaction (a slow receiver holds no
   database lock);
3. one transaction records the outcome: delivered, another attempt due
   after the backoff, or dead-lettered (a refusal that retrying cannot fix,
   ``max_attempts`` attempts, or a failed attempt ``give_up_after`` after the
   delivery was queued).

A crash between 2 and 3 sends the delivery again at the next start, with
the same CloudEvent id: delivery is at least once, receivers drop
duplicates by id. One process per database sends (``SenderLock``); the
others' senders wait for the lock. Delivered and dead-lettered rows are
pruned after their retention.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from undertow.errors import InvalidEvent
from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.storage import db, deliveries
from undertow.storage.tables import NotifyDelivery
from undertow.worker.notify import webhook
from undertow.worker.notify.attempt import Backoff, Outcome, send
from undertow.worker.notify.config import NotifyConfig, SinkConfig
from undertow.worker.notify.metrics import NotifyMetrics
from undertow.worker.notify.request import Message, Request, build
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.metrics import snapshot_reader
from undertow.worker.runtime.settings import NotifySettings

log = logging.getLogger(__name__)

IDLE_CHECK_S = 1.0  # an idle sink looks again this often (deliveries retried by `notify retry` in another process)
LOCK_CHECK_S = 5.0
PRUNE_EVERY_S = 300.0
_SENDER_LOCK = 0x756E6E6F  # high half of the PostgreSQL advisory lock key of the one sending process


class DatabaseContext:
    """What a message says beyond its events, read in the sender's transaction (``notice.Context``)."""

    def __init__(self, session: Session):
        self.session = session

    def drift_config(self, model_id: str, version: str) -> DriftConfig:
        row = registry.find_version(self.session, model_id, version)
        return DriftConfig() if row is None else _config(row.drift_config)

    def episode_started_at(self, event: Any) -> float | None:
        d = event.data
        return deliveries.episode_started_at(
            self.session,
            model_id=d.model_id,
            version=d.model_version,
            event_type=event.type,
            feature=getattr(d, "feature", None),
            before=cloudevents.epoch(event.time),
            metric=getattr(d, "metric", None),
            segment=d.segment,
        )

    def retrain_request(self, event: Any) -> str | None:
        return deliveries.retrain_request_for(self.session, event.data.model_id, event.id)


@lru_cache(maxsize=256)
def _config(blob: str) -> DriftConfig:
    return DriftConfig.model_validate_json(blob)


class SenderLock:
    """Whether this process may send: on PostgreSQL, while its session holds an advisory lock (one per schema,
    checked every ``LOCK_CHECK_S``); on SQLite always (one notify process per file, ``db.single_writer_lock``)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection: Connection | None = None
        self.held = threading.Event()
        if engine.dialect.name != "postgresql":
            self.held.set()

    def refresh(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        try:
            if self._connection is None:
                connection = self.engine.connect()
                # One sender per schema: deployments in schemas of one database (and the tests) do not share it.
                schema = str(connection.execute(text("SELECT current_schema()")).scalar())
                key = (_SENDER_LOCK << 32) | zlib.crc32(schema.encode())
                got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                connection.commit()
                if got:
                    self._connection = connection
                    log.info("this process sends the notifications (sender lock taken)")
                else:
                    connection.close()
            else:
                self._connection.execute(text("SELECT 1")).scalar()
                self._connection.rollback()
        except Exception as exc:  # noqa: BLE001 - a lost connection means a lost lock, whatever the error
            log.warning("sender lock lost (%s): not sending until it is taken again", exc)
            self.release()
        if self._connection is not None:
            self.held.set()
        else:
            self.held.clear()

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if self.engine.dialect.name == "postgresql":
            self.held.clear()
        if connection is not None:
            try:
                connection.invalidate()  # closes the session, which frees its advisory locks
                connection.close()
            except Exception as exc:  # noqa: BLE001 - given up either way
                log.debug("closing the sender lock connection: %s", exc)


class SinkWorker:
    """Sends one sink's deliveries in order (see the module docstring)."""

    def __init__(
        self,
        sink: SinkConfig,
        sessions: sessionmaker[Session],
        settings: NotifySettings,
        metrics: NotifyMetrics,
        clock: Callable[[], float] = time.time,
    ):
        self.sink = sink
        self.sessions = sessions
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.backoff = Backoff(settings.notify_backoff_initial_seconds, settings.notify_backoff_max_seconds)
        self.timeout = sink.target.timeout_seconds or settings.notify_timeout_seconds
        self.wake = threading.Event()

    def run(self, stop: threading.Event, may_send: threading.Event) -> None:
        with httpx.Client(follow_redirects=False) as client:
            while not stop.is_set():
                wait = IDLE_CHECK_S
                if may_send.is_set():
                    try:
                        wait = self.step(client)
                    except Exception as exc:  # noqa: BLE001 - the database away: the row is tried again later
                        log.warning("sink %s: %s: %s; trying again", self.sink.name, type(exc).__name__, exc)
                        wait = IDLE_CHECK_S
                if wait > 0:
                    self.wake.wait(wait)
                    self.wake.clear()

    def step(self, client: httpx.Client) -> float:
        """One attempt if one is due; the seconds until the next one may be (0: at once)."""
        now = self.clock()
        with self.sessions.begin() as session:
            head = deliveries.head(session, self.sink.name)
            if head is None:
                return IDLE_CHECK_S
            if head.due_at > now:
                return min(head.due_at - now, IDLE_CHECK_S)
            if head.status == deliveries.Status.COLLECTING:
                deliveries.close_digest(session, head.id)
            try:
                request = self._request(session, head, now)
            except (InvalidEvent, ValueError, KeyError) as exc:  # an event this release cannot render
                request = None
                deliveries.mark_dead(session, head.id, attempts=head.attempts, error=f"cannot render: {exc}", now=now)
                log.error("sink %s: delivery %d cannot be rendered (%s): dead-lettered", self.sink.name, head.id, exc)
            delivery = (head.id, head.delivery_id, head.attempts + 1, head.created_at)
        if request is None:
            return 0.0
        request = webhook.signed(request, self.sink.webhook.secret if self.sink.webhook else None, self.clock())
        outcome = send(client, request, self.timeout)
        self._record(delivery, outcome)
        return 0.0

    def _request(self, session: Session, head: NotifyDelivery, now: float) -> Request:
        raw = deliveries.events_of(session, head.id)
        if len(raw) > 1:
            message = Message(head.delivery_id, raw, digest=True)
        else:  # one event (a digest that collected no other is sent as that event): its own id is the ce-id
            message = Message(json.loads(raw[0])["id"], raw)
        return build(self.sink, message, DatabaseContext(session), now)

    def _record(self, delivery: tuple[int, str, int, float], outcome: Outcome) -> None:
        row_id, delivery_id, attempts, queued_at = delivery
        now = self.clock()
        give_up = self.settings.notify_give_up_after_seconds
        dead = not outcome.delivered and (
            not outcome.retryable or attempts >= self.settings.notify_max_attempts or now - queued_at >= give_up
        )
        with self.sessions.begin() as session:
            if outcome.delivered:
                deliveries.mark_delivered(session, row_id, now)
            elif dead:
                deliveries.mark_dead(session, row_id, attempts=attempts, error=outcome.error, now=now)
            else:
                asked = None if outcome.retry_after is None else min(outcome.retry_after, give_up)
                due = now + self.backoff.delay(attempts, asked)
                deliveries.schedule_retry(session, row_id, attempts=attempts, due_at=due, error=outcome.error, now=now)
        self.metrics.attempted(self.sink.name, outcome.seconds, outcome.delivered, dead)
        if outcome.delivered:
            log.info("sink %s: delivered %s (attempt %d)", self.sink.name, delivery_id, attempts)
        elif dead:
            log.warning(
                "sink %s: delivery %d (%s) dead-lettered after %d attempt(s): %s; `undertow notify retry --id %d` "
                "sends it again",
                self.sink.name,
                row_id,
                delivery_id,
                attempts,
                outcome.error,
                row_id,
            )
        else:
            log.info(
                "sink %s: delivery %s, attempt %d failed (%s)", self.sink.name, delivery_id, attempts, outcome.error
            )


class Sender:
    """The sink threads of one process, the sender lock, pruning and the ``busy`` hook of ``until_idle``."""

    def __init__(self, settings: NotifySettings, config: NotifyConfig):
        self.settings = settings
        self.config = config
        self.engine = db.make_engine(settings.db_url)
        self.sessions = db.make_session_factory(self.engine)
        self.lock = SenderLock(self.engine)
        # Scrapes read through a snapshot reader: on SQLite a scrape must not take the write lock the
        # monitor and the senders need (runtime.metrics.snapshot_reader).
        scrapes = db.make_session_factory(snapshot_reader(self.engine))
        self.metrics = NotifyMetrics([s.name for s in config.sinks], scrapes, self.lock.held.is_set)
        self.workers = [SinkWorker(sink, self.sessions, settings, self.metrics) for sink in config.sinks]
        self._pruned_at = 0.0

    def wake(self) -> None:
        """New deliveries were committed: look now rather than at the next check."""
        for worker in self.workers:
            worker.wake.set()

    def busy(self) -> bool:
        """Deliveries still collecting, waiting or backing off (dead-lettered ones are not work)."""
        with self.sessions() as session:
            return deliveries.has_open(session)

    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(
                target=worker.run, args=(stop, self.lock.held), daemon=True, name=f"undertow-notify-{worker.sink.name}"
            )
            for worker in self.workers
        ]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set():
                self.lock.refresh()
                self._prune()
                stop.wait(LOCK_CHECK_S)
        finally:
            self.wake()
            for thread in threads:
                thread.join(10.0)
            self.lock.release()

    def _prune(self) -> None:
        now = time.time()
        if not self.lock.held.is_set() or now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            with self.sessions.begin() as session:
                delivered, dead = deliveries.prune(
                    session,
                    delivered_before=now - self.settings.notify_retention_seconds,
                    dead_before=now - self.settings.notify_dead_letter_retention_seconds,
                )
        except Exception as exc:  # noqa: BLE001 - pruning waits for the next turn
            log.warning("pruning delivered notifications failed: %s", exc)
            return
        if dead:
            log.warning("deleted %d dead-lettered notification(s) older than the dead-letter retention", dead)
        if delivered:
            log.info("pruned %d delivered notification(s)", delivered)

    def close(self) -> None:
        self.engine.dispose()
