"""The runtime's parts on their own: the co-partition merger, the checkpoint, the outbox relay."""

import json
import os
import random
import signal

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import select

from tests.conftest import Env, wait_for
from undertow.errors import StaleOffsets
from undertow.storage import db, repo
from undertow.storage.tables import ConsumerOffset, OutboxMessage
from undertow.worker.dev.broker import EmbeddedBroker
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.checkpoint import Checkpoint
from undertow.worker.runtime.merge import CoPartitionMerger
from undertow.worker.runtime.positions import PartitionTracker
from undertow.worker.runtime.transport import (
    OutboxRelay,
    TransientError,
    make_consumer,
    make_producer,
    restore_parked_fetches,
)

pytestmark = pytest.mark.postgres
P, L = "predictions", "labels"


def _record(topic: str, partition: int, offset: int, ts: int, value: bytes = b"{}") -> ConsumerRecord:
    return ConsumerRecord(topic, partition, -1, offset, ts, 0, b"m", value, [], None, 1, len(value), -1)


def _stream(partition: int, n: int, seed: int) -> dict[str, list]:
    """Predictions and labels of one partition whose timestamps interleave (ties included)."""
    rng = random.Random(seed)
    ts_p = sorted(rng.randrange(0, 5 * n) for _ in range(n))
    ts_l = sorted(rng.randrange(0, 5 * n) for _ in range(n))
    return {
        P: [_record(P, partition, i, t) for i, t in enumerate(ts_p)],
        L: [_record(L, partition, i, t) for i, t in enumerate(ts_l)],
    }


def _key(r):
    return (r.topic, r.partition, r.offset)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merger_release_order_does_not_depend_on_how_the_records_were_polled(seed):
    streams = {number: _stream(number, 300, seed * 10 + number) for number in (0, 1)}
    reference = CoPartitionMerger(P, L)
    reference.add({TopicPartition(t, n): rs for n, s in streams.items() for t, rs in s.items()})
    expected = [_key(r) for r in reference.release(lambda key: True, limit=10_000)]
    assert len(expected) == 1200
    for number in (0, 1):  # per partition: (timestamp, predictions before labels, offset)
        mine = streams[number][P] + streams[number][L]
        mine.sort(key=lambda r: (r.timestamp, 0 if r.topic == P else 1, r.offset))
        assert [k for k in expected if k[1] == number] == [_key(r) for r in mine]

    rng = random.Random(seed)
    merger, got = CoPartitionMerger(P, L), []
    fetched = {(t, n): 0 for n in streams for t in (P, L)}
    while any(fetched[(t, n)] < 300 for (t, n) in fetched):
        key = rng.choice([k for k in fetched if fetched[k] < 300])  # fetches arrive in random chunks
        start = fetched[key]
        fetched[key] = min(300, start + rng.randint(1, 40))
        merger.add({TopicPartition(*key): streams[key[1]][key[0]][start : fetched[key]]})
        got += merger.release(lambda k: fetched[k] == 300, limit=rng.randint(1, 100), now=0.0)
    got += merger.release(lambda k: True, limit=10_000, now=0.0)
    for number in (0, 1):  # partitions are independent; within one the order is the reference's
        assert [_key(r) for r in got if r.partition == number] == [k for k in expected if k[1] == number]
    assert len(got) == 1200


def test_merger_holds_a_partition_back_until_its_partner_catches_up_or_the_wait_ends():
    merger = CoPartitionMerger(P, L, max_wait_s=2.0)
    merger.add({TopicPartition(P, 0): [_record(P, 0, i, 100 + i) for i in range(5)]})
    assert merger.release(lambda key: False, limit=100, now=10.0) == []
    assert merger.release(lambda key: False, limit=100, now=11.9) == []
    assert [r.offset for r in merger.release(lambda key: False, limit=100, now=12.0)] == [0, 1, 2, 3, 4]
    merger.add({TopicPartition(P, 0): [_record(P, 0, 5, 200)]})
    assert [r.offset for r in merger.release(lambda key: key == (L, 0), limit=100, now=12.0)] == [5]


def test_by_default_a_partner_a_catch_up_fetch_cycle_away_is_waited_for():
    # A monitor catching up reads one partition's fetch at a time: the labels of partition 0 come 6 s after
    # its predictions (measured in bench/scale.py --hot), and still merge in timestamp order.
    merger = CoPartitionMerger(P, L)
    merger.add({TopicPartition(P, 0): [_record(P, 0, i, 100 + 2 * i) for i in range(3)]})
    assert merger.release(lambda key: False, limit=100, now=0.0) == []
    assert merger.release(lambda key: False, limit=100, now=6.0) == []
    merger.add({TopicPartition(L, 0): [_record(L, 0, i, 101 + 2 * i) for i in range(3)]})
    released = merger.release(lambda key: False, limit=100, now=6.0)
    assert [(r.topic, r.offset) for r in released] == [(P, 0), (L, 0), (P, 1), (L, 1), (P, 2)]


