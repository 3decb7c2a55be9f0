"""The monitor service: consume predictions and labels, keep state in SQL."""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque

from kafka import TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from storage import db, repo
from storage.errors import StaleOffsets
from worker.batch import Batch, build_batch
from worker.checkpoint import Checkpoint
from worker.concept import ConceptStage
from worker.data_drift import DataDriftStage
from worker.ingest import IngestStage
from worker.merge import CoPartitionMerger
from worker.positions import LogPositions, PartitionTracker
from worker.retrain_policy import RetrainPolicy
from worker.settings import Settings
from worker.topics import Topics, ensure_topics
from worker.transport import (OutboxRelay, TransientError, dead_letter, log_end_offsets, make_admin,
                              make_consumer, make_producer)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
ASSIGNMENT_TIMEOUT_S = 60.0


def _is_transient(exc: BaseException) -> bool:
    """Broker or database unavailable (retry from the stored offsets), or not (the data's fault)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return False  # the database rejects this data: retrying cannot help
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return False  # a value the driver cannot send (e.g. NUL in text for PostgreSQL)
    return isinstance(exc, (SQLAlchemyError, KafkaError, TransientError, StaleOffsets, OSError))


class Monitor:
    def __init__(self, settings: Settings, partitions: int = 3):
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.group_id = settings.group_for("monitor")
        self._partitions = partitions
        self._stop = threading.Event()
        self.engine = db.make_engine(settings.db_url)
        self.sessions = db.make_session_factory(self.engine)
        policy = RetrainPolicy(self.topics.retrain)
        self.stages = [
            IngestStage(settings.duplicate_horizon),
            DataDriftStage(self.topics.alerts, policy),
            ConceptStage(self.topics.alerts, policy, settings.join_ttl_seconds, settings.join_max_pending,
                         settings.pairs_retention),
        ]

    def request_stop(self) -> None:
        """Safe from a signal handler: only flips a flag."""
        self._stop.set()

    def run(self, until_idle: float | None = None) -> int:
        # Every event allocates a handful of small objects that die with the
        # batch; CPython's default generation-0 threshold (700) runs the
        # collector thousands of times per batch. Measured: parsing 2x faster.
        gc.set_threshold(100_000, 20, 20)
        with db.single_writer_lock(self.settings.db_url, "monitor"):
            db.migrate(self.engine)
            admin = make_admin(self.settings)
            try:
                ensure_topics(admin, self.topics, self._partitions)
                producer = make_producer(self.settings)
                tracker = PartitionTracker(self.engine, self.group_id)
                consumer = make_consumer(self.settings, self.group_id)
                tracker.consumer = consumer
                consumer.subscribe([self.topics.predictions, self.topics.labels], listener=tracker)
                positions = LogPositions(self.sessions, self.group_id, admin,
                                         lambda keys: log_end_offsets(self.settings, keys))
                relay = OutboxRelay(self.sessions, producer)
                checkpoint = Checkpoint(self.sessions, consumer, tracker, relay, positions.topic_ids)
                try:
                    return self._loop(consumer, tracker, positions, checkpoint, relay, until_idle)
                finally:
                    consumer.close(autocommit=False)
                    producer.close(timeout=10)
            finally:
                admin.close()
                self.engine.dispose()

    def _loop(self, consumer, tracker, positions, checkpoint, relay, until_idle) -> int:
        started = last_activity = time.monotonic()
        backoff = 0.0
        ever_assigned = rewind_needed = False
        generation = -1
        # Held-back records are bounded by what kafka-python has fetched ahead
        # (up to one 1 MiB fetch per partition, a few thousand records); the
        # cap is a backstop.
        merger = CoPartitionMerger(self.topics.predictions, self.topics.labels, max_buffered=50_000)
        while not self._stop.is_set():
            try:
                if rewind_needed:
                    self._reset_stages()
                    tracker.rewind()
                    rewind_needed = False
                if backoff:
                    relay.publish_pending()
                records = consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                        max_records=self.settings.batch_max_records)
                with tracker.lock:
                    unchecked, tracker.unchecked = tracker.unchecked, set()
                    rebalanced = generation != tracker.generation
                    generation = tracker.generation
                if rebalanced:
                    self._reset_stages()  # another monitor may have moved state meanwhile
                    if len(merger):
                        # Held-back records of kept partitions would be lost: re-read from stored offsets.
                        merger.clear()
                        rewind_needed = True
                        with tracker.lock:
                            tracker.unchecked |= unchecked  # still to be checked after the rewind
                        continue
                moved = set()
                if unchecked:
                    ever_assigned = True
                    last_activity = time.monotonic()
                    merger.forget(unchecked)  # freshly seeked: whatever we knew of them is void
                    moved |= positions.check_assigned(consumer, tracker, unchecked)
                moved |= positions.check_log_ends(consumer, tracker)
                if moved:
                    merger.forget(moved)
                    records = {tp: r for tp, r in records.items() if (tp.topic, tp.partition) not in moved}
                with tracker.lock:
                    if generation != tracker.generation:
                        merger.clear()
                        rewind_needed = True  # reassigned while checking: start over from stored offsets
                        continue
                    expected = dict(tracker.expected)
                merger.add(self._owned_records(records, expected, merger))
                released = merger.release(lambda key: self._caught_up(consumer, key, expected),
                                          self.settings.batch_max_records)
                if released:
                    self._commit(released, expected, checkpoint)
                if records or released:
                    last_activity = time.monotonic()
                backoff = 0.0
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
                log.warning("batch failed (%s: %s); rewinding to stored offsets, retry in %.1fs",
                            type(exc).__name__, exc, backoff)
                self._stop.wait(backoff)
                merger.clear()
                rewind_needed = True  # never poll on from a position past an uncommitted batch
                continue
            now = time.monotonic()
            if until_idle is not None:
                if ever_assigned and now - last_activity >= until_idle:
                    lagging = self._lagging_partitions(consumer)
                    if not lagging:
                        log.info("no input for %.1fs and every input partition is consumed: exiting", until_idle)
                        break
                    # Partitions of a member that died are reassigned only after its session times out.
                    log.info("idle, but %s still have records not consumed by the group: waiting", lagging)
                    last_activity = now
                if not ever_assigned and now - started > max(ASSIGNMENT_TIMEOUT_S, until_idle):
                    log.error("no partitions assigned within %.0fs", now - started)
                    return 1
        try:
            relay.publish_pending()
        except (SQLAlchemyError, KafkaError, TransientError) as exc:
            log.warning("outbox not fully flushed at exit (sent on next start): %s", exc)
        return 0

    def _commit(self, records: list, expected: dict, checkpoint: Checkpoint) -> None:
        """Validate, process and commit records in order; isolate a record that cannot be processed.

        A failure that is not transient (a data or integrity error from the
        database, or any error a stage raises on the record's content) would
        fail the same way on every retry. The records are then split in
        halves, each committed on its own, until the one record that fails
        is found: it goes to the dead-letter topic with stage ``process``
        and the error, and everything else commits. Transient errors
        propagate (the loop retries from the stored offsets).
        """
        pending = deque([records])
        while pending:
            part = pending.popleft()
            batch = build_batch(part, self.topics, self.settings.max_event_bytes,
                                self.settings.max_clock_skew_seconds)
            try:
                checkpoint.commit(batch, expected, self._apply)
                continue
            except Exception as exc:  # noqa: BLE001 - anything not transient is the records' doing
                if _is_transient(exc):
                    raise
                self._reset_stages()  # the failed attempt may have changed cached state
                error = exc
            if len(part) > 1:
                if len(part) == len(records):
                    log.warning("a batch of %d records failed (%s: %s); isolating the record that causes it",
                                len(part), type(error).__name__, error)
                middle = len(part) // 2
                pending.extendleft([part[middle:], part[:middle]])
                continue
            record = part[0]
            log.error("%s[%d]@%d: processing failed (%s: %s); dead-lettering the record and going on",
                      record.topic, record.partition, record.offset, type(error).__name__, error,
                      exc_info=error)
            letter = dead_letter(record, "process", error)
            checkpoint.commit(Batch(dead_letters=[letter],
                                    next_offsets={(record.topic, record.partition): record.offset + 1}),
                              expected, self._apply)

    def _apply(self, session, batch) -> None:
        for stage in self.stages:
            stage.apply(session, batch)

    @staticmethod
    def _owned_records(records, expected, merger):
        """Records of partitions we still own; a jump from where the partition was left is logged.

        A first record above the expected offset means records in between no
        longer exist (retention, compaction) or were control records.
        """
        owned = {}
        for tp, recs in records.items():
            key = (tp.topic, tp.partition)
            if key not in expected:
                continue  # revoked during the poll
            start = merger.next_fetch(key)
            if start is None:
                start = expected[key]
            if start is not None and recs and recs[0].offset != start:
                log.info("%s[%d]: expected offset %d, but the log continues at %d", tp.topic, tp.partition,
                         start, recs[0].offset)
            owned[tp] = recs
        return owned

    @staticmethod
    def _caught_up(consumer, key: tuple[str, int], expected) -> bool:
        """Whether a partition has been read up to the log end the broker last reported."""
        if key not in expected:
            return True  # not ours: nothing of it will arrive here
        tp = TopicPartition(*key)
        highwater = consumer.highwater(tp)
        return highwater is not None and consumer.position(tp) >= highwater

    def _lagging_partitions(self, consumer) -> dict[tuple[str, int], int]:
        """Input partitions whose stored offset (any member's) is behind the log end."""
        keys = [(topic, p) for topic in (self.topics.predictions, self.topics.labels)
                for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = log_end_offsets(self.settings, keys)
        with self.engine.connect() as conn:
            stored = repo.load_offsets(conn, self.group_id, keys)
        return {key: ends[key] - stored.get(key, 0) for key in keys
                if key not in ends or ends[key] > stored.get(key, 0)}

    def _reset_stages(self) -> None:
        for stage in self.stages:
            reset = getattr(stage, "reset", None)
            if reset:
                reset()
