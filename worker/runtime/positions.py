"""Where each owned partition is read from, and keeping that honest against the broker's logs."""

from __future__ import annotations

import logging
import threading
import time

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    TopicPartition,
)

from undertow.storage import repo
from undertow.storage.tables import PartitionGap

log = logging.getLogger(__name__)

Key = tuple[str, int]

# A partition whose position looks beyond the log end is confirmed at most this often.
CONFIRM_INTERVAL_S = 5.0


class PartitionTracker(ConsumerRebalanceListener):
    """The partitions this consumer owns and the stored offset each was last committed at.

    On assignment it seeks each partition to its stored offset. It runs on
    kafka-python's IO thread, so it stays quick: one read through the
    engine's pool (never the main loop's session), then seeks. The main loop
    checks the positions against the logs afterwards (``unchecked``).
    ``expected`` is what the checkpoint compares-and-sets from; every access
    holds ``lock``.
    """

    def __init__(self, engine, group_id: str):
        self.engine = engine
        self.group_id = group_id
        self.consumer: KafkaConsumer | None = None
        self.lock = threading.Lock()
        self.expected: dict[Key, int | None] = {}
        self.unchecked: set[Key] = set()
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
                self._seek(key, stored.get(key))
                self.unchecked.add(key)
            self.generation += 1
        log.info("assigned %s; stored offsets %s", sorted(keys), stored)

    def rewind(self) -> None:
        """Back to the stored offsets of every owned partition (after a failed batch)."""
        with self.lock:
            keys = list(self.expected)
        with self.engine.connect() as conn:
            stored = repo.load_offsets(conn, self.group_id, keys)
        with self.lock:
            for key in keys:
                if key in self.expected:  # else revoked meanwhile; the new owner seeks it
                    self._seek(key, stored.get(key))

    def moved(self, key: Key, offset: int) -> None:
        """The stored offset of ``key`` is now ``offset`` and the consumer reads from there."""
        with self.lock:
            if key in self.expected:
                self._seek(key, offset)

    def _seek(self, key: Key, offset: int | None) -> None:
        tp = TopicPartition(*key)
        if offset is None:
            self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, offset)
        self.expected[key] = offset