def test_merger_releases_beyond_max_buffered_and_forgets_revoked_partitions():
    merger = CoPartitionMerger(P, L, max_wait_s=60.0, max_buffered=3, hold_at=2)
    merger.add(
        {
            TopicPartition(P, 0): [_record(P, 0, i, i) for i in range(5)],
            TopicPartition(P, 1): [_record(P, 1, i, i) for i in range(2)],
        }
    )
    released = merger.release(lambda key: False, limit=100, now=0.0)
    assert [(r.partition, r.offset) for r in released] == [(0, 0), (0, 1), (0, 2)]  # down to max_buffered - 1
    assert merger.next_fetch((P, 0)) == 5 and len(merger) == 4
    merger.forget([(P, 0)])
    assert merger.next_fetch((P, 0)) is None and merger.buffered((P, 0)) == 0 and len(merger) == 2


def test_a_side_far_ahead_is_held_back_until_it_is_down_to_half_and_its_records_still_merge_in_order():
    merger = CoPartitionMerger(P, L, max_buffered=100, hold_at=10)
    # Catching up: 12 labels of partition 0 arrive before any prediction of it; partition 1 stays small.
    merger.add({TopicPartition(L, 0): [_record(L, 0, i, 2 * i + 1) for i in range(12)]})
    merger.add({TopicPartition(L, 1): [_record(L, 1, 0, 1)]})
    assert merger.release(lambda key: False, limit=100, now=0.0) == []
    assert merger.held_back() == {(L, 0)}
    # The predictions come: the merge goes on in timestamp order while the labels stay held, down to half.
    merger.add({TopicPartition(P, 0): [_record(P, 0, i, 2 * i) for i in range(3)]})
    released = merger.release(lambda key: False, limit=100, now=1.0)
    assert [(r.topic, r.offset) for r in released] == [(P, 0), (L, 0), (P, 1), (L, 1), (P, 2)]
    assert merger.buffered((L, 0)) == 10 and merger.held_back() == {(L, 0)}
    merger.add({TopicPartition(P, 0): [_record(P, 0, i, 2 * i) for i in range(3, 6)]})
    merger.release(lambda key: False, limit=100, now=2.0)
    assert merger.buffered((L, 0)) == 7 and merger.held_back() == {(L, 0)}  # 7 is not below half of 10
    merger.add({TopicPartition(P, 0): [_record(P, 0, i, 2 * i) for i in range(6, 9)]})
    released = merger.release(lambda key: False, limit=100, now=3.0)
    assert [r.timestamp for r in released] == list(range(11, 17))
    assert merger.buffered((L, 0)) == 4 and merger.held_back() == set()
    merger.add({TopicPartition(L, 0): [_record(L, 0, 12 + i, 25 + 2 * i) for i in range(6)]})
    assert merger.held_back() == {(L, 0)}
    merger.clear()  # a rewind: nothing buffered, nothing held
    assert merger.held_back() == set()


def test_a_merger_holding_back_more_than_its_backstop_is_refused():
    with pytest.raises(ValueError, match="hold_at must be above 0 and below max_buffered"):
        CoPartitionMerger(P, L, max_buffered=100, hold_at=100)


def test_a_partition_paused_with_records_fetched_is_read_on_after_resume(env):
    """kafka-python 3.0.12 parks the records of a partition paused after they were fetched and, after
    ``resume``, gave them back only if its in-line slot was None, never when a drained one was left: the
    partition was never fetched again. ``restore_parked_fetches`` before each poll, as the service loop does,
    reads it to its end. (Without it this read stops at the first 5,000 labels.)"""
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=5, enable_idempotence=False)
    try:
        for _ in range(20_000):
            producer.send(env.topics.predictions, b"p" * 300, partition=0)
        for _ in range(50_000):
            producer.send(env.topics.labels, b"l" * 20, partition=0)
        producer.flush()
    finally:
        producer.close()
    consumer = make_consumer(env.settings, env.group_id)  # 5,000 records a poll at most
    predictions, labels = TopicPartition(env.topics.predictions, 0), TopicPartition(env.topics.labels, 0)
    got = {env.topics.predictions: 0, env.topics.labels: 0}

    def poll() -> None:
        restore_parked_fetches(consumer)
        for tp, records in consumer.poll(timeout_ms=200).items():
            got[tp.topic] += len(records)

    try:
        consumer.assign([predictions, labels])
        consumer.seek_to_beginning()
        wait_for(lambda: poll() or got[env.topics.labels] > 0, 30, "the first labels")
        consumer.pause(labels)  # with more of its records fetched than returned: they are parked
        wait_for(lambda: poll() or got[env.topics.predictions] == 20_000, 30, "every prediction while paused")
        consumer.resume(labels)
        wait_for(lambda: poll() or got[env.topics.labels] == 50_000, 30, f"every label after resume, got {got}")
        assert got == {env.topics.predictions: 20_000, env.topics.labels: 50_000}  # each read once
    finally:
        consumer.close(autocommit=False)


