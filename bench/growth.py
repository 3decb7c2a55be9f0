"""Database growth over a long stream with the default retention: bytes per million events at each million.

A production-like stream goes through the monitor's stages without a broker,
as ``bench/stages.py`` drives them (validation, duplicate filter and counts,
the join, data drift, concept drift; one transaction per batch that also
advances the offsets; the outbox is emptied after each batch, as the relay
does after publishing): ``--models`` models with registered champions and
references, ``--features`` numeric features and a categorical one,
predictions and their labels on co-partitioned topics (6 models: two per
partition). Events are predictions and labels together: ``--events
10000000`` is 5.13 M predictions and 4.87 M labels.

Time is compressed: the predictions span ``--days`` of event time (120 by
default, so the 30-day windows and the 90-day alerts age out within the run).
Labels come back after a lognormal number of predictions (median 200, a
heavy tail up to days of event time); ``--unlabelled`` of the predictions
never get one (they expire from the join after its TTL). Every
``--drift-every-days`` one model in turn drifts for a day (an input moves by
one standard deviation and the labels by two): data and concept alerts,
episodes that start and end, retrain requests (no trainer runs here, so the
first stays open).

The retention runs as the services run it (``ServiceRunner.prune_if_due``:
``Pruner.prune`` with at most ``PRUNE_CHUNKS_PER_TURN`` chunks of
``CHUNK_ROWS``, again at the next turn while a backlog is left) every
``--prune-every`` events, the defaults' 5 minutes at about 800 events/s.
After each million events the table prints the database size (SQLite: the
file and its WAL; PostgreSQL: ``pg_total_relation_size`` of Undertow's
tables in the run's own schema, dropped afterwards) and the rows of the
tables that grow with the stream. On a PostgreSQL server with autovacuum off
(this machine's test server) the run VACUUMs its tables after each prune,
as autovacuum would; without either, deleted rows' space is never reused
and the tables bloat whatever the retention.

    .venv/bin/python bench/growth.py [--events 10000000] [--db-url URL] [--models 6] [--days 120]
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fresh_database import fresh_database
from ingest import register_references
from undertow.storage import repo, retention
from undertow.storage.tables import Base
from undertow.worker.dev.sample import START, SampleStream, encode, rfc3339
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import PRUNE_CHUNKS_PER_TURN, ServiceRunner
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics

PARTITIONS = 3
NOW = 2_000_000_000  # the parser's clock: every event is in its past
CHUNK = 20_000  # predictions generated at a time
GROWING = (
    "window_results",
    "alerts",
    "retrain_requests",
    "labelled_pairs",
    "join_pending",
    "seen_blocks",
    "outbox",
    "partition_gaps",
    "training_runs",
)
SHORT = {
    "window_results": "windows",
    "alerts": "alerts",
    "retrain_requests": "requests",
    "labelled_pairs": "pairs",
    "join_pending": "pending",
    "seen_blocks": "seen",
    "outbox": "outbox",
    "partition_gaps": "gaps",
    "training_runs": "runs",
}


class Stream:
    """Predictions and labels in arrival order, as (kind, event) pairs."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Each prediction brings its label, but for the unlabelled share: --events counts both.
        self.predictions = round(args.events / (2 - args.unlabelled))
        self.step = args.days * 86_400 / self.predictions  # event-time seconds between predictions
        self.rng = np.random.default_rng(args.seed)
        self.sample = SampleStream(n_features=args.features, seed=args.seed)

    def _drifting(self, index: int) -> tuple[int, bool]:
        """(model in drift, whether prediction ``index`` falls in a drift day)."""
        day = index * self.step / 86_400
        period = int(day // self.args.drift_every_days)
        in_drift = period > 0 and day - period * self.args.drift_every_days < 1
        return period % self.args.models, in_drift

    def events(self) -> Iterator[tuple[str, dict]]:
        due: list[tuple[int, int, dict]] = []
        models = self.args.models
        for first in range(0, self.predictions, CHUNK):
            n = min(CHUNK, self.predictions - first)
            drifting, in_drift = self._drifting(first)
            x, regions, prediction, label = self.sample.rows(n)
            delays = self.rng.lognormal(mean=math.log(200), sigma=2.0, size=n).astype(np.int64)
            never = self.rng.random(n) < self.args.unlabelled
            for j in range(n):
                i = first + j
                model = i % models
                shifted = in_drift and model == drifting
                features = {f"x{k}": round(float(v), 6) for k, v in enumerate(x[j])}
                if shifted:
                    features["x0"] = round(features["x0"] + 1.0, 6)
                features["region"] = str(regions[j])
                ts = START + timedelta(seconds=i * self.step)
                event_id = f"e{i}"
                yield (
                    "prediction",
                    {
                        "event_id": event_id,
                        "model_id": f"m{model}",
                        "ts": rfc3339(ts),
                        "features": features,
                        "prediction": round(float(prediction[j]), 6),
                    },
                )
                if not never[j]:
                    delay = int(delays[j])
                    value = float(label[j]) + (2.0 if shifted else 0.0)
                    labelled = {
                        "event_id": event_id,
                        "model_id": f"m{model}",
                        "ts": rfc3339(ts + timedelta(seconds=(delay + 1) * self.step)),
                        "label": round(value, 6),
                    }
                    heapq.heappush(due, (i + delay, i, labelled))
                while due and due[0][0] <= i:
                    yield "label", heapq.heappop(due)[2]
        while due:
            yield "label", heapq.heappop(due)[2]


def batches(stream: Stream, topics: Topics, size: int) -> Iterator[list[ConsumerRecord]]:
    offsets: dict[tuple[str, int], int] = {}
    part: list[ConsumerRecord] = []
    for kind, event in stream.events():
        topic = topics.predictions if kind == "prediction" else topics.labels
        partition = int(event["model_id"][1:]) % PARTITIONS
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        key, value = event["model_id"].encode(), encode(event)
        part.append(ConsumerRecord(topic, partition, -1, offset, 0, 0, key, value, [], None, len(key), len(value), -1))
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def measure(runner: ServiceRunner) -> tuple[int, dict[str, int]]:
    with runner.sessions() as session:
        return retention.database_size(session) or 0, retention.table_rows(session, GROWING)


def table_bytes(session) -> dict[str, int]:
    """Bytes of each table with its indexes: SQLite's dbstat (pages of the table and of each index on it),
    PostgreSQL's pg_total_relation_size."""
    if session.get_bind().dialect.name == "sqlite":
        rows = session.execute(
            text(
                "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
                "GROUP BY m.tbl_name"
            )
        )
    else:
        rows = session.execute(
            text(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "WHERE c.relkind = 'r' AND c.relnamespace = to_regnamespace(current_schema())"
            )
        )
    return {name: int(size) for name, size in rows}


def print_table_bytes(runner: ServiceRunner) -> None:
    with runner.sessions() as session:
        sizes, rows = table_bytes(session), retention.table_rows(session, Base.metadata.tables)
    print(f"{'table':<24} {'rows':>10} {'bytes':>14} {'bytes/row':>10}")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        count = rows.get(name, 0)
        per_row = f"{size / count:,.0f}" if count else "-"
        print(f"{name:<24} {count:>10,} {size:>14,} {per_row:>10}")


def vacuum(runner: ServiceRunner) -> None:
    """PostgreSQL with autovacuum off (as on the benchmark's server): VACUUM the schema's tables, as autovacuum
    would, so that deleted rows' space is reused. SQLite reuses free pages without it."""
    if runner.engine.dialect.name != "postgresql":
        return
    with runner.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.execute(text("SHOW autovacuum")).scalar() == "on":
            return
        for table in Base.metadata.tables:
            conn.execute(text(f'VACUUM "{table}"'))


def prune(runner: ServiceRunner) -> dict[str, int]:
    """As the service's prune step does, turn after turn until nothing due is left."""
    total: dict[str, int] = {}
    finished = False
    while not finished:
        deleted, finished = runner.pruner.prune(PRUNE_CHUNKS_PER_TURN)
        for table, rows in deleted.items():
            total[table] = total.get(table, 0) + rows
    return total


def print_header() -> None:
    names = "".join(f"{SHORT[t]:>10}" for t in GROWING)
    print(f"{'events (M)':>10} {'DB bytes':>14} {'bytes/M events':>15} {'event day':>9} {'s':>6}{names}", flush=True)


def print_row(events: int, size: int, rows: dict[str, int], day: float, seconds: float) -> None:
    per_million = size / (events / 1e6)
    cells = "".join(f"{rows[t]:>10,}" for t in GROWING)
    print(f"{events / 1e6:>10.2f} {size:>14,} {per_million:>15,.0f} {day:>9.1f} {seconds:>6.0f}{cells}", flush=True)


def run(args: argparse.Namespace, db_url: str, workdir: Path) -> None:
    settings = load_settings(
        {"kafka_bootstrap_servers": "127.0.0.1:9", "db_url": db_url, "topic_prefix": "bench."}, MonitorSettings
    )
    register_references(db_url, workdir, args.features, args.models)
    runner = ServiceRunner(settings, monitor_service(settings, PARTITIONS, clock=lambda: NOW))
    stream = Stream(args)
    group, expected = "bench-growth", {}
    events = since_prune = 0
    next_report = args.report_every
    deleted: dict[str, int] = {}
    gc.set_threshold(100_000, 20, 20)  # as the service runs
    gc.freeze()
    started = time.perf_counter()
    print(f"database: {make_url(db_url).get_backend_name()}, retention: {settings.retention()}")
    print_header()
    printed = predictions = 0
    topics = Topics(settings.topic_prefix)
    for part in batches(stream, topics, args.batch):
        batch = build_batch(part, runner.service.parse)
        with runner.sessions.begin() as session:
            repo.advance_offsets(
                session, group, {key: (expected.get(key), offset) for key, offset in batch.next_offsets.items()}, {}
            )
            runner.apply(session, batch)
        with runner.sessions.begin() as session:  # the relay: published, then deleted
            repo.delete_outbox(session, [m.id for m in repo.pending_outbox(session, 100_000)])
        expected.update(batch.next_offsets)
        runner.garbage.processed(len(part))
        events += len(part)
        predictions += sum(1 for record in part if record.topic == topics.predictions)
        since_prune += len(part)
        if since_prune >= args.prune_every:
            for table, rows in prune(runner).items():
                deleted[table] = deleted.get(table, 0) + rows
            vacuum(runner)
            since_prune = 0
        if events >= next_report:
            size, rows = measure(runner)
            day = predictions * stream.step / 86_400  # the newest prediction's event time, in days from the start
            print_row(events, size, rows, day, time.perf_counter() - started)
            next_report += args.report_every
            printed = events
    if printed != events:  # the stream's last events, short of a whole step
        size, rows = measure(runner)
        print_row(events, size, rows, args.days, time.perf_counter() - started)
    print_table_bytes(runner)
    runner.engine.dispose()
    print("deleted by retention: " + ", ".join(f"{t} {n:,}" for t, n in deleted.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="predictions and labels together")
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--days", type=float, default=120.0, help="event time the predictions span")
    parser.add_argument("--drift-every-days", type=float, default=10.0)
    parser.add_argument("--unlabelled", type=float, default=0.05, help="share of predictions never labelled")
    parser.add_argument("--batch", type=int, default=5000, help="records per batch (the service's default)")
    parser.add_argument("--prune-every", type=int, default=250_000, help="events between two prunes")
    parser.add_argument("--report-every", type=int, default=1_000_000, help="events between two table rows")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db-url", help="the monitor's database (default: a new SQLite file)")
    args = parser.parse_args(argv)
    if args.events < 2 or args.models < 1 or args.days <= 0 or args.report_every < 1:
        parser.error("--events at least 2, --models at least 1, --days and --report-every above 0")
    with tempfile.TemporaryDirectory(prefix="undertow-growth-") as tmp, fresh_database(args.db_url, Path(tmp)) as url:
        run(args, url, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
