"""The monitor service: consume predictions and labels, keep state in SQL."""
from __future__ import annotations

import gc
import logging
import threading
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from storage import db, repo
from storage.errors import StaleOffsets
from worker.batch import build_batch
from worker.checkpoint import Checkpoint
from worker.concept import ConceptStage
from worker.data_drift import DataDriftStage
from worker.ingest import IngestStage
from worker.merge import CoPartitionMerger
from worker.retrain_policy import RetrainPolicy
from worker.settings import Settings
from worker.topics import Topics, ensure_topics
from worker.transport import (OutboxRelay, TransientError, log_end_offsets, make_admin, make_consumer,
                              make_producer)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
ASSIGNMENT_TIMEOUT_S = 60.0


class PartitionTracker(ConsumerRebalanceListener):
    """Seeks newly assigned partitions to their stored offsets.

    Runs on kafka-python's IO thread, so it stays quick: one read through the
    engine's pool (never the main loop's session), then seeks. The main loop
    validates the positions against the log afterwards.
    """

    def __init__(self, engine, group_id: str):
        self.engine = engine
        self.group_id = group_id
        self.consumer: KafkaConsumer | None = None
        self.lock = threading.Lock()
        self.expected: dict[tuple[str, int], int | None] = {}
        self.unchecked: set[tuple[str, int]] = set()
        self.generation = 0

    def on_partitions_revoked(self, revoked):
        with self.lock:
            for tp in revoked:
                self.expected.pop((tp.topic, tp.partition), None)
                self.unchecked.discard((tp.topic, tp.partition))
            self.generation += 1

    def on_partitions_assigned(self, assigned):
        keys = [(tp.topic, tp.partition) for tp in assigned]
        with self.engine.connect() as conn:
            stored = repo.load_offsets(conn, self.group_id, keys)
        with self.lock:
            for tp in assigned:
                key = (tp.topic, tp.partition)
                offset = stored.get(key)
                if offset is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)
                self.expected[key] = offset
                self.unchecked.add(key)
            self.generation += 1
        log.info("assigned %s; stored offsets %s", sorted(keys), stored)


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
        db.migrate(self.engine)
        admin = make_admin(self.settings)
        try:
            ensure_topics(admin, self.topics, self._partitions)
        finally:
            admin.close()
        producer = make_producer(self.settings)
        tracker = PartitionTracker(self.engine, self.group_id)
        consumer = make_consumer(self.settings, self.group_id)
        tracker.consumer = consumer
        consumer.subscribe([self.topics.predictions, self.topics.labels], listener=tracker)
        relay = OutboxRelay(self.sessions, producer)
        checkpoint = Checkpoint(self.sessions, consumer, self.group_id, relay)
        try:
            return self._loop(consumer, tracker, checkpoint, relay, until_idle)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=10)
            self.engine.dispose()

    def _loop(self, consumer, tracker, checkpoint, relay, until_idle) -> int:
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
                    self._rewind(consumer, tracker)
                    rewind_needed = False
                if backoff:
                    relay.publish_pending()
                records = consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                        max_records=self.settings.batch_max_records)
                with tracker.lock:
                    unchecked, tracker.unchecked = tracker.unchecked, set()
                    expected = dict(tracker.expected)
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
                if unchecked:
                    ever_assigned = True
                    last_activity = time.monotonic()
                    reseeked = self._check_positions(consumer, unchecked, expected)
                    records = {tp: r for tp, r in records.items() if (tp.topic, tp.partition) not in reseeked}
                    merger.forget(unchecked)  # freshly seeked: whatever we knew of them is void
                merger.add(self._owned_records(records, expected, merger))
                released = merger.release(lambda key: self._caught_up(consumer, key, expected),
                                          self.settings.batch_max_records)
                if released:
                    batch = build_batch(released, self.topics, self.settings.max_event_bytes)
                    checkpoint.commit(batch, expected, self._apply)
                    with tracker.lock:
                        for tp, offset in batch.next_offsets.items():
                            if tp in tracker.expected:
                                tracker.expected[tp] = offset
                if records or released:
                    last_activity = time.monotonic()
                backoff = 0.0
            except (SQLAlchemyError, KafkaError, TransientError, StaleOffsets, OSError) as exc:
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

    def _apply(self, session, batch) -> None:
        for stage in self.stages:
            stage.apply(session, batch)

    @staticmethod
    def _owned_records(records, expected, merger):
        """Records of partitions we still own, with position anomalies logged.

        kafka-python drops fetched data that predates a seek, so the first
        record of a partition is normally at the stored offset. If it is
        below, the broker answered "offset out of range" and the consumer
        reset to the log start: the stored offset is beyond the log end (the
        topic was recreated, e.g. an in-memory broker restarted) and the new
        log is read from its start. If it is above, records were deleted
        (retention) or are control records; the gap is logged.
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
                level = logging.WARNING if recs[0].offset < start else logging.INFO
                log.log(level, "%s[%d]: stored offset %d, but the log continues at %d%s", tp.topic, tp.partition,
                        start, recs[0].offset,
                        " (stored offset beyond the log end: topic recreated?); reading the new log"
                        if recs[0].offset < start else "; the records in between no longer exist")
            owned[tp] = recs
        return owned

    def _check_positions(self, consumer, keys, expected) -> set[tuple[str, int]]:
        """Move partitions whose stored offset is below the log start to the start.

        Only the start is checked up front: Tansu's ListOffsets(latest)
        under-reports the log end, so an offset beyond the end is detected from
        the broker's out-of-range reset instead (see ``_owned_records``).
        """
        tps = [TopicPartition(t, p) for t, p in keys if expected.get((t, p)) is not None]
        if not tps:
            return set()
        first = consumer.beginning_offsets(tps)
        reseeked = set()
        for tp in tps:
            stored = expected[(tp.topic, tp.partition)]
            if stored < first[tp]:
                log.warning("%s[%d]: stored offset %d is below the log start %d: records %d..%d were deleted "
                            "before the monitor read them; continuing from %d",
                            tp.topic, tp.partition, stored, first[tp], stored, first[tp] - 1, first[tp])
                consumer.seek(tp, first[tp])
                reseeked.add((tp.topic, tp.partition))
        return reseeked

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

    def _rewind(self, consumer, tracker) -> None:
        """After a failed batch: back to the stored offsets, drop cached state."""
        self._reset_stages()
        with tracker.lock:
            keys = list(tracker.expected)
        with self.engine.connect() as conn:
            stored = repo.load_offsets(conn, self.group_id, keys)
        with tracker.lock:
            for key in keys:
                if key not in tracker.expected:
                    continue  # revoked meanwhile; the new owner seeks it
                tp = TopicPartition(*key)
                offset = stored.get(key)
                tracker.expected[key] = offset
                if offset is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