class _Recorded:
    """A stage that enqueues one alert-like outbox row per event, or fails."""

    def __init__(self, topic: str, fail: bool = False):
        self.topic, self.fail, self.calls = topic, fail, 0

    def __call__(self, session, batch):
        self.calls += 1
        for position, _event in batch.events:
            repo.enqueue(session, self.topic, b"m", json.dumps({"offset": position.offset}).encode())
        if self.fail:
            raise ValueError("the stage failed after writing")


def _parse(record):
    from undertow.errors import InvalidEvent

    if record.value == b"bad":
        raise InvalidEvent("not an event")
    return json.loads(record.value)


@pytest.fixture
def parts(env):
    """A checkpoint on real clients: the env's broker and database."""
    sessions = db.make_session_factory(env.engine)
    consumer = make_consumer(env.settings, env.group_id)
    producer = make_producer(env.settings)
    tracker = PartitionTracker(env.engine, env.group_id)
    relay = OutboxRelay(sessions, producer)
    yield env, sessions, tracker, Checkpoint(sessions, consumer, tracker, relay, {})
    consumer.close(autocommit=False)
    producer.close()


def _batch(topic: str):
    records = [
        _record(topic, 0, 0, 1, b'{"n": 0}'),
        _record(topic, 0, 1, 2, b"bad"),
        _record(topic, 0, 2, 3, b'{"n": 2}'),
    ]
    return build_batch(records, _parse)


def _stored_offsets(sessions) -> dict:
    with sessions() as session:
        return {(o.topic, o.partition): o.next_offset for o in session.scalars(select(ConsumerOffset))}


def test_checkpoint_commits_state_dead_letters_and_offsets_together_then_publishes(parts):
    env, sessions, tracker, checkpoint = parts
    topic, out = env.topics.predictions, env.topics.alerts
    tracker.expected[(topic, 0)] = None
    expected = {(topic, 0): None}
    stage = _Recorded(out)
    checkpoint.commit(_batch(topic), expected, stage)
    assert _stored_offsets(sessions) == {(topic, 0): 3}
    assert expected == {(topic, 0): 3} and tracker.expected == {(topic, 0): 3}
    assert env.scalar("SELECT count(*) FROM outbox") == 0  # published, then deleted
    assert sorted(json.loads(r.value)["offset"] for r in env.read_all(out, 2)) == [0, 2]
    (letter,) = env.read_all(env.topics.dead_letter(topic), 1)
    assert letter.value == b"bad" and dict(letter.headers)["undertow.error.message"] == b"not an event"
    assert env.scalar("SELECT count FROM dead_letter_stats WHERE source_topic = :t", t=topic) == 1


def test_checkpoint_writes_nothing_when_the_stage_fails(parts):
    env, sessions, tracker, checkpoint = parts
    topic = env.topics.predictions
    tracker.expected[(topic, 0)] = None
    expected = {(topic, 0): None}
    with pytest.raises(ValueError, match="the stage failed"):
        checkpoint.commit(_batch(topic), expected, _Recorded(env.topics.alerts, fail=True))
    assert _stored_offsets(sessions) == {}
    assert expected == {(topic, 0): None} and tracker.expected == {(topic, 0): None}
    assert env.scalar("SELECT count(*) FROM outbox") == 0
    assert env.scalar("SELECT count(*) FROM dead_letter_stats") == 0


def test_checkpoint_refuses_offsets_another_consumer_moved_before_the_stage_runs(parts):
    env, sessions, tracker, checkpoint = parts
    topic = env.topics.predictions
    with sessions.begin() as session:  # another monitor committed up to 7 meanwhile
        repo.advance_offsets(session, env.group_id, {(topic, 0): (None, 7)})
    stage = _Recorded(env.topics.alerts)
    with pytest.raises(StaleOffsets, match="already has a stored offset 7"):
        checkpoint.commit(_batch(topic), {(topic, 0): None}, stage)
    assert stage.calls == 0 and _stored_offsets(sessions) == {(topic, 0): 7}
    assert env.scalar("SELECT count(*) FROM outbox") == 0


