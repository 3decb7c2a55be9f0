"""The monitor's own work per record, without a broker: validation, stages and the transaction.

``bench/ingest.py``'s stream (same events, same label delays) as in-memory
``ConsumerRecord`` objects goes through ``build_batch`` and the monitor's
stages in batches of ``--batch`` records, one transaction per batch that
also advances the offsets (``Checkpoint.commit``'s database step; no Kafka
commit, no outbox publish), on a new SQLite file or ``--db-url``. Champions
with references are registered first, so the drift checks run.

Baseline, in the same run: ``json.loads`` of the same record values, the
decoding a bare consumer does. The ratio baseline/monitor is what the
broker-free part of ``bench/ingest.py``'s ratio would be. Without the
broker and its consumer (whose speed drifts with the machine's) repeated
runs agree within about 2 %, where ``bench/ingest.py`` swings by 10 %:
this is the benchmark to compare two versions of a stage with
(alternate the runs).

    .venv/bin/python bench/stages.py [--events N] [--features F] [--labels] [--batch B] [--db-url URL]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy.engine import make_url

from fresh_database import fresh_database
from ingest import register_references, stream
from undertow.storage import repo
from undertow.worker.dev.sample import encode
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import ServiceRunner
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics

PARTITIONS = 3
NOW = 2_000_000_000  # the parser's clock: every event is in its past


def records(topics: Topics, n: int, features: int, labels: bool) -> list[ConsumerRecord]:
    """The stream as consumer records, partitioned by model id as the producer's key would place them."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for kind, event in stream(n, features, labels):
        topic = topics.predictions if kind == "prediction" else topics.labels
        partition = int(event["model_id"][1:]) % PARTITIONS
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        key, value = event["model_id"].encode(), encode(event)
        out.append(ConsumerRecord(topic, partition, -1, offset, 0, 0, key, value, [], None, len(key), len(value), -1))
    return out


def decode_rate(batch_records: list[list[ConsumerRecord]]) -> float:
    started = time.perf_counter()
    for part in batch_records:
        for record in part:
            json.loads(record.value)
    return sum(map(len, batch_records)) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="predictions")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--labels", action="store_true", help="every prediction gets its label, some late")
    parser.add_argument("--batch", type=int, default=5000, help="records per batch (the service's default)")
    parser.add_argument("--db-url", help="the monitor's database (default: a new SQLite file)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="undertow-bench-") as tmp, fresh_database(args.db_url, Path(tmp)) as db_url:
        settings = load_settings(
            {"kafka_bootstrap_servers": "127.0.0.1:9", "db_url": db_url, "topic_prefix": "bench."}, MonitorSettings
        )
        register_references(db_url, Path(tmp), args.features)
        runner = ServiceRunner(settings, monitor_service(settings, PARTITIONS, clock=lambda: NOW))
        data = records(Topics(settings.topic_prefix), args.events, args.features, args.labels)
        batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
        group = "bench-stages"
        expected: dict = {}
        gc.set_threshold(100_000, 20, 20)  # as the service runs
        gc.freeze()
        raw_before = decode_rate(batches)
        started = time.perf_counter()
        for part in batches:
            at = time.perf_counter()
            batch = build_batch(part, runner.service.parse)
            runner.step_seconds["validate"] += time.perf_counter() - at
            at = time.perf_counter()
            with runner.sessions.begin() as session:
                repo.advance_offsets(
                    session, group, {key: (expected.get(key), offset) for key, offset in batch.next_offsets.items()}, {}
                )
                runner.apply(session, batch)
            runner.step_seconds["checkpoint"] += time.perf_counter() - at
            expected.update(batch.next_offsets)
        monitor = len(data) / (time.perf_counter() - started)
        raw = (raw_before + decode_rate(batches)) / 2
        runner.engine.dispose()

    stage_seconds = {k: v for k, v in runner.step_seconds.items() if k not in ("validate", "checkpoint")}
    rows = [
        ("records", f"{len(data)} ({args.events} predictions)"),
        ("features", str(args.features)),
        ("batch", str(args.batch)),
        ("database", make_url(db_url).get_backend_name()),
        ("json.loads records/s", f"{raw:,.0f}"),
        ("monitor records/s", f"{monitor:,.0f}"),
        ("ratio monitor/json.loads", f"{monitor / raw:.3f}"),
        ("  us/record validate", f"{runner.step_seconds['validate'] / len(data) * 1e6:.2f}"),
    ]
    rows += [
        (f"  us/record {name}", f"{seconds / len(data) * 1e6:.2f}") for name, seconds in sorted(stage_seconds.items())
    ]
    rows += [
        (
            "  us/record transaction + offsets",
            f"{(runner.step_seconds['checkpoint'] - sum(stage_seconds.values())) / len(data) * 1e6:.2f}",
        ),
        ("  us/record wall (1 / rate)", f"{1e6 / monitor:.2f}"),
    ]
    for key, value in rows:
        print(f"{key:<34}  {value:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
