"""A spread model: its events over every partition, partial windows and errors per partition, one merge.

The records are built here with explicit partitions, offsets and timestamps
(no broker, as in test_golden) and go through validation and the monitor's
stages one transaction per batch; the partials the batches leave in the
outbox are handed back as merge-topic records, as the relay and the broker
would. The same stream as one unspread model must give the same counts, the
same drifts found and the same retrain requests; other batch boundaries and
partials delivered twice must change nothing.
"""

from __future__ import annotations

import json
import time
import zlib

import numpy as np
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text

from tests.conftest import Env
from undertow.errors import InvalidEvent
from undertow.models import registry
from undertow.storage import db
from undertow.worker.dev.sample import SampleStream, encode
from undertow.worker.monitor.service import monitor_service
from undertow.worker.monitor.spread.merge_state import MergeProgress, ModelMerge
from undertow.worker.monitor.spread.partial import FORMAT_HEADER, PairsPart, Partial, RowsPart, decode, pack
from undertow.worker.monitor.spread.progress import spread_status
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import ServiceRunner
from undertow.worker.runtime.topics import Topics

PARTITIONS = 6
LABEL_LAG = 300


def _stream() -> list[tuple[dict, dict]]:
    drifting = SampleStream(seed=7, model_id="hot")
    return [
        *drifting.events(3000),
        *drifting.events(1500, start_index=3000, shift=1.5),
        *drifting.events(1500, start_index=4500, shift=1.5, concept_shift=1.0),
    ]


class Feed:
    """Records of the stream on the partitions their keys hash to (spread: by event id), in timestamp order."""

    def __init__(self, topics: Topics, spread: bool):
        self.topics, self.spread = topics, spread
        self.offsets: dict[tuple[str, int], int] = {}
        self.ts = 1_793_000_000_000

    def record(self, topic: str, event: dict, partition: int | None = None) -> ConsumerRecord:
        self.ts += 7
        key = (event["event_id"] if self.spread else event["model_id"]).encode()
        if partition is None:
            partition = zlib.crc32(key) % PARTITIONS if self.spread else 0
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        value = encode(event)
        return ConsumerRecord(topic, partition, -1, offset, self.ts, 0, key, value, [], None, len(key), len(value), -1)

    def records(self, pairs) -> list[ConsumerRecord]:
        out = []
        for i, (prediction, _) in enumerate(pairs):
            out.append(self.record(self.topics.predictions, prediction))
            if i >= LABEL_LAG:
                out.append(self.record(self.topics.labels, pairs[i - LABEL_LAG][1]))
        out.extend(self.record(self.topics.labels, label) for _, label in pairs[-LABEL_LAG:])
        return out


def _merge_records(runner: ServiceRunner, topics: Topics, offsets: dict, twice: bool) -> list[ConsumerRecord]:
    """The partials in the outbox as merge-topic records (all of one model on merge partition 0), then gone."""
    with runner.sessions.begin() as session:
        rows = session.execute(
            text("SELECT id, key, value, headers FROM outbox WHERE topic = :t ORDER BY id"), {"t": topics.merge}
        ).all()
        session.execute(text("DELETE FROM outbox WHERE topic = :t"), {"t": topics.merge})
    out = []
    for _, key, value, headers in rows:
        decoded = [(name, bytes.fromhex(v)) for name, v in json.loads(headers)]
        for _ in range(2 if twice else 1):
            offset = offsets[topics.merge] = offsets.get(topics.merge, -1) + 1
            out.append(
                ConsumerRecord(topics.merge, 0, -1, offset, 0, 0, key, value, decoded, None, len(key), len(value), -1)
            )
    return out


