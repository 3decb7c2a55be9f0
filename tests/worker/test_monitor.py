"""The monitor against the embedded broker and a real database, run as the CLI runs it."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import requires_postgres, wait_for
from undertow.worker.dev.sample import SampleStream


def _counts(env) -> tuple[int, int, int]:
    row = (
        env.scalar("SELECT COALESCE(SUM(predictions), 0) FROM model_stats"),
        env.scalar("SELECT COALESCE(SUM(labels), 0) FROM model_stats"),
        env.scalar("SELECT COALESCE(SUM(duplicates), 0) FROM model_stats"),
    )
    return tuple(int(v) for v in row)


def _prediction(event_id: str, model_id: str = "m", **changes) -> dict:
    event = {
        "event_id": event_id,
        "model_id": model_id,
        "ts": "2026-11-27T14:06:28Z",
        "features": {"x": 1.0, "c": "red"},
        "prediction": 1.5,
    }
    event.update(changes)
    return event


def test_poison_records_go_to_the_dead_letter_topic_and_good_ones_count(env):
    p, lab = env.topics.predictions, env.topics.labels
    good = json.dumps(_prediction("ok")).encode()
    bad_predictions = [
        b"{not json",
        b"",
        None,
        b"[1, 2, 3]",
        b"42",
        json.dumps({"event_id": "x", "model_id": "m"}).encode(),
        json.dumps(_prediction("x", features=[1, 2])).encode(),
        json.dumps(_prediction("x", prediction={"no": 1})).encode(),
        good.replace(b"1.5", b"NaN"),
        good.replace(b"1.0", b"Infinity"),
        json.dumps(_prediction("x", ts="yesterday")).encode(),
        json.dumps(_prediction("x", ts="2026-11-27T14:06:28")).encode(),
        json.dumps(_prediction("x", features={"blob": "y" * 300_000})).encode(),
    ]
    bad_labels = [
        b"{}",
        json.dumps(
            {"event_id": "ok", "model_id": "m", "ts": "2026-11-27T15:00:00Z", "label": float("inf")}, allow_nan=True
        ).encode(),
    ]
    good_count = 0
    for i, value in enumerate(bad_predictions):
        env.send(p, value, headers=[("trace", f"t{i}".encode())])
        env.send(p, json.dumps(_prediction(f"good-{i}")).encode())
        good_count += 1
    env.send(p, json.dumps(_prediction("wrong-key")).encode(), key=b"other-model")
    for value in bad_labels:
        env.send(lab, value)
    env.send(
        lab, json.dumps({"event_id": "good-0", "model_id": "m", "ts": "2026-11-27T15:00:00Z", "label": 1.0}).encode()
    )
    env.flush()

    env.drain()

    assert _counts(env) == (good_count, 1, 0)
    dead_predictions = env.read_all(env.topics.dead_letter(p), len(bad_predictions) + 1)
    dead_labels = env.read_all(env.topics.dead_letter(lab), len(bad_labels))
    assert len(dead_predictions) == len(bad_predictions) + 1 and len(dead_labels) == len(bad_labels)
    originals = {i: v for i, v in enumerate(bad_predictions)}
    for record in dead_predictions:
        headers = dict(record.headers)
        assert headers["undertow.error.stage"] == b"validate"
        assert headers["undertow.error.class"] == b"InvalidEvent"
        assert headers["undertow.error.message"]
        assert headers["undertow.source.topic"] == p.encode()
        assert int(headers["undertow.source.offset"]) >= 0 and headers["undertow.source.partition"]
        if b"trace" in headers or "trace" in headers:
            index = int(headers["trace"][1:])
            assert record.value == originals[index] or (record.value in (b"", None) and not originals[index])
            assert record.key == b"m"
    messages = b" ".join(dict(r.headers)["undertow.error.message"] for r in dead_predictions)
    assert b"exceeds max_event_bytes" in messages and b"is not the model_id" in messages
    assert env.scalar("SELECT count FROM dead_letter_stats WHERE source_topic = :t", t=p) == len(dead_predictions)


def test_duplicate_event_ids_are_counted_once(env):
    p, lab = env.topics.predictions, env.topics.labels
    for _ in range(3):
        env.send(p, json.dumps(_prediction("dup")).encode())
    env.send(p, json.dumps(_prediction("unique")).encode())
    for _ in range(2):
        env.send(
            lab, json.dumps({"event_id": "dup", "model_id": "m", "ts": "2026-11-27T15:00:00Z", "label": 2.0}).encode()
        )
    env.flush()
    env.drain()
    assert _counts(env) == (2, 1, 3)
    # a second run over the same log changes nothing: the stored offsets are the truth
    env.drain(idle=2.0)
    assert _counts(env) == (2, 1, 3)


def _produce_stream(env, n: int, models: int = 6, rate: float | None = None) -> int:
    """n distinct predictions and their labels across models, every 50th prediction sent twice."""

    def pairs():
        for i, (prediction, label) in enumerate(SampleStream(seed=3).events(n)):
            prediction["model_id"] = label["model_id"] = f"model-{i % models}"
            yield prediction, label

    return env.send_events(pairs(), rate=rate, duplicate_every=50)


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_at_random_moments_counts_every_event_exactly_once(env):
    n = 10_000  # predictions; with their labels 20,000 distinct valid events
    # Paced so the stream lasts longer than several restarts (each group rejoin
    # after a SIGKILL takes ~11 s on Tansu): every kill lands mid-stream.
    kills = env.run_with_kills(
        lambda: _produce_stream(env, n, rate=400), seed=11, env={"UNDERTOW_BATCH_MAX_RECORDS": "300"}
    )
    predictions, labels, duplicates = _counts(env)
    assert kills >= 3
    assert (predictions, labels) == (n, n)
    assert duplicates == len(range(0, n, 50))


def test_sigterm_finishes_the_batch_commits_and_exits_zero(env):
    _produce_stream(env, 4000)
    proc = env.start_monitor(env={"UNDERTOW_BATCH_MAX_RECORDS": "200"})
    try:
        wait_for(lambda: sum(_counts(env)) > 0, 60, "the monitor to process something")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, env.log_of(proc)
    assert time.monotonic() - started < 10
    # State and offsets are of the same batch: every record below the stored
    # offsets is counted and nothing after them.
    stored = {(t, p): o for t, p, o in _stored_offsets(env)}
    predictions, labels, duplicates = _counts(env)
    stored_predictions = sum(o for (t, _), o in stored.items() if t == env.topics.predictions)
    stored_labels = sum(o for (t, _), o in stored.items() if t == env.topics.labels)
    assert predictions + duplicates == stored_predictions
    assert labels == stored_labels
    # Kafka's committed offsets mirror the database for lag tools.
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=env.bootstrap, group_id=env.group_id, enable_auto_commit=False)
    try:
        for (topic, partition), offset in stored.items():
            assert consumer.committed(TopicPartition(topic, partition)) == offset
    finally:
        consumer.close()
    env.drain()
    assert _counts(env)[:2] == (4000, 4000)


def _stored_offsets(env):
    from sqlalchemy import text

    with env.engine.connect() as conn:
        return list(conn.execute(text("SELECT topic, partition, next_offset FROM consumer_offsets")))


@pytest.mark.postgres
@pytest.mark.slow
def test_two_monitors_share_the_partitions_and_count_each_event_once(env):
    requires_postgres(env.db_url)  # SQLite takes one monitor: a second is refused (test_faults)
    n = 6000
    models = 9  # spread over all three partitions
    first = env.start_monitor(env={"UNDERTOW_BATCH_MAX_RECORDS": "200"})
    second = env.start_monitor(env={"UNDERTOW_BATCH_MAX_RECORDS": "200"})
    try:
        _produce_stream(env, n, models=models, rate=800)
        wait_for(lambda: sum(_counts(env)[:2]) >= n, 120, "both monitors to make progress")
        first.send_signal(signal.SIGKILL)  # the survivor takes its partitions over
        first.wait()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, env.log_of(second)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    env.drain()
    predictions, labels, duplicates = _counts(env)
    assert (predictions, labels) == (n, n)
    assert duplicates == len(range(0, n, 50))
