"""Bounded state: table rows, SQLite file size and process memory as the stream grows.

Runs the monitor's real processing stages without Kafka: synthetic
``ConsumerRecord`` objects for predictions and labels of one model
(``worker.sample.SampleStream``, one event per second of event time) go
through ``worker.batch.build_batch`` and the stages exactly as
``worker.monitor.Monitor.__init__`` builds them (``IngestStage``,
``DataDriftStage``, ``ConceptStage`` sharing one ``RetrainPolicy``), one
``with sessions.begin()`` transaction per batch of 2,000 records, offsets
advanced in the same transaction as ``Checkpoint.commit`` does, on a SQLite
file. A champion with a reference profile and baseline error is registered
first (as ``tests/conftest.py`` ``Env.register_reference``).

Labels arrive 2,000 predictions after their prediction (label event time =
prediction time + 1 h, as SampleStream writes them); 5% of the labels never
arrive, so their predictions must leave the join buffer by expiry.

Bounds exercised (small settings, so they bind within the run):

* ``seen_blocks`` (and the duplicate filters in memory): duplicate horizon in
  records per source partition, one block per batch and partition;
* ``join_pending`` (and the join buffer's index in memory): join TTL in event
  time, and the join_max_pending cap;
* ``labelled_pairs``: pairs_retention;
* ``drift_state`` / ``concept_state``: one row per model version.

``window_results`` grows by design (one row per closed window and feature:
the drift time series), as do ``alerts``; the ``outbox`` is drained by the
relay after every commit in the service, which does not run here.

    .venv/bin/python bench/memory.py [--predictions N] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text

from undertow.models import registry
from undertow.models.reference import load_reference
from undertow.storage import db, repo
from undertow.worker.dev.sample import SampleStream, encode, write_reference_csv
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import GarbagePacer
from undertow.worker.runtime.settings import MonitorSettings
from undertow.worker.runtime.topics import Topics

MODEL_ID = "housing"
BATCH_RECORDS = 2000
LABEL_LAG = 2000  # predictions between a prediction and its label
LOST_SHARE = 0.05  # labels that never arrive
CHUNK = 10_000  # predictions drawn from SampleStream at a time
DUPLICATE_HORIZON = 200_000
JOIN_TTL_SECONDS = 3 * 3600
JOIN_MAX_PENDING = 50_000
PAIRS_RETENTION = 100_000
CHECKPOINTS = (100_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000, 2_500_000)
TABLES = (
    "seen_blocks",
    "join_pending",
    "labelled_pairs",
    "window_results",
    "drift_state",
    "concept_state",
    "outbox",
    "alerts",
    "retrain_requests",
)
GROUP = "bench-memory"


def records(n: int, topics: Topics, seed: int):
    """Prediction and label records in arrival order; yields (record, is_prediction)."""
    stream = SampleStream(seed=seed, model_id=MODEL_ID)
    rng = np.random.default_rng(seed + 1)
    key = MODEL_ID.encode()
    offsets = {topics.predictions: 0, topics.labels: 0}
    waiting: deque[bytes | None] = deque()

    def record(topic: str, value: bytes) -> ConsumerRecord:
        offset = offsets[topic]
        offsets[topic] += 1
        return ConsumerRecord(topic, 0, -1, offset, 0, 0, key, value, [], None, len(key), len(value), -1)

    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        lost = rng.random(size) < LOST_SHARE
        for i, (prediction, label) in enumerate(stream.events(size, start_index=start)):
            yield record(topics.predictions, encode(prediction)), True
            waiting.append(None if lost[i] else encode(label))
            if len(waiting) > LABEL_LAG:
                value = waiting.popleft()
                if value is not None:
                    yield record(topics.labels, value), False
    while waiting:  # the last labels, after the last prediction
        value = waiting.popleft()
        if value is not None:
            yield record(topics.labels, value), False


def register_reference(sessions, workdir: Path) -> None:
    """A champion profiled from the same (pre-drift) distribution, other seed; as Env.register_reference."""
    path = workdir / "reference.csv"
    write_reference_csv(SampleStream(seed=2, model_id=MODEL_ID), path, 5000)
    reference = load_reference(path, target="target", prediction="prediction")
    with sessions.begin() as session:
        registry.register(
            session,
            model_id=MODEL_ID,
            profile=reference.profile,
            artifacts_dir=workdir,
            drift_config=registry.DriftConfig(),
            baseline_error=reference.baseline_error,
            error_sample=reference.error_sample,
            data_sha256=reference.data_sha256,
        )


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def malloc_trim() -> bool:
    """Return freed heap pages to the OS (glibc), so RSS shows what is still in use."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