def test_checkpoint_reads_the_outbox_after_writing_to_it_or_once_the_check_is_due(parts, monkeypatch):
    """A batch that wrote no outbox rows does not read the outbox until ``OUTBOX_CHECK_S`` has passed;
    rows another writer left (a training thread whose publish failed) are published then."""
    env, sessions, tracker, checkpoint = parts
    topic, out = env.topics.predictions, env.topics.alerts
    tracker.expected[(topic, 0)] = None
    expected = {(topic, 0): None}

    def quiet(session, batch):  # a stage that writes no outbox rows
        return None

    monkeypatch.setattr(Checkpoint, "OUTBOX_CHECK_S", 3600.0)
    checkpoint.commit(build_batch([_record(topic, 0, 0, 1, b'{"n": 0}')], _parse), expected, quiet)
    with sessions.begin() as session:
        repo.enqueue(session, out, b"m", b"left by another writer")
    checkpoint.commit(build_batch([_record(topic, 0, 1, 2, b'{"n": 1}')], _parse), expected, quiet)
    assert env.scalar("SELECT count(*) FROM outbox") == 1
    checkpoint.commit(build_batch([_record(topic, 0, 2, 3, b'{"n": 2}')], _parse), expected, _Recorded(out))
    assert env.scalar("SELECT count(*) FROM outbox") == 0  # this batch wrote a row: both went out
    with sessions.begin() as session:
        repo.enqueue(session, out, b"m", b"left again")
    monkeypatch.setattr(Checkpoint, "OUTBOX_CHECK_S", 0.0)
    checkpoint.commit(build_batch([_record(topic, 0, 3, 4, b'{"n": 3}')], _parse), expected, quiet)
    assert env.scalar("SELECT count(*) FROM outbox") == 0
    assert sorted(r.value for r in env.read_all(out, 3)) == [b"left again", b"left by another writer", b'{"offset": 2}']
    assert _stored_offsets(sessions) == {(topic, 0): 4}


def test_outbox_relay_deletes_what_was_acknowledged_and_keeps_what_failed(env):
    sessions = db.make_session_factory(env.engine)
    out = env.topics.alerts
    with sessions.begin() as session:
        for value in (b"first", b"x" * 20_000, b"third"):
            repo.enqueue(session, out, b"m", value)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, max_request_size=10_000, enable_idempotence=False)
    try:
        with pytest.raises(TransientError, match="outbox publish failed: outbox row .* too large|MessageSize"):
            OutboxRelay(sessions, producer).publish_pending()
    finally:
        producer.close()
    with sessions() as session:
        assert [len(m.value) for m in session.scalars(select(OutboxMessage))] == [20_000]
    assert sorted(r.value for r in env.read_all(out, 2)) == [b"first", b"third"]
    big = make_producer(env.settings)  # the next attempt, with a producer that can send it
    try:
        assert OutboxRelay(sessions, big).publish_pending() == 1
    finally:
        big.close()
    assert env.scalar("SELECT count(*) FROM outbox") == 0


def test_the_outbox_flush_at_exit_gives_up_on_a_stalled_broker_and_keeps_what_was_not_acknowledged(db_url):
    """A stopping service flushes the outbox with a bound (``EXIT_KAFKA_STEP_S``): with the broker stalled
    (SIGSTOP) the relay gives up after it, the row stays, and the next attempt sends it."""
    with EmbeddedBroker() as own:  # paused below: the shared broker stays out of it
        env = Env(own, db_url)
        sessions = db.make_session_factory(env.engine)
        producer = make_producer(env.settings)
        relay = OutboxRelay(sessions, producer)
        try:
            with sessions.begin() as session:
                repo.enqueue(session, env.topics.alerts, b"m", b"before the stall")
            assert relay.publish_pending() == 1  # the producer knows the topic's leader before the stall
            with sessions.begin() as session:
                repo.enqueue(session, env.topics.alerts, b"m", b"during the stall")
            os.kill(own.pid, signal.SIGSTOP)
            try:
                with pytest.raises(TransientError, match="1 of 1 rows not acknowledged within 1s"):
                    relay.publish_pending(flush_timeout_s=1.0)
                assert env.scalar("SELECT count(*) FROM outbox") == 1
            finally:
                os.kill(own.pid, signal.SIGCONT)
            relay.publish_pending()
            assert env.scalar("SELECT count(*) FROM outbox") == 0
            # At least once: the stalled request may also have been delivered after the broker resumed.
            assert {r.value for r in env.read_all(env.topics.alerts, 2)} == {b"before the stall", b"during the stall"}
        finally:
            producer.close(timeout=5)
            env.close()


def test_kafka_pythons_read_of_a_socket_closed_under_it_is_not_logged_but_real_read_errors_are(caplog):
    import logging

    import undertow.worker.runtime.transport  # noqa: F401 - installs the filter

    log = logging.getLogger("kafka.net.transport")
    with caplog.at_level(logging.ERROR, logger="kafka.net.transport"):
        for error in (AttributeError("'NoneType' object has no attribute 'recv'"), ConnectionResetError("reset")):
            try:
                raise error
            except BaseException:
                log.exception("%s: Error receiving network data closing socket", "conn")
    assert [str(r.exc_info[1]) for r in caplog.records] == ["reset"]
