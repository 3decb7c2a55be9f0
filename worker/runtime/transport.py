"""Kafka clients, dead-letter records and the outbox relay."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import Cancelled, KafkaError, KafkaTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from undertow.errors import UndertowError
from undertow.storage import repo
from undertow.worker.runtime.settings import ServiceSettings, Settings
from undertow.worker.runtime.topics import Topics

log = logging.getLogger(__name__)

# Dead-letter copies keep at most this much of the original value, so a
# record near the broker's size limit still fits once error headers are added.
# The full original stays in the source topic at the offset the headers name.
DEAD_LETTER_MAX_VALUE = 512 * 1024
FETCH_MAX_WAIT_MS = 100
METADATA_MAX_AGE_MS = 10_000


class _CancelledOnClose(logging.Filter):
    """kafka-python 3 logs a metadata refresh that a closing client cancels at ERROR; it is a normal close."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "Metadata refresh: failed %s" and record.args and isinstance(record.args[0], Cancelled)
        )


logging.getLogger("kafka.cluster").addFilter(_CancelledOnClose())


class _SocketClosedUnderRead(logging.Filter):
    """kafka-python 3 closes a connection's socket from the closing thread while its I/O thread may still be
    reading it; the read then fails on ``None.recv`` and is logged at ERROR with a traceback, although the
    connection is handled as closed. That one record, and only that one, is a normal close."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, AttributeError) and "'NoneType' object has no attribute 'recv'" in str(error))


logging.getLogger("kafka.net.transport").addFilter(_SocketClosedUnderRead())


class TransientError(UndertowError):
    """Broker or database unavailable: retried with backoff, position kept."""


def client_options(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.kafka_bootstrap_servers.split(","), **settings.kafka_options}


class BrokerUnavailable(TransientError):
    """No broker answered at the bootstrap address."""


def _connect(factory, settings: Settings, **options):
    try:
        return factory(**client_options(settings), **options)
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker reachable at {settings.kafka_bootstrap_servers}") from None


def make_admin(settings: Settings) -> KafkaAdminClient:
    return _connect(KafkaAdminClient, settings, client_id="undertow-admin")


def make_producer(settings: Settings) -> KafkaProducer:
    # Not idempotent: an idempotent producer's id dies with a broker that
    # loses its state (Tansu is memory-only), and the producer then fails
    # for good. Outbox records carry deterministic ids, so a retry's duplicate
    # is dropped by subscribers; one request in flight keeps them in order.
    return _connect(
        KafkaProducer,
        settings,
        client_id="undertow-producer",
        acks="all",
        linger_ms=5,
        enable_idempotence=False,
        max_in_flight_requests_per_connection=1,
        delivery_timeout_ms=30_000,
        request_timeout_ms=10_000,
        max_block_ms=10_000,
    )


def make_event_producer(settings: Settings, max_block_ms: int, max_pending: int) -> KafkaProducer:
    """The serving endpoint's producer of prediction and label events: a short block on missing metadata.

    kafka-python 3's sender busy-loops while a connection is paused at its in-flight limit (the node is
    not ready yet shows no connection delay, so it polls with a zero timeout): with the broker stalled it
    spun on the GIL and a prediction took 20 times as long. The emitter keeps at most ``max_pending``
    records unacknowledged, one request holds at least one, so an in-flight limit above that is never
    reached. acks=1 already rules out idempotence, which would cap the limit at 5; it is said here.
    """
    return _connect(
        KafkaProducer,
        settings,
        client_id="undertow-server",
        acks=1,
        linger_ms=5,
        max_block_ms=max_block_ms,
        request_timeout_ms=10_000,
        delivery_timeout_ms=60_000,
        reconnect_backoff_max_ms=1000,
        enable_idempotence=False,
        max_in_flight_requests_per_connection=max_pending + 1,
    )


def make_tail_consumer(settings: Settings, client_id: str) -> KafkaConsumer:
    """A consumer outside any group, for following a topic from its end (the server's model events)."""
    return _connect(
        KafkaConsumer,
        settings,
        group_id=None,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        allow_auto_create_topics=False,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )


def make_consumer(settings: ServiceSettings, group_id: str, **options) -> KafkaConsumer:
    return _connect(
        KafkaConsumer,
        settings,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_records,
        # Range assignment gives one consumer the same partition number of
        # every subscribed topic: predictions and labels of a model meet here.
        partition_assignment_strategy=[RangePartitionAssignor],
        # Tansu holds a fetch for an empty partition up to fetch_max_wait_ms
        # while the others wait behind it; 500 ms (the default) stalls a backlog.
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        # Short timeouts: group joins take ~3 s on Tansu instead of ~23 s.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        # A consumer never creates topics (a missing one means a broker that
        # lost its data, or a typo), and sees partitions added to its topics
        # within METADATA_MAX_AGE_MS (the group then rebalances).
        allow_auto_create_topics=False,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        **options,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that broke the contract, as it will appear on ``<topic>.DLT``."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(record, stage: str, error: Exception) -> DeadLetter:
    """The original key, value and headers plus error headers naming the source."""
    value = record.value
    headers = list(record.headers or [])
    if value is not None and len(value) > DEAD_LETTER_MAX_VALUE:
        headers.append(("undertow.value.truncated_from", str(len(value)).encode()))
        value = value[:DEAD_LETTER_MAX_VALUE]
    headers += [
        ("undertow.error.stage", stage.encode()),
        ("undertow.error.class", type(error).__name__.encode()),
        ("undertow.error.message", str(error)[:4000].encode()),
        ("undertow.source.topic", record.topic.encode()),
        ("undertow.source.partition", str(record.partition).encode()),
        ("undertow.source.offset", str(record.offset).encode()),
    ]
    return DeadLetter(Topics.dead_letter(record.topic), record.key, value, headers)


class OutboxRelay:
    """Publishes outbox rows; a row is deleted only after the broker acknowledged it.

    A crash between publish and delete re-sends the row with the same bytes
    (and so the same event id): delivery is at least once, subscribers drop
    duplicates by id. Within one process the relays take turns (a class-wide
    lock): the trainer's loop and its training thread each have one, and
    both reading the same pending row before either deleted it sent it twice.
    """

    _publishing = threading.Lock()

    def __init__(self, sessions: sessionmaker[Session], producer: KafkaProducer, chunk: int = 500):
        self._sessions = sessions
        self._producer = producer
        self._chunk = chunk

    def publish_pending(self, flush_timeout_s: float | None = None) -> int:
        """Publish the pending rows and delete those acknowledged; raise TransientError if any was not (after
        ``flush_timeout_s`` at most, when given: a service stopping does not wait on a stalled broker)."""
        with OutboxRelay._publishing:
            return self._publish_pending(flush_timeout_s)

    def _publish_pending(self, flush_timeout_s: float | None) -> int:
        published = 0
        while True:
            with self._sessions.begin() as session:
                rows = [
                    (m.id, m.topic, m.key, m.value, repo.decode_headers(m))
                    for m in repo.pending_outbox(session, self._chunk)
                ]
            if not rows:
                return published
            futures, failed = [], None
            for row_id, topic, key, value, headers in rows:
                try:  # send() raises some errors itself (a record too large, metadata timeout)
                    futures.append((row_id, self._producer.send(topic, key=key, value=value, headers=headers)))
                except KafkaError as exc:
                    failed = f"outbox row {row_id} to {topic}: {exc}"
            timed_out = False
            try:
                self._producer.flush(timeout=flush_timeout_s)
            except KafkaTimeoutError:
                timed_out = True  # the rows not acknowledged by now stay in the outbox, below
            acked = []
            for row_id, future in futures:
                try:
                    future.get(timeout=0)
                    acked.append(row_id)
                except KafkaError as exc:
                    failed = f"outbox row {row_id}: {exc}"
            if timed_out:
                failed = f"{len(rows) - len(acked)} of {len(rows)} rows not acknowledged within {flush_timeout_s:g}s"
            with self._sessions.begin() as session:
                repo.delete_outbox(session, acked)
            published += len(acked)
            if failed is not None:
                # What was acknowledged is gone from the outbox; the rest stays for the next attempt.
                raise TransientError(f"outbox publish failed: {failed}")


def restore_parked_fetches(consumer: KafkaConsumer) -> None:
    """Call before each poll of a consumer that pauses partitions: works around kafka-python 3.0.12.

    Records fetched for a partition that is paused before they are returned are parked, and given back after
    ``resume`` only while the fetcher's in-line slot is None; a slot drained by the last poll stays an empty
    object instead, so the parked records were never given back and the partition, having records parked,
    was never fetched again (``test_a_partition_paused_with_records_fetched_is_read_on_after_resume``; the
    merger used not to pause for that reason). A drained slot is emptied here, as the fetcher itself would
    at its next step. Nothing happens unless records are parked, or on a client without these fields.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not getattr(fetcher, "_paused_partition_records", None):
        return
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None


def log_end_offsets(
    settings: Settings, partitions: list[tuple[str, int]], timeout_s: float = 5.0, topics: list[str] = ()
) -> dict:
    """The high watermark of each partition (and of every partition of ``topics``), from fetch responses.

    Tansu's ListOffsets(latest) can return the base offset of the last batch
    instead of the log end, so the watermark that fetches report is used.
    Partitions whose watermark is not known by the deadline are left out;
    an unreachable broker raises BrokerUnavailable within about ``timeout_s``.
    """
    consumer = _connect(
        KafkaConsumer,
        settings,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=1,
        request_timeout_ms=5000,
        allow_auto_create_topics=False,
        bootstrap_timeout_ms=int(timeout_s * 1000),
    )
    try:
        wanted = set(partitions)
        for topic in topics:
            wanted.update((topic, p) for p in consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(t, p) for t, p in sorted(wanted)]
        known: dict = {}
        if not tps:
            return known
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
            known = {tp: consumer.highwater(tp) for tp in tps}
            if all(v is not None for v in known.values()):
                break
        return {(tp.topic, tp.partition): hw for tp, hw in known.items() if hw is not None}
    finally:
        consumer.close()


def unreachable_broker(bootstrap_servers: str, seconds: float = 4.0) -> str | None:
    """Why no server of ``bootstrap_servers`` (comma-separated host:port) takes a TCP connection within
    ``seconds`` (all are tried at once, name lookups included), or None once one does.

    Only a pre-flight check: the Kafka client would retry for half a minute, logging every attempt, before
    it gave up. A server that takes the connection but is no broker is left to the client.
    """
    servers = bootstrap_servers.split(",")
    answers: queue.Queue[str | None] = queue.Queue()

    def probe(server: str) -> None:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
            answers.put(None)
        except OSError as exc:
            why = (exc.strerror or str(exc) or type(exc).__name__).lower()
            answers.put(f"{server}: {why}" if len(servers) > 1 else why)

    for server in servers:  # daemon threads: a name lookup that hangs must not hold the exit
        threading.Thread(target=probe, args=(server,), daemon=True, name=f"probe {server}").start()
    deadline = time.monotonic() + seconds
    reasons = []
    for _ in servers:
        try:
            reason = answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            reasons.append(f"no answer within {seconds:g} s")
            break
        if reason is None:
            return None
        reasons.append(reason)
    return "; ".join(reasons)
