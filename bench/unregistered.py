"""Events of unregistered model ids: what 5,000 ids x 20 predictions cost the monitor, against a registered model.

Runs the monitor's real parser and stages (``monitor_service``) on
synthetic records in one process, one transaction per batch of 5,000
records, on a SQLite file, as ``bench/memory.py`` does. Two phases in the
same run, each from the same state:

* **baseline**: 100,000 predictions of the registered model (no labels: all
  wait for the join, as they should);
* **unregistered**: 100,000 predictions spread over 5,000 model ids nobody
  registered (a producer with a typo, or one inventing ids).

For each: database growth, process memory growth (RSS after a full
collection and ``malloc_trim``), the size of ``undertow status --json``'s
answer and the warnings logged. The unregistered phase is also run with
``UNDERTOW_WAIT_FOR_REGISTRATION`` (kept under the global cap).

    .venv/bin/python bench/unregistered.py [--ids 5000] [--per-id 20]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kafka.consumer.fetcher import ConsumerRecord

import memory as memory_bench  # bench/memory.py: the same registration and RSS measurement
from undertow.storage import db, repo
from undertow.worker.cli.status import _unregistered
from undertow.worker.dev.sample import SampleStream, encode
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.settings import MonitorSettings
from undertow.worker.runtime.topics import Topics

BATCH_RECORDS = 5000
GROUP = "bench"


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "is not registered" in record.getMessage()


def predictions(model_ids: list[str], per_id: int, topic: str, seed: int) -> Iterator[ConsumerRecord]:
    stream = SampleStream(seed=seed, model_id=memory_bench.MODEL_ID)
    offset = 0
    for i, model_id in enumerate(model_ids):
        key = model_id.encode()
        for prediction, _ in stream.events(per_id, start_index=i * per_id):
            value = encode({**prediction, "model_id": model_id})
            yield ConsumerRecord(topic, 0, -1, offset, 0, 0, key, value, [], None, len(key), len(value), -1)
            offset += 1


def run_phase(name: str, records: Iterator[ConsumerRecord], settings: MonitorSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="undertow-unregistered-") as tmp:
        db_path = Path(tmp) / "bench.db"
        engine = db.make_engine(f"sqlite:///{db_path}")
        db.migrate(engine)
        sessions = db.make_session_factory(engine)
        memory_bench.register_reference(sessions, Path(tmp))
        service = monitor_service(settings)
        expected: dict = {}

        def process(batch_records: list[ConsumerRecord]) -> None:
            batch = build_batch(batch_records, service.parse)
            moves = {tp: (expected.get(tp), offset) for tp, offset in batch.next_offsets.items()}
            with sessions.begin() as session:
                for stage in service.stages:
                    stage.apply(session, batch)
                repo.advance_offsets(session, GROUP, moves)
            expected.update(batch.next_offsets)

        records = list(records)  # built before measuring: the phase's memory is the monitor's
        warnings = Warnings()
        logger = logging.getLogger("undertow.worker.monitor.registration")
        logger.setLevel(logging.WARNING)
        logger.propagate = False  # counted, not printed
        logger.addHandler(warnings)
        process(records[:1])  # the stages' first load (registry, state) is not the growth under test
        gc.collect()
        memory_bench.malloc_trim()
        rss_before, bytes_before = memory_bench.rss_mib(), db_path.stat().st_size
        for start in range(1, len(records), BATCH_RECORDS):
            process(records[start : start + BATCH_RECORDS])
        logger.removeHandler(warnings)
        del records
        gc.collect()
        memory_bench.malloc_trim()
        with sessions.begin() as session:
            status = json.dumps(
                {
                    "unregistered": _unregistered(repo.unregistered_models(session)),
                    "models": [m.model_id for m in repo.model_stats(session)],
                    "label_join": [j.model_id for j in repo.all_join_stats(session)],
                }
            )
            waiting = session.query(repo.PendingEvent).count()
        row = {
            "phase": name,
            "db_mib": (db_path.stat().st_size - bytes_before) / 2**20,
            "rss_mib": memory_bench.rss_mib() - rss_before,
            "status_kib": len(status) / 1024,
            "waiting": waiting,
            "warnings": warnings.count,
        }
        engine.dispose()
    print(
        f"  {name:<38} database +{row['db_mib']:6.2f} MiB  memory +{row['rss_mib']:6.1f} MiB  "
        f"status {row['status_kib']:6.1f} KiB  waiting {row['waiting']:>7,}  warnings {row['warnings']:,}",
        file=sys.stderr,
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=5000)
    parser.add_argument("--per-id", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    events = args.ids * args.per_id
    topic = Topics("bench.").predictions
    base = {"topic_prefix": "bench.", "batch_max_records": BATCH_RECORDS, "join_max_pending": max(events, 100)}
    ghosts = [f"ghost-{i:05d}" for i in range(args.ids)]
    print(f"{events:,} predictions per phase; one process, SQLite, batches of {BATCH_RECORDS:,}", file=sys.stderr)
    rows = [
        run_phase(
            "baseline: one registered model",
            predictions([memory_bench.MODEL_ID], events, topic, args.seed),
            MonitorSettings(**base),
        ),
        run_phase(
            f"{args.ids:,} unregistered ids (default)",
            predictions(ghosts, args.per_id, topic, args.seed),
            MonitorSettings(**base),
        ),
        run_phase(
            f"{args.ids:,} unregistered ids, waiting (cap 10,000)",
            predictions(ghosts, args.per_id, topic, args.seed),
            MonitorSettings(**base, wait_for_registration=True),
        ),
    ]
    baseline = rows[0]
    print("\nphase | database growth | memory growth | status | waiting | warnings\n---|---|---|---|---|---")
    for row in rows:
        ratio = row["db_mib"] / baseline["db_mib"] if baseline["db_mib"] > 0 else float("nan")
        print(
            f"{row['phase']} | {row['db_mib']:.2f} MiB ({ratio:.2f}x baseline) | {row['rss_mib']:+.1f} MiB | "
            f"{row['status_kib']:.1f} KiB | {row['waiting']:,} | {row['warnings']:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