class LogPositions:
    """Detects positions that no longer point into the log, and moves them, recorded.

    A stored offset means something only in the log it was read from. Three
    ways it stops doing so, each handled the same way: the partition moves
    to the new log's start (the records it skips or re-reads are named in
    the log and in a ``partition_gaps`` row written in the same transaction
    as the moved offset, shown by ``undertow status``):

    - the topic was recreated (its broker id differs from the one stored
      with the offset), checked on assignment;
    - the stored offset is beyond the log end (a broker that lost its data
      and started the log again; Tansu answers such fetches with an empty
      response, not an out-of-range error), checked whenever the consumer's
      position is past the high watermark that fetches report, and confirmed
      with a fresh consumer before anything moves;
    - the stored offset is below the log start (retention deleted records
      the monitor never read): reading continues at the start.
    """

    def __init__(self, sessions, group_id: str, admin: KafkaAdminClient, log_ends):
        self._sessions = sessions
        self._group_id = group_id
        self._admin = admin
        self._log_ends = log_ends  # (keys) -> {key: log end}, from a fresh consumer
        self._confirmed_at: dict[Key, float] = {}
        self._seen_short: dict[Key, int] = {}  # partitions whose position a fresh consumer found beyond the log end
        self.topic_ids: dict[str, str] = {}

    def check_assigned(self, consumer: KafkaConsumer, tracker: PartitionTracker, keys: set[Key]) -> set[Key]:
        """Check newly assigned partitions against topic ids and log starts; the keys moved."""
        topics = sorted({topic for topic, _ in keys})
        self.topic_ids.update(self._current_topic_ids(topics))
        with self._sessions.begin() as session:
            stored = repo.load_positions(session, self._group_id, keys)
        starts = consumer.beginning_offsets([TopicPartition(*key) for key in keys if key in stored])
        moved = set()
        for key, (offset, stored_id) in stored.items():
            current_id = self.topic_ids.get(key[0])
            start = starts[TopicPartition(*key)]
            if stored_id and current_id and stored_id != current_id:
                self._move(
                    tracker,
                    key,
                    offset,
                    start,
                    "log_reset",
                    f"topic recreated (id {stored_id} is now {current_id}): the stored offset {offset} "
                    f"belongs to the old log; reading the new log from {start}",
                )
                moved.add(key)
            elif offset < start:
                self._move(
                    tracker,
                    key,
                    offset,
                    start,
                    "records_deleted",
                    f"stored offset {offset} is below the log start {start}: records {offset}..{start - 1} "
                    "were deleted before the monitor read them",
                )
                moved.add(key)
        return moved

    def check_log_ends(self, consumer: KafkaConsumer, tracker: PartitionTracker) -> set[Key]:
        """Move partitions whose position is beyond the log end; the keys moved."""
        with tracker.lock:
            owned = dict(tracker.expected)
        now = time.monotonic()
        suspects = {}
        for key in owned:
            tp = TopicPartition(*key)
            highwater = consumer.highwater(tp)
            if highwater is None or now - self._confirmed_at.get(key, -CONFIRM_INTERVAL_S) < CONFIRM_INTERVAL_S:
                continue
            position = consumer.position(tp)
            if position is not None and position > highwater:
                suspects[key] = position
        if not suspects:
            return set()
        for key in suspects:
            self._confirmed_at[key] = now
        # The high watermark can be older than the position (a seek since the
        # last fetch): ask again with a consumer that has no history, and move
        # only when a second look, CONFIRM_INTERVAL_S later, says the same (a
        # log end read while the log was being appended to can be one batch
        # short, and moving on that would re-read a batch as duplicates).
        ends = self._log_ends(list(suspects))
        moved = set()
        for key, position in suspects.items():
            end = ends.get(key)
            if end is None or end >= position:
                self._seen_short.pop(key, None)
                continue
            if self._seen_short.get(key) != position:
                self._seen_short[key] = position
                log.info(
                    "%s[%d]: position %d is beyond the log end %d; checking again in %.0fs",
                    *key,
                    position,
                    end,
                    CONFIRM_INTERVAL_S,
                )
                continue
            del self._seen_short[key]
            stored = owned[key]
            start = consumer.beginning_offsets([TopicPartition(*key)])[TopicPartition(*key)]
            self._move(
                tracker,
                key,
                stored,
                start,
                "log_reset",
                f"position {position} (stored offset {stored}) is beyond the log end {end}: the log was "
                f"truncated or started again (a broker restarted without its data?); reading it from {start}",
            )
            moved.add(key)
        return moved

    def follow_topic_ids(self, consumer: KafkaConsumer, topics) -> None:
        """Take the topic ids the consumer's metadata has now, so offsets are stored with the id of the
        log they were read from. (kafka-python keeps them in its cluster metadata, which has no public
        accessor; without them a log recreated while the monitor runs would be stored under the old id,
        and the next assignment would read it again from its start.)"""
        cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
        if cluster is None or not hasattr(cluster, "topic_id"):
            return
        for topic in topics:
            topic_id = cluster.topic_id(topic)
            if topic_id is not None and set(str(topic_id)) - {"0", "-"}:
                self.topic_ids[topic] = str(topic_id)

    def moved_back(self, tracker: PartitionTracker, key: Key, stored: int, offset: int) -> None:
        """The consumer reads ``key`` from ``offset``, below the stored offset: the log started again."""
        self.topic_ids.update(self._current_topic_ids([key[0]]))
        self._move(
            tracker,
            key,
            stored,
            offset,
            "log_reset",
            f"the client went back from the stored offset {stored} to {offset}: the log was truncated or "
            f"the topic recreated (a broker restarted without its data?); reading it from {offset}",
        )

    def _current_topic_ids(self, topics: list[str]) -> dict[str, str]:
        ids = {}
        for description in self._admin.describe_topics(topics):
            topic_id = description.get("topic_id")
            if description.get("error_code") == 0 and topic_id and set(str(topic_id)) - {"0", "-"}:
                ids[description["name"]] = str(topic_id)
        return ids

    def _move(self, tracker: PartitionTracker, key: Key, stored: int | None, new: int, kind: str, detail: str) -> None:
        topic, partition = key
        with self._sessions.begin() as session:
            repo.advance_offsets(session, self._group_id, {key: (stored, new)}, self.topic_ids)
            repo.add_partition_gap(
                session,
                PartitionGap(
                    group_id=self._group_id,
                    topic=topic,
                    partition=partition,
                    kind=kind,
                    stored_offset=stored,
                    resumed_at=new,
                    detail=detail,
                    detected_at=time.time(),
                ),
            )
        log.warning("%s[%d]: %s", topic, partition, detail)
        tracker.moved(key, new)