_FORCED = [0]  # full collections forced by measure()


def measure(engine, db_path: Path, predictions: int, labels: int, seconds: float, traced: bool, collect: bool) -> dict:
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}
        stats = conn.execute(
            text(
                "SELECT pending_predictions, pending_labels, joined, expired_predictions, "
                "expired_labels, evicted_predictions, evicted_labels FROM join_stats"
            )
        ).first()
        pages = conn.execute(text("PRAGMA page_count")).scalar()
        free = conn.execute(text("PRAGMA freelist_count")).scalar()
        concept = conn.execute(text("SELECT labels, episodes, in_episode, silenced_alarms FROM concept_state")).first()
        alerts = [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT type, COALESCE(feature, json_extract(cloudevent, '$.data.detector')), "
                    "json_extract(cloudevent, '$.data.label_count'), json_extract(cloudevent, '$.data.value'), "
                    "json_extract(cloudevent, '$.data.threshold'), json_extract(cloudevent, '$.data.episode') "
                    "FROM alerts ORDER BY event_ts"
                )
            )
        ]
    rss, objects = rss_mib(), len(gc.get_objects())
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if traced else None
    collections = [g["collections"] for g in gc.get_stats()]
    collections[2] -= _FORCED[0]  # the collector's own full collections, not ours
    rss_after = objects_after = traced_after = None
    if collect:
        # Then the same after a full collection (cyclic garbage waiting in generation 2) and malloc_trim.
        gc.collect()
        _FORCED[0] += 1
        malloc_trim()
        rss_after, objects_after = rss_mib(), len(gc.get_objects())
        traced_after = tracemalloc.get_traced_memory()[0] / 2**20 if traced is not None else None
    wal = Path(f"{db_path}-wal")
    return {
        "predictions": predictions,
        "labels": labels,
        "seconds": seconds,
        **counts,
        "join": stats._asdict() if stats else {},
        "concept": tuple(concept) if concept else None,
        "db_mib": db_path.stat().st_size / 2**20,
        "wal_mib": wal.stat().st_size / 2**20 if wal.exists() else 0.0,
        "free_pages": free,
        "pages": pages,
        "rss_mib": rss,
        "rss_after_mib": rss_after,
        "alerts_list": alerts,
        "traced_mib": traced,
        "traced_after_mib": traced_after,
        "objects": objects,
        "objects_after": objects_after,
        "collections": collections,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also report Python heap (tracemalloc current); slows the run"
    )
    parser.add_argument(
        "--collect-at-checkpoints",
        action="store_true",
        help="force gc.collect() + malloc_trim at every checkpoint, not only at the end",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    gc.set_threshold(100_000, 20, 20)  # as Monitor.run
    checkpoints = sorted({c for c in CHECKPOINTS if c < args.predictions} | {args.predictions})
    settings = MonitorSettings(
        duplicate_horizon=DUPLICATE_HORIZON,
        join_ttl_seconds=JOIN_TTL_SECONDS,
        join_max_pending=JOIN_MAX_PENDING,
        pairs_retention=PAIRS_RETENTION,
        batch_max_records=BATCH_RECORDS,
        topic_prefix="bench.",
    )
    topics = Topics(settings.topic_prefix)

    with tempfile.TemporaryDirectory(prefix="undertow-memory-") as tmp:
        db_path = Path(tmp) / "memory.db"
        engine = db.make_engine(f"sqlite:///{db_path}")
        db.migrate(engine)
        sessions = db.make_session_factory(engine)
        register_reference(sessions, Path(tmp))
        # Exactly the monitor's parser and stages.
        # Event time runs one second per prediction from 2026-11-01: a long run dates events after today,
        # which the parser's clock-skew check would refuse; the run is about state, not clocks.
        service = monitor_service(settings, clock=lambda: math.inf)
        stages = service.stages
        expected: dict[tuple[str, int], int | None] = {}
        rows: list[dict] = []
        rows.append(measure(engine, db_path, 0, 0, 0.0, False, args.collect_at_checkpoints))
        if args.tracemalloc:
            tracemalloc.start()
        predictions = labels = 0
        pending: list[ConsumerRecord] = []
        next_checkpoint = iter(checkpoints)
        target = next(next_checkpoint)
        started = time.perf_counter()
        work = 0.0  # seconds in build_batch + stages + commit

        garbage = GarbagePacer()  # as Monitor.run paces full collections
        gc.freeze()

        def process(batch_records: list[ConsumerRecord]) -> None:
            nonlocal work
            t0 = time.perf_counter()
            batch = build_batch(batch_records, service.parse)
            moves = {tp: (expected.get(tp), offset) for tp, offset in batch.next_offsets.items()}
            with sessions.begin() as session:
                for stage in stages:
                    stage.apply(session, batch)
                repo.advance_offsets(session, GROUP, moves)
            expected.update(batch.next_offsets)
            garbage.processed(len(batch_records))
            work += time.perf_counter() - t0

        for record, is_prediction in records(args.predictions, topics, args.seed):
            pending.append(record)
            predictions += is_prediction
            labels += not is_prediction
            if len(pending) == BATCH_RECORDS:
                process(pending)
                pending = []
                if predictions >= target and predictions < args.predictions:
                    rows.append(
                        measure(
                            engine, db_path, predictions, labels, work, args.tracemalloc, args.collect_at_checkpoints
                        )
                    )
                    print(
                        f"  {predictions:>9,} predictions, {labels:>9,} labels: {work:6.1f} s in stages, "
                        f"{time.perf_counter() - started:6.1f} s wall, RSS {rows[-1]['rss_mib']:.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
                    target = next(next_checkpoint)
        if pending:
            process(pending)
        rows.append(measure(engine, db_path, predictions, labels, work, args.tracemalloc, True))
        wall = time.perf_counter() - started
        engine.dispose()

    print_report(rows, args, wall, settings)
    return 0


def print_report(rows: list[dict], args, wall: float, settings: MonitorSettings) -> None:
    records_total = rows[-1]["predictions"] + rows[-1]["labels"]
    print(
        f"# Bounded state over {rows[-1]['predictions']:,} predictions + {rows[-1]['labels']:,} labels "
        f"(SQLite, no Kafka)\n"
    )
    header = [
        "predictions",
        "labels",
        *TABLES,
        "db MiB",
        "wal MiB",
        "free pages",
        "s in stages",
        "µs/record since previous row",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for previous, row in zip([None] + rows, rows):
        since = "—"
        if previous is not None:
            n = row["predictions"] + row["labels"] - previous["predictions"] - previous["labels"]
            since = f"{(row['seconds'] - previous['seconds']) / n * 1e6:.0f}" if n else "—"
        cells = [
            f"{row['predictions']:,}",
            f"{row['labels']:,}",
            *(f"{row[t]:,}" for t in TABLES),
            f"{row['db_mib']:.1f}",
            f"{row['wal_mib']:.1f}",
            f"{row['free_pages']:,}",
            f"{row['seconds']:.0f}",
            since,
        ]
        print("| " + " | ".join(cells) + " |")
    forced = args.collect_at_checkpoints
    print(
        "\nProcess memory at each checkpoint, as found"
        + (
            ", then after gc.collect() + malloc_trim(0)"
            if forced
            else "; the last row also after gc.collect() + malloc_trim(0) (only there, so the run is undisturbed)"
        )
        + ":\n"
    )
    traced = args.tracemalloc
    header = [
        "predictions",
        "RSS MiB",
        "Python objects",
        *(["tracemalloc MiB"] if traced else []),
        "automatic collections gen 0 / 1 / 2 so far",
        "RSS MiB after full collection",
        "Python objects after",
        *(["tracemalloc MiB after"] if traced else []),
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))

    def mib(v):
        return "—" if v is None else f"{v:.1f}"

    for row in rows:
        cells = [
            f"{row['predictions']:,}",
            f"{row['rss_mib']:.0f}",
            f"{row['objects']:,}",
            *([mib(row["traced_mib"])] if traced else []),
            " / ".join(map(str, row["collections"])),
            "—" if row["rss_after_mib"] is None else f"{row['rss_after_mib']:.0f}",
            "—" if row["objects_after"] is None else f"{row['objects_after']:,}",
            *([mib(row["traced_after_mib"])] if traced else []),
        ]
        print("| " + " | ".join(cells) + " |")
    print("\nJoin statistics (join_stats) and the error-stream monitor (concept_state) at each checkpoint:\n")
    print(
        "| predictions | pending predictions | pending labels | joined | expired predictions | expired labels "
        "| evicted predictions | evicted labels | concept labels | concept episodes | in episode | silenced alarms |"
    )
    print("|" + "---:|" * 12)
    for row in rows[1:]:
        j = row["join"]
        c = row["concept"] or (0, 0, False, 0)
        print(
            f"| {row['predictions']:,} | {j.get('pending_predictions', 0):,} | {j.get('pending_labels', 0):,} | "
            f"{j.get('joined', 0):,} | {j.get('expired_predictions', 0):,} | {j.get('expired_labels', 0):,} | "
            f"{j.get('evicted_predictions', 0):,} | {j.get('evicted_labels', 0):,} | "
            f"{c[0]:,} | {c[1]} | {bool(c[2])} | {c[3]:,} |"
        )
    last = rows[-1]
    print(
        "\nAlerts raised (type, feature or detector, label_count, value, threshold, episode): "
        + ("; ".join(str(a) for a in last["alerts_list"]) if last["alerts_list"] else "none")
        + ". The stream is stationary (reference and events from the same distribution, other seeds): every "
        "alert here is a false alarm."
    )
    lost = last["predictions"] - last["labels"]
    features = 6  # x0..x3, region, __prediction__
    print(
        f"\nSettings: duplicate_horizon={settings.duplicate_horizon:,} records per source partition (one "
        f"predictions and one labels partition here, so the filters hold <= {2 * settings.duplicate_horizon:,} keys "
        f"plus one batch, in seen_blocks of one batch each); join_ttl_seconds={settings.join_ttl_seconds:,.0f} of "
        f"event time (events are 1 s apart, labels "
        f"carry prediction time + 3,600 s, so the watermark runs ~{3600 - LABEL_LAG:,} s ahead of the newest "
        f"prediction and a prediction without label expires ~{settings.join_ttl_seconds - 3600 + LABEL_LAG:,.0f} "
        f"predictions after it was made); join_max_pending={settings.join_max_pending:,} per kind; "
        f"pairs_retention={settings.pairs_retention:,}; batches of {BATCH_RECORDS:,} records, one transaction "
        f"each. Labels {LABEL_LAG:,} predictions late; {lost:,} labels ({lost / last['predictions']:.1%}) never "
        f"sent. DriftConfig() defaults: count windows of 1,000 predictions."
    )
    print(
        f"\nBy design: window_results grows by one row per closed window and feature "
        f"({features} features x {last['predictions'] // 1000:,} windows = "
        f"{features * (last['predictions'] // 1000):,} "
        f"expected): it is the drift time series and has no retention here. alerts grow by one row per alert. "
        f"The outbox holds alerts and retrain requests until OutboxRelay publishes them after each commit; the "
        f"relay (Kafka) does not run here, so its rows stay. SQLite does not shrink the file after deletes: "
        f"freed pages are reused ('free pages')."
    )
    print(
        f"\nCost: {wall:.0f} s wall for {records_total:,} records, {last['seconds']:.0f} s of it in build_batch + "
        f"stages + commit = {last['seconds'] / records_total * 1e6:.0f} µs per record "
        f"({records_total / last['seconds']:,.0f} records/s); the rest is generating the events. RSS is VmRSS "
        f"(current, not peak) of this process; 'after full collection' = after gc.collect() and glibc "
        f"malloc_trim(0): what is still reachable. gc thresholds {gc.get_threshold()} as Monitor.run sets "
        f"them (collections counted since start-up, forced ones excluded). Live objects flat while RSS and "
        f"'Python objects' as found grow means cyclic garbage waiting for the collector, not live state; "
        f"'Python objects' is len(gc.get_objects())."
        + (" tracemalloc was on (slower)." if args.tracemalloc else " tracemalloc off (--tracemalloc to add it).")
    )


if __name__ == "__main__":
    sys.exit(main())
