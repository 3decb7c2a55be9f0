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
import zlib

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text

from tests.conftest import Env
from undertow.models import registry
from undertow.storage import db
from undertow.worker.dev.sample import SampleStream, encode
from undertow.worker.monitor.service import monitor_service
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


def _run(env: Env, spread: bool, batch_size: int = 700, twice: bool = False) -> dict:
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
    runner.engine.dispose()
    with env.engine.connect() as conn:
        alerts = [json.loads(row[0]) for row in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY id"))]
        counts = conn.execute(text("SELECT predictions, labels, duplicates FROM model_stats")).all()
        pairs = conn.execute(text("SELECT count(*) FROM labelled_pairs")).scalar()
        requests = conn.execute(text("SELECT count(*) FROM retrain_requests")).scalar()
        pending = conn.execute(text("SELECT count(*) FROM merge_pending")).scalar()
    return {"alerts": alerts, "counts": counts, "pairs": pairs, "requests": requests, "pending": pending}


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


def test_batch_boundaries_and_partials_delivered_twice_change_nothing(make_env):
    first = _run(make_env(), spread=True)
    other = _run(make_env(), spread=True, batch_size=1111, twice=True)
    assert other["counts"] == first["counts"]
    assert [a["id"] for a in other["alerts"]] == [a["id"] for a in first["alerts"]]
