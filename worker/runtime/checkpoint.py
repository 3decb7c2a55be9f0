"""The checkpoint: the one object that owns the commit of a batch and the offsets it moves."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.orm import Session, sessionmaker

from undertow.storage import repo
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.positions import Key, PartitionTracker
from undertow.worker.runtime.topics import DEAD_LETTER_SUFFIX
from undertow.worker.runtime.transport import DeadLetter, OutboxRelay

log = logging.getLogger(__name__)


class Checkpoint:
    """Commits a processed batch so that its effects happen exactly once.

    Steps, in this order:

    1. One database transaction: first the next offset of every partition in
       the batch is compare-and-set from the offset the batch was read from
       (a monitor that lost the partition to another fails here, before it
       writes anything); then the batch's dead letters go to the outbox and
       are counted per source topic; then ``apply`` writes the new state and
       any outbox rows of its own (alerts, retrain requests). Either all of
       it commits or none of it.
    2. The offsets the batch was read from (``expected``) and the tracker's
       stored offsets move to the new ones.
    3. The same offsets are committed to Kafka, only so that standard lag
       tools show progress; they are never read back. The commit is
       asynchronous (a synchronous one cost a broker round trip per batch,
       3 % of the monitor's time); a failure is logged. ``close`` commits the
       owned partitions' offsets synchronously once more, at exit.
    4. The outbox is published; rows are deleted once the broker acknowledged.
       Only after a transaction that wrote to it, after a publish that did
       not finish, or at least every ``OUTBOX_CHECK_S`` (rows other writers
       left, such as a training thread whose publish failed): reading an
       empty outbox after every batch cost 1 % of the monitor's time.

    A crash before (1) commits replays the batch from the stored offsets; a
    crash after it re-sends unpublished outbox rows with the same ids (the
    first commit after a start always publishes).
    """

    OUTBOX_CHECK_S = 1.0

    def __init__(
        self,
        sessions: sessionmaker[Session],
        consumer: KafkaConsumer,
        tracker: PartitionTracker,
        relay: OutboxRelay,
        topic_ids: Mapping[str, str],
        on_commit: Callable[[Batch, float], None] | None = None,
    ):
        self._sessions = sessions
        self._on_commit = on_commit  # after step 1 only: a replayed batch is never counted twice
        self._consumer = consumer
        self._tracker = tracker
        self._relay = relay
        self._topic_ids = topic_ids
        self._outbox_checked_at: float | None = None  # None: a publish is due (start-up, or one failed)

    def commit(self, batch: Batch, expected: dict[Key, int | None], apply: Callable[[Session, Batch], None]) -> None:
        moves = {key: (expected.get(key), offset) for key, offset in batch.next_offsets.items()}
        started = time.perf_counter()
        # What was consumed, before the stages take some events out; copied only when someone counts it.
        consumed = (
            None if self._on_commit is None else Batch(events=list(batch.events), dead_letters=batch.dead_letters)
        )
        with self._sessions.begin() as session:
            repo.advance_offsets(session, self._tracker.group_id, moves, self._topic_ids)
            for letter in batch.dead_letters:
                store_dead_letter(session, letter)
            apply(session, batch)
        if session.info.get(repo.OUTBOX_WRITTEN):
            self._outbox_checked_at = None
        if self._on_commit is not None:
            self._on_commit(consumed, time.perf_counter() - started)
        expected.update(batch.next_offsets)
        with self._tracker.lock:
            for key, (old, new) in moves.items():
                if key in self._tracker.expected and self._tracker.expected[key] == old:
                    self._tracker.expected[key] = new
        try:
            self._consumer.commit_async(
                {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in batch.next_offsets.items()},
                callback=_log_failed_commit,
            )
        except KafkaError as exc:
            _log_failed_commit(None, exc)
        checked = self._outbox_checked_at
        if checked is None or time.monotonic() - checked >= self.OUTBOX_CHECK_S:
            self._relay.publish_pending()  # raises if a row was not acknowledged: the check stays due
            self._outbox_checked_at = time.monotonic()

    def close(self, timeout_ms: int) -> None:
        """Commit the owned partitions' stored offsets to Kafka synchronously (at exit, for lag tools), giving up
        after ``timeout_ms``: the database holds the offsets, and a stalled broker must not hold the exit."""
        with self._tracker.lock:
            owned = {
                TopicPartition(*key): OffsetAndMetadata(offset, "", -1)
                for key, offset in self._tracker.expected.items()
                if offset is not None
            }
        if not owned:
            return
        try:
            self._consumer.commit(owned, timeout_ms=timeout_ms)
        except Exception as exc:  # noqa: BLE001 - informational, and it runs in a finally: never mask why the loop ended
            _log_failed_commit(owned, exc)


def _log_failed_commit(offsets, response) -> None:
    if isinstance(response, Exception):
        log.info("informational Kafka offset commit failed (database offsets are the truth): %s", response)


def store_dead_letter(session: Session, letter: DeadLetter) -> None:
    """Queue a dead letter for its topic and count it, in the batch's transaction.

    A stage that refuses an event after validation (the monitor's schema
    stage) calls this and appends the letter to ``batch.dead_letters`` too,
    so the service metrics count it like the validator's.
    """
    repo.enqueue(session, letter.topic, letter.key, letter.value, letter.headers)
    repo.add_dead_letter(
        session,
        letter.topic.removesuffix(DEAD_LETTER_SUFFIX),
        dict(letter.headers).get("undertow.error.message", b"").decode(),
    )
