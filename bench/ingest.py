"""Ingest throughput of the monitor, as a ratio to raw kafka-python in the same run.

One embedded Tansu broker, a predictions topic with N synthetic events (and
with ``--labels`` a labels topic with every prediction's label), read twice:

* baseline: a bare KafkaConsumer (no group, all partitions assigned, from the
  beginning) that polls and ``json.loads`` every value; rate from the first
  poll to the last record: the mean of the better of two reads before the
  monitor runs and one read after it (the machine's speed drifts);
* monitor: ``worker.monitor.Monitor`` in a background thread, exactly as the
  service runs it (validation, duplicate filter, counts, join, drift checks,
  DB-owned offsets). The main thread polls the committed counts in
  ``model_stats`` every 50 ms, so the group join is not timed:
  rate = (records - count at first sight) / (t_last - t_first).

With ``--labels`` every prediction's label follows it after a lognormal
number of records (median 200, a heavy tail to tens of thousands: some are
late), dated that many seconds after the prediction, on the co-partitioned
labels topic; rates count predictions and labels.

With ``--drift`` (the default) every model id m0..m7 gets a registered
champion with a reference (``worker.dev.sample.write_reference_csv``, other
seed, same feature count) and a baseline error before the monitor starts, so
the data-drift stage windows and evaluates every prediction and the concept
stage feeds every joined pair to its detectors; ``--no-drift`` measures the
ingest spine alone. The number of ``window_results`` rows written shows that
drift checks ran.

``--db-url`` runs the monitor on that database (PostgreSQL: a fresh schema,
dropped afterwards) instead of a new SQLite file. The run prints where the
monitor's time went, in microseconds per record (``Monitor.step_seconds``).

Absolute rates depend on the machine; the ratio monitor/raw, measured on the
same topic, broker and interpreter, is the number to compare across changes.

    .venv/bin/python bench/ingest.py [--events N] [--features F] [--partitions P] [--labels]
                                     [--no-drift] [--db-url URL]
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import platform
import resource
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from fresh_database import fresh_database
from undertow.models import registry
from undertow.models.reference import load_reference
from undertow.storage import db
from undertow.worker.dev.broker import EmbeddedBroker
from undertow.worker.dev.sample import SampleStream, encode, rfc3339, write_reference_csv
from undertow.worker.monitor.service import Monitor
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics, ensure_topics
from undertow.worker.runtime.transport import FETCH_MAX_WAIT_MS, make_admin

MODELS = 8
POLL_S = 0.05


def stream(n: int, features: int, labels: bool, seed: int = 1, models: int = MODELS):
    """The benchmark's events in the order they are written: ("prediction" | "label", event) pairs, keyed by
    model id m0..m<models-1> in turn; each label after a lognormal number of predictions (median 200)."""
    rng = np.random.default_rng(seed)
    due: list[tuple[int, int, dict]] = []  # (prediction index it follows, tiebreak, label event)
    for i, (prediction, label) in enumerate(SampleStream(n_features=features, seed=seed).events(n)):
        prediction["model_id"] = label["model_id"] = f"m{i % models}"
        yield "prediction", prediction
        if labels:
            delay = int(rng.lognormal(mean=math.log(200), sigma=1.5))
            label["ts"] = rfc3339(datetime.fromisoformat(prediction["ts"]) + timedelta(seconds=delay))
            heapq.heappush(due, (i + delay, i, label))
        while due and (due[0][0] <= i or i == n - 1):
            yield "label", heapq.heappop(due)[2]


def produce(
    servers: str, topics: Topics, n: int, features: int, labels: bool, seed: int = 1, models: int = MODELS
) -> int:
    """Write the stream (``stream``) to the topics; the number of records written."""
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=20, batch_size=256 * 1024)
    written = 0
    for kind, event in stream(n, features, labels, seed, models):
        topic = topics.predictions if kind == "prediction" else topics.labels
        producer.send(topic, key=event["model_id"].encode(), value=encode(event))
        written += 1
    producer.flush()
    producer.close()
    return written


def register_references(db_url: str, workdir: Path, features: int, models: int = MODELS) -> None:
    """A champion version with a reference profile for every model id the producer writes to."""
    csv_path = workdir / "reference.csv"
    write_reference_csv(SampleStream(n_features=features, seed=2), csv_path)
    reference = load_reference(csv_path, target="target", prediction="prediction")
    engine = db.make_engine(db_url)
    db.migrate(engine)
    sessions = db.make_session_factory(engine)
    with sessions.begin() as session:
        for i in range(models):
            registry.register(
                session,
                model_id=f"m{i}",
                profile=reference.profile,
                artifacts_dir=workdir / "artifacts",
                baseline_error=reference.baseline_error,
                error_sample=reference.error_sample,
                data_sha256=reference.data_sha256,
            )
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


def raw_consume(servers: str, topics: list[str], partitions: int, n: int, max_records: int) -> float:
    """Records/s of a bare consumer reading and decoding the whole topics, ``max_records`` per poll."""
    # Same fetch settings and poll size as the monitor's consumer, so only the monitor's own work differs.
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=max_records,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
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


def monitor_rate(settings, partitions: int, n: int) -> tuple[float, int, float, dict[str, float]]:
    """Records/s of the monitor from its first committed batch to its last; records and seconds timed,
    and the monitor's seconds per step in that time."""
    monitor = Monitor(settings, partitions=partitions)
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", monitor.run(until_idle=2.0)), daemon=True)
    thread.start()
    # A plain engine: the library's SQLite engine opens BEGIN IMMEDIATE, which would block the writer.
    reader = create_engine(
        settings.db_url, connect_args={"timeout": 30} if settings.db_url.startswith("sqlite") else {}
    )
    first, deadline = None, time.monotonic() + 600
    try:
        while True:
            now = time.perf_counter()
            try:
                with reader.connect() as conn:
                    done = int(
                        conn.execute(text("SELECT COALESCE(SUM(predictions + labels), 0) FROM model_stats")).scalar()
                    )
            except OperationalError:  # no such table yet: the monitor has not migrated
                done = 0
            if done and first is None:
                first = (now, done)
                steps_first = dict(getattr(monitor, "step_seconds", {}))  # absent before the timings existed
                batches_first = getattr(monitor, "batches", 0)
            if done >= n:
                steps = {k: v - steps_first.get(k, 0.0) for k, v in getattr(monitor, "step_seconds", {}).items()}
                steps["batches"] = getattr(monitor, "batches", 0) - batches_first
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
    return (n - n_first) / (now - t_first), n - n_first, now - t_first, steps