def _run(env: Env, spread: bool, batch_size: int = 700, twice: bool = False, restart: bool = False) -> dict:
    """``twice``: every partial delivered twice; ``restart``: every stage's memory dropped after each batch, as
    after a crash (the merge restores what it holds from merge_pending)."""
    env.register_reference(SampleStream(seed=2, model_id="hot"), model_id="hot", window_size=500)
    if spread:
        with db.make_session_factory(env.engine).begin() as session:
            registry.set_spread(session, "hot", True)
    runner = ServiceRunner(env.settings, monitor_service(env.settings, partitions=PARTITIONS))
    topics = Topics(env.settings.topic_prefix)
    records = Feed(topics, spread).records(_stream())
    merge_offsets: dict = {}
    for start in range(0, len(records), batch_size):
        for batch_records in (records[start : start + batch_size], None):
            if batch_records is None:  # the partials this batch emitted, as the merging monitor reads them
                batch_records = _merge_records(runner, topics, merge_offsets, twice)
            batch = build_batch(batch_records, runner.service.parse)
            assert not batch.dead_letters, batch.dead_letters[0].headers
            with runner.sessions.begin() as session:
                runner.apply(session, batch)
            if restart:
                runner.reset_stages()
    runner.engine.dispose()
    with env.engine.connect() as conn:
        alerts = [json.loads(row[0]) for row in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY id"))]
        counts = conn.execute(text("SELECT predictions, labels, duplicates FROM model_stats")).all()
        pairs = conn.execute(text("SELECT count(*) FROM labelled_pairs")).scalar()
        requests = conn.execute(text("SELECT count(*) FROM retrain_requests")).scalar()
        pending = conn.execute(text("SELECT count(*) FROM merge_pending")).scalar()
        windows = conn.execute(
            text("SELECT window_index, feature, n, start_ts, end_ts, psi FROM window_results ORDER BY 1, 2")
        ).all()
    with db.make_session_factory(env.engine).begin() as session:
        status = spread_status(session, env.settings.spread_merge_wait_seconds)
    return {
        "alerts": alerts,
        "counts": counts,
        "pairs": pairs,
        "requests": requests,
        "pending": pending,
        "windows": windows,
        "status": status,
    }


def _found(alerts: list[dict]) -> set[tuple]:
    """What an operator reads off the alerts: which checks fired on which input or detector, how severe."""
    found = set()
    for alert in alerts:
        data = alert["data"]
        if alert["type"] == "undertow.drift.concept":
            found.add(("concept", data["metric"], data["episode"]))
        else:
            found.add((alert["type"], data.get("feature"), data["severity"]))
    return found


@pytest.fixture
def one(make_env):
    return _run(make_env(), spread=False)


def test_a_spread_model_finds_the_drifts_one_partition_finds(make_env, one):
    spread = _run(make_env(), spread=True)
    assert spread["counts"] == one["counts"] == [(6000, 6000, 0)]
    assert spread["pairs"] == one["pairs"] == 6000
    assert _found(spread["alerts"]) == _found(one["alerts"])
    assert {"undertow.drift.data", "undertow.drift.concept"} <= {a["type"] for a in one["alerts"]}
    assert spread["requests"] == one["requests"] >= 1
    assert one["status"] == []
    (status,) = spread["status"]
    assert [p["partition"] for p in status["partitions"]] == list(range(PARTITIONS))
    assert all(p["waited_for"] and p["watermark"] for p in status["partitions"])
    assert status["late_rows"] == status["late_pairs"] == status["duplicate_partials"] == 0
    assert status["held_rows"] + status["held_pairs"] > 0  # the newest, until every partition has passed them


def test_batch_boundaries_restarts_and_partials_delivered_twice_change_nothing(make_env):
    first = _run(make_env(), spread=True)
    other = _run(make_env(), spread=True, batch_size=1111, twice=True, restart=True)
    assert other["counts"] == first["counts"]
    assert [a["id"] for a in other["alerts"]] == [a["id"] for a in first["alerts"]]
    assert other["windows"] == first["windows"] and len(first["windows"]) > 10
    assert other["status"][0]["duplicate_partials"] == other["status"][0]["partials"] > 0


def _partial(partition: int, seq: int, ts: list[float], partitions: int = 3) -> Partial:
    rows = np.array([[t, float(partition)] for t in ts])
    return Partial(
        model_id="hot",
        partition=partition,
        partitions=partitions,
        seq=seq,
        watermark_ts=max(ts),
        predictions=len(ts),
        rows=[RowsPart(version="1", width=2, rows=pack(rows), ts=pack(ts))],
    )


def _released_ts(merge: ModelMerge) -> list[float]:
    released = merge.release().rows
    return [] if "1" not in released else released["1"][1].tolist()


def test_the_merge_waits_for_every_partition_then_not_for_a_silent_one():
    merge = ModelMerge("hot", MergeProgress(partitions=3), [], wait_seconds=10.0)
    merge.add(_partial(0, 0, [1.0, 2.0, 3.0]))
    merge.add(_partial(1, 0, [1.5, 2.5]))
    assert _released_ts(merge) == []  # partition 2 never sent, and less than 10 s passed
    merge.add(_partial(2, 0, [0.5, 2.2]))
    assert _released_ts(merge) == [0.5, 1.0, 1.5, 2.0, 2.2]  # in event-time order, up to the slowest (2.2)
    merge.add(_partial(0, 1, [20.0]))
    merge.add(_partial(1, 1, [21.0]))
    # Partition 2 is now over 10 s behind the newest (21): silent, not waited for.
    assert _released_ts(merge) == [2.5, 3.0, 20.0]
    assert merge.waited_for() == (20.0, [2])
    merge.add(_partial(2, 1, [4.0]))  # it catches up: merged as it comes, counted late
    assert _released_ts(merge) == [4.0]
    assert merge.progress.late_rows == 1


def test_a_partial_applied_before_is_dropped():
    merge = ModelMerge("hot", MergeProgress(partitions=1), [], wait_seconds=10.0)
    assert merge.add(_partial(0, 0, [1.0], partitions=1)) == "applied"
    assert merge.add(_partial(0, 0, [1.0], partitions=1)) == "duplicate"
    assert _released_ts(merge) == [1.0]
    assert merge.progress.partials == 1 and merge.progress.duplicate_partials == 1


def test_pairs_of_one_label_time_are_released_in_prediction_time_order_whatever_their_join_order():
    # Partition 0 joined the pair predicted at 5.0 first (seq 0) and the one predicted at 4.0 a batch later
    # (seq 1: its label was read before its prediction); both labels were stamped 9.0.
    merge = ModelMerge("hot", MergeProgress(partitions=1), [], wait_seconds=10.0)
    for seq, predicted in ((0, 5.0), (1, 4.0)):
        arrays = {
            "seq": [seq],
            "prediction_ts": [predicted],
            "label_ts": [9.0],
            "error": [predicted],
            "score_loss": [np.nan],
        }
        pairs = PairsPart.of("1", "absolute_error", arrays)
        merge.add(
            Partial(
                model_id="hot",
                partition=0,
                partitions=1,
                seq=seq,
                watermark_ts=predicted,
                label_watermark_ts=9.0,
                labels=1,
                pairs=[pairs],
            )
        )
    released = merge.release().pairs["1"]
    assert [(seq, predicted) for seq, predicted, *_ in released] == [(1, 4.0), (0, 5.0)]


def test_a_partial_that_is_not_one_is_refused_in_one_line():
    with pytest.raises(InvalidEvent, match="partial format"):
        decode(b"{}", [])
    with pytest.raises(InvalidEvent, match="invalid partial"):
        decode(b'{"model_id": "hot"}', [(FORMAT_HEADER, b"1")])
    bad = _partial(0, 0, [1.0]).model_copy(
        update={"rows": [RowsPart(version="1", width=3, rows=pack([1.0]), ts=pack([1.0, 2.0]))]}
    )
    with pytest.raises(InvalidEvent, match="invalid partial"):
        decode(bad.model_dump_json().encode(), [(FORMAT_HEADER, b"1")])


def _send_spread(world: Env, pairs, rate: float | None = None) -> int:
    """Predictions and their labels keyed by event id (the client's ``spread=True``), over every partition."""
    sent, start = 0, time.monotonic()
    for prediction, label in pairs:
        for topic, event in ((world.topics.predictions, prediction), (world.topics.labels, label)):
            world.send(topic, encode(event), key=event["event_id"].encode())
            sent += 1
        if rate and sent % 500 == 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # paces the producer, not synchronisation
    world.flush()
    return sent


def _drifting_pairs():
    stream = SampleStream(seed=31, model_id="hot")
    yield from stream.events(2000)
    yield from stream.events(2000, start_index=2000, shift=1.5, concept_shift=1.0)


# Every partition carries the stream all along: none is ever silent, so the merge's order is the event-time
# order whatever the batches were (the silent partition is the unit tests' above).
NEVER_SILENT = {"UNDERTOW_SPREAD_MERGE_WAIT_SECONDS": "1000000", "UNDERTOW_BATCH_MAX_RECORDS": "300"}


def test_a_running_monitor_merges_a_spread_model_through_the_merge_topic(env):
    env.register_reference(SampleStream(seed=2, model_id="hot"), model_id="hot", window_size=500)
    with db.make_session_factory(env.engine).begin() as session:
        registry.set_spread(session, "hot", True)
    sent = _send_spread(env, _drifting_pairs())
    env.drain(env=NEVER_SILENT)
    assert env.counts() == (sent // 2, sent // 2, 0)
    partitions = env.scalar("SELECT COUNT(DISTINCT partition) FROM spread_partition_state WHERE model_id = 'hot'")
    assert partitions == 3
    status = env.status()["spread"]
    assert [p["waited_for"] for p in status[0]["partitions"]] == [True, True, True]
    assert {("undertow.drift.data", "x0"), ("undertow.drift.concept", None)} <= {
        (a["type"], a["data"].get("feature")) for a in _alerts(env)
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkills_of_the_monitor_that_merges_change_nothing(make_env):
    uninterrupted, crashed = make_env(), make_env()
    for world in (uninterrupted, crashed):
        world.register_reference(SampleStream(seed=2, model_id="hot"), model_id="hot", window_size=500)
        with db.make_session_factory(world.engine).begin() as session:
            registry.set_spread(session, "hot", True)
    sent = _send_spread(uninterrupted, _drifting_pairs())
    uninterrupted.drain(env=NEVER_SILENT)
    kills = crashed.run_with_kills(lambda: _send_spread(crashed, _drifting_pairs(), rate=400), seed=7, env=NEVER_SILENT)
    assert kills >= 3
    assert crashed.counts() == uninterrupted.counts() == (sent // 2, sent // 2, 0)
    expected = [a["id"] for a in _alerts(uninterrupted)]
    assert len(expected) >= 2
    assert [a["id"] for a in _alerts(crashed)] == expected


def _alerts(world: Env) -> list[dict]:
    with world.engine.connect() as conn:
        return [json.loads(v) for (v,) in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY event_ts, id"))]


def test_events_keyed_by_event_id_of_a_model_not_spread_are_dead_lettered_with_the_reason(make_env):
    world = make_env()
    world.register_reference(SampleStream(seed=2, model_id="hot"), model_id="hot", window_size=500)
    runner = ServiceRunner(world.settings, monitor_service(world.settings, partitions=PARTITIONS))
    topics = Topics(world.settings.topic_prefix)
    pairs = list(SampleStream(seed=7, model_id="hot").events(50))
    records = Feed(topics, spread=True).records(pairs)[:60]  # keyed by event id; the model is not spread
    records += Feed(topics, spread=False).records(pairs)[:10]  # keyed by model id: taken
    batch = build_batch(records, runner.service.parse)
    assert not batch.dead_letters  # the key is a record's own business until the stages know the model
    with runner.sessions.begin() as session:
        runner.apply(session, batch)
    runner.engine.dispose()
    assert len(batch.dead_letters) == 60
    headers = dict(batch.dead_letters[0].headers)
    assert headers["undertow.error.stage"] == b"spread"
    assert b"is not spread, so its events must be keyed by model_id" in headers["undertow.error.message"]
    assert world.counts()[0] == 10
    assert world.scalar("SELECT SUM(count) FROM dead_letter_stats") == 60


def test_switching_spread_on_and_off_keeps_every_pair(make_env):
    """Pairs are numbered per join; a join that starts after the model's pairs were numbered by another
    (spread, then not, then spread again) numbers on from the highest, never over it."""
    world = make_env()
    world.register_reference(SampleStream(seed=2, model_id="hot"), model_id="hot", window_size=500)
    runner = ServiceRunner(world.settings, monitor_service(world.settings, partitions=PARTITIONS))
    topics = Topics(world.settings.topic_prefix)
    stream, merge_offsets = SampleStream(seed=7, model_id="hot"), {}
    feeds = {False: Feed(topics, spread=False), True: Feed(topics, spread=True)}
    for phase, spread in enumerate((False, True, False, True)):
        with runner.sessions.begin() as session:
            registry.set_spread(session, "hot", spread)
        records = feeds[spread].records(list(stream.events(1000, start_index=1000 * phase)))
        for start in range(0, len(records), 500):
            for batch_records in (records[start : start + 500], None):
                if batch_records is None:
                    batch_records = _merge_records(runner, topics, merge_offsets, False)
                batch = build_batch(batch_records, runner.service.parse)
                with runner.sessions.begin() as session:
                    runner.apply(session, batch)
                assert not batch.dead_letters
    runner.engine.dispose()
    assert world.counts() == (4000, 4000, 0)
    assert world.scalar("SELECT COUNT(*) FROM labelled_pairs") == 4000
    assert world.scalar("SELECT COUNT(DISTINCT event_id) FROM labelled_pairs") == 4000
