"""Ingest throughput of the monitor, as a ratio to raw kafka-python in the same run.

One embedded Tansu broker, one predictions topic with N synthetic events,
read twice:

* baseline: a bare KafkaConsumer (no group, all partitions assigned, from the
  beginning) that polls and ``json.loads`` every value; rate from the first
  poll to the last record;
* monitor: ``worker.monitor.Monitor`` in a background thread, exactly as the
  service runs it (validation, duplicate filter, counts, DB-owned offsets).
  The main thread polls ``SUM(model_stats.predictions)`` every 50 ms, so the
  group join is not timed: rate = (N - count at first sight) / (t_last - t_first).

With ``--drift`` (the default) every model id m0..m7 gets a registered
reference (``worker.sample.write_reference_csv``, other seed, same feature
count) before the monitor starts, so the data-drift stage windows and
evaluates every prediction; ``--no-drift`` measures the ingest spine alone.
The number of ``window_results`` rows written shows that drift checks ran.

Absolute rates depend on the machine; the ratio monitor/raw, measured on the
same topic, broker and interpreter, is the number to compare across changes.

    .venv/bin/python bench/ingest.py [--events N] [--features F] [--partitions P] [--no-drift]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from models import registry
from models.reference import load_reference
from storage import db
from worker.dev.broker import EmbeddedBroker
from worker.dev.sample import SampleStream, encode, write_reference_csv
from worker.monitor.service import Monitor
from worker.runtime.settings import MonitorSettings, load_settings
from worker.runtime.topics import Topics, ensure_topics
from worker.runtime.transport import FETCH_MAX_WAIT_MS, make_admin

MODELS = 8
POLL_S = 0.05


def produce(servers: str, topic: str, n: int, features: int) -> None:
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=20, batch_size=256 * 1024)
    for i, (prediction, _label) in enumerate(SampleStream(n_features=features, seed=1).events(n)):
        prediction["model_id"] = model_id = f"m{i % MODELS}"
        producer.send(topic, key=model_id.encode(), value=encode(prediction))
    producer.flush()
    producer.close()


def register_references(db_url: str, workdir: Path, features: int) -> None:
    """A champion version with a reference profile for every model id the producer writes to."""
    csv_path = workdir / "reference.csv"
    write_reference_csv(SampleStream(n_features=features, seed=2), csv_path)
    reference = load_reference(csv_path, target="target", prediction="prediction")
    engine = db.make_engine(db_url)
    db.migrate(engine)
    sessions = db.make_session_factory(engine)
    with sessions.begin() as session:
        for i in range(MODELS):
            registry.register(session, model_id=f"m{i}", profile=reference.profile,
                              artifacts_dir=workdir / "artifacts", baseline_error=reference.baseline_error, error_sample=reference.error_sample,
                              data_sha256=reference.data_sha256)
    engine.dispose()


def drift_output(db_url: str) -> tuple[int, int]:
    """Rows in window_results and alerts after the run."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            windows = conn.execute(text("SELECT COUNT(*) FROM window_results")).scalar()
            alerts = conn.execute(text("SELECT COUNT(*) FROM alerts")).scalar()
    finally:
        engine.dispose()
    return windows, alerts


def raw_consume(servers: str, topic: str, partitions: int, n: int) -> float:
    """Records/s of a bare consumer reading and decoding the whole topic."""
    # Same fetch settings as the monitor's consumer, so only the monitor's own work differs.
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
                             max_poll_records=2000, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    read, started = 0, time.perf_counter()
    try:
        while read < n:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    json.loads(record.value)
                read += len(records)
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"raw consumer read only {read} of {n} records")
        return read / (time.perf_counter() - started)
    finally:
        consumer.close()


def monitor_rate(settings, partitions: int, n: int) -> tuple[float, int, float]:
    """Records/s of the monitor from its first committed batch to its last; records and seconds timed."""
    monitor = Monitor(settings, partitions=partitions)
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", monitor.run(until_idle=2.0)), daemon=True)
    thread.start()
    # A plain engine: the library's SQLite engine opens BEGIN IMMEDIATE, which would block the writer.
    reader = create_engine(settings.db_url, connect_args={"timeout": 30})
    first, deadline = None, time.monotonic() + 600
    try:
        while True:
            now = time.perf_counter()
            try:
                with reader.connect() as conn:
                    done = conn.execute(text("SELECT COALESCE(SUM(predictions), 0) FROM model_stats")).scalar()
            except OperationalError:  # no such table yet: the monitor has not migrated
                done = 0
            if done and first is None:
                first = (now, done)
            if done >= n:
                break
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"monitor stopped at {done} of {n} records (rc={result.get('rc')})")
            time.sleep(POLL_S)
    finally:
        monitor.request_stop()
        thread.join(timeout=30)
        reader.dispose()
    t_first, n_first = first
    if now == t_first:
        raise RuntimeError("all records were committed before the first observation: use more --events")
    return (n - n_first) / (now - t_first), n - n_first, now - t_first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--drift", action=argparse.BooleanOptionalAction, default=True,
                        help="register references so drift checks run (default: on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="undertow-bench-") as tmp, EmbeddedBroker() as broker:
        run_id = uuid.uuid4().hex[:8]
        settings = load_settings({
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "db_url": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "topic_prefix": f"bench-{run_id}.",
            "group_id": f"bench-{run_id}",
        }, MonitorSettings)
        topics = Topics(settings.topic_prefix)
        admin = make_admin(settings)
        ensure_topics(admin, topics, args.partitions)
        admin.close()
        produce(broker.bootstrap_servers, topics.predictions, args.events, args.features)
        raw = raw_consume(broker.bootstrap_servers, topics.predictions, args.partitions, args.events)
        if args.drift:
            register_references(settings.db_url, Path(tmp), args.features)
        mon, timed, window = monitor_rate(settings, args.partitions, args.events)
        window_rows, alerts = drift_output(settings.db_url)

    rows = [("events", f"{args.events}"), ("features", f"{args.features}"),
            ("partitions", f"{args.partitions}"), ("drift checks", "on" if args.drift else "off"),
            ("python", platform.python_version()),
            ("raw consume+decode records/s", f"{raw:,.0f}"), ("monitor records/s", f"{mon:,.0f}"),
            ("monitor timed records / s", f"{timed} / {window:.2f}"),
            ("ratio monitor/raw", f"{mon / raw:.3f}"),
            ("window_results rows", f"{window_rows}"), ("drift alerts", f"{alerts}")]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rows.append(("peak RSS MiB", f"{peak / (1024 ** 2 if sys.platform == 'darwin' else 1024):.1f}"))
    for key, value in rows:
        print(f"{key:<28}  {value:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
