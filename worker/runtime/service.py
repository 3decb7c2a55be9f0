"""The exactly-once consume loop every consuming service runs on.

A service is its topics, a parser that turns a record into an event (or
raises ``InvalidEvent``), and stages: objects with ``apply(session, batch)``,
which write the batch's effects through the session they are given and never
commit, and ``reset()``, which drops whatever they cache (it is reloaded
from the database after a rewind or a rebalance). ``ServiceRunner`` does
the rest:

- partitions are sought to the offsets stored in the database on
  assignment, and checked against the broker's logs (``positions``);
- each poll's records pass through the service's intake (the monitor's
  co-partition merger, or first in first out), are validated into a batch and
  committed by the ``Checkpoint``: state, outbox and offsets in one
  transaction, then the outbox is published;
- a transient failure (broker or database unavailable) rewinds to the
  stored offsets and retries with backoff; a failure caused by a record is
  isolated and the record dead-lettered (the error policy, ``_commit``);
- ``request_stop`` (from a signal handler) only flips a flag: the loop
  finishes the batch, commits and flushes the outbox once more;
- ``run(until_idle=S)`` returns once the input has been idle for S seconds
  and the group has consumed every partition (backfills, tests).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent, StaleOffsets
from undertow.storage import db, repo, retention
from undertow.worker.runtime.batch import Batch, build_batch
from undertow.worker.runtime.checkpoint import Checkpoint
from undertow.worker.runtime.merge import FifoIntake, Intake
from undertow.worker.runtime.metrics import DatabaseCollector, ServiceMetrics
from undertow.worker.runtime.positions import Key, LogPositions, PartitionTracker
from undertow.worker.runtime.settings import ServiceSettings
from undertow.worker.runtime.transport import (
    OutboxRelay,
    TransientError,
    dead_letter,
    log_end_offsets,
    make_admin,
    make_consumer,
    make_producer,
    restore_parked_fetches,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
ASSIGNMENT_TIMEOUT_S = 60.0
# Each Kafka step of the exit (the outbox's last flush, the informational offset commit, leaving the group,
# closing the producer) gives up after this: a stalled broker once held a monitor's exit past 60 s, and a
# supervisor kills what has not exited within its grace period (30 s by default on Kubernetes). Nothing is
# lost by giving up: the offsets are in the database and unacknowledged outbox rows are sent at the next start.
EXIT_KAFKA_STEP_S = 3.0
# The growing tables each service's loop prunes (storage/retention.py): the ones it writes. The notify service
# deletes its own deliveries (notify_retention_seconds); the other tables are bounded where they are written.
PRUNED_BY = {
    "monitor": ("window_results", "alerts", "retrain_requests", "partition_gaps"),
    "trainer": ("training_runs",),
}
PRUNE_CHUNKS_PER_TURN = 10  # a large backlog is deleted over several turns, never holding up a batch long


class Stage(Protocol):
    def apply(self, session: Session, batch: Batch) -> None: ...

    def reset(self) -> None: ...


@dataclass
class Service:
    """What a consuming service is made of; ``ServiceRunner`` runs it."""

    name: str  # the lock name, and the group is undertow-<name> by default
    topics: Sequence[str]  # consumed
    parse: Callable[[Any], Any]  # a record to its event; raises InvalidEvent
    stages: list[Stage]
    make_intake: Callable[[], Intake] = FifoIntake
    prepare: Callable[[KafkaAdminClient], None] | None = None  # e.g. create the topics, at start-up
    on_idle: list[Callable[[], None]] = field(default_factory=list)  # after every loop turn
    # Work that must not run inside the poll loop (a long training would cost
    # the group membership): run in a thread until the event is set.
    background: Callable[[threading.Event], None] | None = None
    busy: Callable[[], bool] | None = None  # ``until_idle`` waits while this says work is pending
    # The service's own Prometheus collectors, served with the runtime's metrics on --metrics-port.
    collectors: list[Any] = field(default_factory=list)


def is_transient(exc: BaseException) -> bool:
    """Broker or database unavailable (retry from the stored offsets), or not (the data's fault)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return False  # the database rejects this data: retrying cannot help
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return False  # a value the driver cannot send (e.g. NUL in text for PostgreSQL)
    return isinstance(exc, (SQLAlchemyError, KafkaError, TransientError, StaleOffsets, OSError))


class GarbagePacer:
    """Full garbage collections paced by the records processed.

    Every batch builds SQL statement trees with reference cycles; they are
    alive while the batch runs, so the young collections promote them, and
    CPython runs full collections less often the larger the heap: memory
    then climbs with the stream (``bench/memory.py``: +20 to +35 % between
    1M and 5M events, before and after the changelog state). A full
    collection every ``every`` records (tens of milliseconds, with the
    start-up objects frozen out of it) keeps it flat (+1 %).
    """

    def __init__(self, every: int = 200_000):
        self.every = every
        self._since = 0

    def processed(self, records: int) -> None:
        self._since += records
        if self._since >= self.every:
            gc.collect()
            self._since = 0


class ServiceRunner:
    """Runs a ``Service`` with exactly-once state effects (see the module docstring)."""

    def __init__(self, settings: ServiceSettings, service: Service):
        self.settings = settings
        self.service = service
        self.group_id = settings.group_for(service.name)
        self._stop = threading.Event()
        self.engine = db.make_engine(settings.db_url)
        self.sessions = db.make_session_factory(self.engine)
        # Seconds spent per step since start (poll, intake, validate, each stage, checkpoint): what the
        # benchmarks print per record. Committed and failed attempts alike.
        self.step_seconds: dict[str, float] = defaultdict(float)
        self.batches = 0  # batches committed: per-batch costs weigh by the records a batch holds
        self.garbage = GarbagePacer()
        self.pruner = retention.Pruner(self.sessions, settings.retention(), PRUNED_BY.get(service.name, ()))
        self._next_prune = time.monotonic()  # at the first turn, then every prune_interval_seconds

    def request_stop(self) -> None:
        """Safe from a signal handler: only flips a flag."""
        self._stop.set()

    def apply(self, session: Session, batch: Batch) -> None:
        for stage in self.service.stages:
            started = time.perf_counter()
            stage.apply(session, batch)
            self.step_seconds[type(stage).__name__] += time.perf_counter() - started

    def reset_stages(self) -> None:
        for stage in self.service.stages:
            stage.reset()

    def prune_if_due(self) -> None:
        """Apply the retention between batches, at most every ``prune_interval_seconds``, each chunk in its own
        short transaction. A backlog larger than one turn's chunks goes on at the next turn; a failure is
        logged and tried again at the next interval (pruning is never worth stopping the service for)."""
        interval = self.settings.prune_interval_seconds
        if not interval or not self.pruner.tables or time.monotonic() < self._next_prune:
            return
        started = time.perf_counter()
        try:
            deleted, finished = self.pruner.prune(PRUNE_CHUNKS_PER_TURN)
        except SQLAlchemyError as exc:
            log.warning("pruning failed (%s: %s); trying again in %.0fs", type(exc).__name__, exc, interval)
            finished, deleted = True, {}
        self._next_prune = time.monotonic() + (interval if finished else 0)
        self.step_seconds["prune"] += time.perf_counter() - started
        if any(deleted.values()):
            log.info("pruned %s", ", ".join(f"{n} rows of {t}" for t, n in deleted.items() if n))

    def run(self, until_idle: float | None = None) -> int:
        # Every event allocates a handful of small objects that die with the
        # batch; CPython's default generation-0 threshold (700) runs the
        # collector thousands of times per batch. Measured: parsing 2x faster.
        gc.set_threshold(100_000, 20, 20)
        with db.single_writer_lock(self.settings.db_url, self.service.name):
            db.migrate(self.engine)
            admin = make_admin(self.settings)
            try:
                if self.service.prepare is not None:
                    self.service.prepare(admin)
                producer = make_producer(self.settings)
                tracker = PartitionTracker(self.engine, self.group_id)
                consumer = make_consumer(self.settings, self.group_id)
                tracker.consumer = consumer
                consumer.subscribe(list(self.service.topics), listener=tracker)
                positions = LogPositions(
                    self.sessions, self.group_id, admin, lambda keys: log_end_offsets(self.settings, keys)
                )
                relay = OutboxRelay(self.sessions, producer)
                metrics, metrics_server = self._serve_metrics()
                checkpoint = Checkpoint(
                    self.sessions,
                    consumer,
                    tracker,
                    relay,
                    positions.topic_ids,
                    on_commit=None if metrics is None else metrics.committed,
                )
                loop = _Loop(self, consumer, tracker, positions, checkpoint, relay)
                background = self._start_background()
                gc.freeze()  # what start-up made lives as long as the process: keep it out of every collection
                try:
                    return loop.run(until_idle)
                finally:
                    if metrics_server is not None:
                        metrics_server.shutdown()
                    self._stop_background(background)
                    checkpoint.close(timeout_ms=int(EXIT_KAFKA_STEP_S * 1000))
                    consumer.close(autocommit=False, timeout_ms=int(EXIT_KAFKA_STEP_S * 1000))
                    producer.close(timeout=EXIT_KAFKA_STEP_S)
            finally:
                admin.close()
                self.engine.dispose()

    BACKGROUND_JOIN_S = 10.0

    def _serve_metrics(self):
        if self.settings.metrics_port is None:
            return None, None
        topics = list(self.service.topics)
        metrics = ServiceMetrics(self.service.name, topics)
        database = DatabaseCollector(
            self.engine, self.service.name, self.group_id, lambda keys: log_end_offsets(self.settings, keys), topics
        )
        for collector in self.service.collectors:
            metrics.registry.register(collector)
        return metrics, metrics.serve(self.settings.metrics_port, self.settings.metrics_host, database)

    def _start_background(self) -> tuple[threading.Thread, threading.Event] | None:
        if self.service.background is None:
            return None
        stop = threading.Event()
        thread = threading.Thread(
            target=self.service.background, args=(stop,), daemon=True, name=f"undertow-{self.service.name}-background"
        )
        thread.start()
        return thread, stop

    def _stop_background(self, background) -> None:
        """Ask the background work to stop; what it cannot finish soon is picked up again at the next start."""
        if background is None:
            return
        thread, stop = background
        stop.set()
        thread.join(self.BACKGROUND_JOIN_S)
        if thread.is_alive():
            log.warning(
                "background work of %s still running after %.0fs: it resumes at the next start",
                self.service.name,
                self.BACKGROUND_JOIN_S,
            )


class _Loop:
    """The poll loop of one run: its clients and the little state that lives between turns."""

    def __init__(
        self,
        runner: ServiceRunner,
        consumer,
        tracker: PartitionTracker,
        positions: LogPositions,
        checkpoint: Checkpoint,
        relay: OutboxRelay,
    ):
        self.runner, self.settings = runner, runner.settings
        self.consumer, self.tracker, self.positions = consumer, tracker, positions
        self.checkpoint, self.relay = checkpoint, relay
        self.intake = runner.service.make_intake()
        self.started = self.last_activity = time.monotonic()
        self.backoff = 0.0
        self.ever_assigned = self.rewind_needed = self.intake_backlog = False
        self.generation = -1

    def run(self, until_idle: float | None) -> int:
        while not self.runner._stop.is_set():
            try:
                self.turn()
                self.backoff = 0.0
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._back_off(exc)
                continue
            for hook in self.runner.service.on_idle:
                hook()
            self.runner.prune_if_due()
            if until_idle is not None:
                done = self._idle_exit(until_idle)
                if done is not None:
                    return done
        self._flush_outbox()
        return 0

    def turn(self) -> None:
        """One poll: rewind if needed, follow assignment changes, check positions, commit what is released."""
        if self.rewind_needed:
            self.runner.reset_stages()
            self.tracker.rewind()
            self.rewind_needed = False
        if self.backoff:
            self.relay.publish_pending()
        started = time.perf_counter()
        restore_parked_fetches(self.consumer)
        # A full release last turn means the intake may hold more: fetch what is there, do not wait for more.
        records = self.consumer.poll(
            timeout_ms=0 if self.intake_backlog else self.settings.poll_timeout_ms,
            max_records=self.settings.batch_max_records,
        )
        self.runner.step_seconds["poll"] += time.perf_counter() - started
        unchecked = self._follow_assignment()
        if unchecked is None:
            return
        self.positions.follow_topic_ids(self.consumer, self.runner.service.topics)
        records = self._check_positions(records, unchecked)
        expected = self._expected_offsets()
        if expected is None:
            return
        started = time.perf_counter()
        self.intake.add(self._owned(records, expected))
        released = self.intake.release(lambda key: self._caught_up(key, expected), self.settings.batch_max_records)
        self.intake_backlog = len(released) >= self.settings.batch_max_records
        self._hold_back()
        self.runner.step_seconds["intake"] += time.perf_counter() - started
        if released:
            self._commit(released, expected)
        if records or released:
            self.last_activity = time.monotonic()

    def _hold_back(self) -> None:
        """Pause fetching the partitions the intake holds too much of; resume those it no longer does."""
        held = {TopicPartition(*key) for key in self.intake.held_back()} & self.consumer.assignment()
        paused = self.consumer.paused()
        if held - paused:
            self.consumer.pause(*(held - paused))
        if paused - held:
            self.consumer.resume(*(paused - held))

    def _follow_assignment(self) -> set[Key] | None:
        """Partitions newly assigned since the last turn; None when the turn must start over."""
        with self.tracker.lock:
            unchecked, self.tracker.unchecked = self.tracker.unchecked, set()
            rebalanced = self.generation != self.tracker.generation
            self.generation = self.tracker.generation
        if rebalanced:
            self.runner.reset_stages()  # another member may have moved state meanwhile
            if len(self.intake):
                # Held-back records of kept partitions would be lost: re-read from stored offsets.
                self.intake.clear()
                self.rewind_needed = True
                with self.tracker.lock:
                    self.tracker.unchecked |= unchecked  # still to be checked after the rewind
                return None
        if unchecked:
            self.ever_assigned = True
            self.last_activity = time.monotonic()
        return unchecked

    def _check_positions(self, records: dict, unchecked: set[Key]) -> dict:
        """Move partitions whose position left the log; drop this poll's records of them."""
        moved = set()
        if unchecked:
            self.intake.forget(unchecked)  # freshly sought: whatever we knew of them is void
            moved |= self.positions.check_assigned(self.consumer, self.tracker, unchecked)
        moved |= self.positions.check_log_ends(self.consumer, self.tracker)
        if not moved:
            return records
        self.intake.forget(moved)
        return {tp: r for tp, r in records.items() if (tp.topic, tp.partition) not in moved}

    def _expected_offsets(self) -> dict[Key, int | None] | None:
        """The stored offset of every owned partition, as of this turn (None: reassigned meanwhile)."""
        with self.tracker.lock:
            if self.generation != self.tracker.generation:
                self.intake.clear()
                self.rewind_needed = True  # start over from the stored offsets
                return None
            return dict(self.tracker.expected)

    def _owned(self, records: dict, expected: dict) -> dict:
        """Records of partitions still owned; a jump from where a partition was left is logged.

        A first record above the expected offset means the records in between
        no longer exist (retention, compaction) or were control records.
        """
        owned = {}
        for tp, recs in records.items():
            key = (tp.topic, tp.partition)
            if key not in expected:
                continue  # revoked during the poll
            stored = expected[key]
            if stored is not None and recs and recs[0].offset < stored:
                # The client moved itself back below what was committed: kafka-python resets a
                # position on its own when a topic was recreated or its log truncated. Record it as a
                # reset of the log (with the topic's new id) and read on from there.
                self.positions.moved_back(self.tracker, key, stored, recs[0].offset)
                self.intake.forget([key])
                continue
            start = self.intake.next_fetch(key)
            if start is None:
                start = stored
            if start is not None and recs and recs[0].offset != start:
                log.info(
                    "%s[%d]: expected offset %d, but the log continues at %d",
                    tp.topic,
                    tp.partition,
                    start,
                    recs[0].offset,
                )
            owned[tp] = recs
        return owned

    def _caught_up(self, key: Key, expected: dict) -> bool:
        """Whether a partition has been read up to the log end the broker last reported."""
        if key not in expected:
            return True  # not ours: nothing of it will arrive here
        tp = TopicPartition(*key)
        highwater = self.consumer.highwater(tp)
        return highwater is not None and self.consumer.position(tp) >= highwater

    def _commit(self, records: list, expected: dict) -> None:
        """Validate, process and commit records in order; isolate a record that cannot be processed.

        The error policy: a failure that is not transient (a data or
        integrity error from the database, or any error a stage raises on the
        record's content) would fail the same way on every retry. The records
        are then split in halves, each committed on its own, until the one
        record that fails is found: it goes to the dead-letter topic with
        stage ``process`` and the error, and everything else commits.
        Transient errors propagate (the loop retries from the stored offsets).
        """
        pending = deque([records])
        while pending:
            part = pending.popleft()
            started = time.perf_counter()
            batch = build_batch(part, self.runner.service.parse)
            validated = time.perf_counter()
            self.runner.step_seconds["validate"] += validated - started
            try:
                self.checkpoint.commit(batch, expected, self.runner.apply)
                self.runner.step_seconds["checkpoint"] += time.perf_counter() - validated
                self.runner.batches += 1
                self.runner.garbage.processed(len(part))
                continue
            except Exception as exc:  # anything not transient is the records' doing
                if is_transient(exc):
                    raise
                self.runner.reset_stages()  # the failed attempt may have changed cached state
                error = exc
            if len(part) > 1:
                if len(part) == len(records):
                    log.warning(
                        "a batch of %d records failed (%s: %s); isolating the record that causes it",
                        len(part),
                        type(error).__name__,
                        error,
                    )
                middle = len(part) // 2
                pending.extendleft([part[middle:], part[:middle]])
                continue
            record = part[0]
            # A stage that refuses the record's content says why in one line: no traceback for that.
            log.error(
                "%s[%d]@%d: processing failed (%s: %s); dead-lettering the record and going on",
                record.topic,
                record.partition,
                record.offset,
                type(error).__name__,
                error,
                exc_info=None if isinstance(error, InvalidEvent) else error,
            )
            letter = dead_letter(record, "process", error)
            self.checkpoint.commit(
                Batch(dead_letters=[letter], next_offsets={(record.topic, record.partition): record.offset + 1}),
                expected,
                self.runner.apply,
            )

    def _back_off(self, exc: Exception) -> None:
        self.backoff = min(MAX_BACKOFF_S, max(0.2, self.backoff * 2))
        log.warning(
            "batch failed (%s: %s); rewinding to stored offsets, retry in %.1fs", type(exc).__name__, exc, self.backoff
        )
        self.runner._stop.wait(self.backoff)
        self.intake.clear()
        self.rewind_needed = True  # never poll on from a position past an uncommitted batch

    def _idle_exit(self, until_idle: float) -> int | None:
        """0 once idle for ``until_idle`` with every input partition consumed; 1 if never assigned."""
        now = time.monotonic()
        if self.ever_assigned and now - self.last_activity >= until_idle:
            busy = self.runner.service.busy
            if busy is not None and busy():
                self.last_activity = now
                return None
            lagging = self._lagging_partitions()
            if not lagging:
                log.info("no input for %.1fs and every input partition is consumed: exiting", until_idle)
                self._flush_outbox()
                return 0
            # Partitions of a member that died are reassigned only after its session times out.
            log.info("idle, but %s still have records not consumed by the group: waiting", lagging)
            self.last_activity = now
        if not self.ever_assigned and now - self.started > max(ASSIGNMENT_TIMEOUT_S, until_idle):
            log.error("no partitions assigned within %.0fs", now - self.started)
            return 1
        return None

    def _lagging_partitions(self) -> dict[Key, int]:
        """Input partitions whose stored offset (any member's) is behind the log end."""
        keys = [
            (topic, p)
            for topic in self.runner.service.topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        ends = log_end_offsets(self.settings, keys)
        with self.runner.engine.connect() as conn:
            stored = repo.load_offsets(conn, self.runner.group_id, keys)
        return {
            key: ends[key] - stored.get(key, 0) for key in keys if key not in ends or ends[key] > stored.get(key, 0)
        }

    def _flush_outbox(self) -> None:
        try:
            self.relay.publish_pending(flush_timeout_s=EXIT_KAFKA_STEP_S)
        except (SQLAlchemyError, KafkaError, TransientError) as exc:
            log.warning("outbox not fully flushed at exit (sent on next start): %s", exc)