def per_record(step_seconds: dict[str, float], records: int) -> list[tuple[str, str]]:
    """Microseconds per record by step (empty for a monitor without ``step_seconds``); the checkpoint's own
    share is what its stages did not use."""
    step_seconds = dict(step_seconds)
    batches = step_seconds.pop("batches", 0)
    stages = {k: v for k, v in step_seconds.items() if k not in ("poll", "intake", "validate", "checkpoint")}
    rows = [(name, step_seconds.get(name, 0.0)) for name in ("poll", "intake", "validate")]
    rows += sorted(stages.items())
    rows.append(("transaction + offsets + publish", step_seconds.get("checkpoint", 0.0) - sum(stages.values())))
    total = sum(seconds for _, seconds in rows)
    return [(f"  us/record {name}", f"{seconds / records * 1e6:.1f}") for name, seconds in rows] + [
        ("  us/record total", f"{total / records * 1e6:.1f}"),
        ("  records per batch", f"{records / batches:,.0f}" if batches else "-"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="predictions")
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--labels", action="store_true", help="every prediction gets its label, some late")
    parser.add_argument(
        "--drift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register references so drift checks run (default: on)",
    )
    parser.add_argument("--db-url", help="the monitor's database (default: a new SQLite file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with (
        tempfile.TemporaryDirectory(prefix="undertow-bench-") as tmp,
        EmbeddedBroker() as broker,
        fresh_database(args.db_url, Path(tmp)) as db_url,
    ):
        run_id = uuid.uuid4().hex[:8]
        settings = load_settings(
            {
                "kafka_bootstrap_servers": broker.bootstrap_servers,
                "db_url": db_url,
                "topic_prefix": f"bench-{run_id}.",
                "group_id": f"bench-{run_id}",
            },
            MonitorSettings,
        )
        topics = Topics(settings.topic_prefix)
        admin = make_admin(settings)
        ensure_topics(admin, topics, args.partitions)
        admin.close()
        records = produce(broker.bootstrap_servers, topics, args.events, args.features, args.labels)
        inputs = [topics.predictions, topics.labels] if args.labels else [topics.predictions]
        # Before the monitor the better of two reads (the first can be slowed by the broker's cold start),
        # and one read after it: this machine's speed drifts by 10-20 % within a minute, so the baseline
        # is their mean, bracketing the monitor's run.
        poll = settings.batch_max_records
        raw_before = max(
            raw_consume(broker.bootstrap_servers, inputs, args.partitions, records, poll) for _ in range(2)
        )
        if args.drift:
            register_references(db_url, Path(tmp), args.features)
        mon, timed, window, steps = monitor_rate(settings, args.partitions, records)
        raw_after = raw_consume(broker.bootstrap_servers, inputs, args.partitions, records, poll)
        raw = (raw_before + raw_after) / 2
        window_rows, alerts = drift_output(db_url)

    rows = [
        ("predictions", f"{args.events}"),
        ("labels", f"{records - args.events}"),
        ("features", f"{args.features}"),
        ("partitions", f"{args.partitions}"),
        ("drift checks", "on" if args.drift else "off"),
        ("database", make_url(db_url).get_backend_name()),
        ("python", platform.python_version()),
        ("raw records/s before, after", f"{raw_before:,.0f}, {raw_after:,.0f}"),
        ("raw consume+decode records/s", f"{raw:,.0f}"),
        ("monitor records/s", f"{mon:,.0f}"),
        ("monitor timed records / s", f"{timed} / {window:.2f}"),
        ("ratio monitor/raw", f"{mon / raw:.3f}"),
        ("window_results rows", f"{window_rows}"),
        ("drift alerts", f"{alerts}"),
    ]
    rows += per_record(steps, timed) if steps else []
    rows.append(("  us/record wall (1 / rate)", f"{1e6 / mon:.1f}"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rows.append(("peak RSS MiB", f"{peak / (1024**2 if sys.platform == 'darwin' else 1024):.1f}"))
    for key, value in rows:
        print(f"{key:<34}  {value:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
