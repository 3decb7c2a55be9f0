"""Scale-out on PostgreSQL: one monitor against two in one consumer group, then one of two killed.

One embedded broker; each phase gets its own topics (6 partitions) and its
own fresh schema, and the same stream: N predictions spread over many
models (each with a registered champion and reference, so drift checks run),
keyed by model id. Monitors run as the CLI runs them (``python -m
worker.cli monitor``), in separate processes.

1. **one**: a single monitor; rate from its first committed batch to the
   last record, measured by polling the committed counts in ``model_stats``.
2. **two**: two monitors in one group, timed the same way; the ratio
   two/one is the number to look at, beside each process's CPU share
   (CPU seconds / wall seconds of the timed window, from /proc).
3. **kill**: two monitors; one is killed with SIGKILL mid-stream. The survivor
   takes its partitions over once the group notices (the session timeout);
   the run then checks that every model's committed count is exactly what
   was produced, with no duplicates counted.

    .venv/bin/python bench/scale.py [--events N] [--models M] [--db-url URL]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from fresh_database import fresh_database
from ingest import produce, register_references
from undertow.worker.dev.broker import EmbeddedBroker
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics, ensure_topics
from undertow.worker.runtime.transport import make_admin

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 6
FEATURES = 10
POLL_S = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Phase:
    """One phase's topics, schema and monitors."""

    def __init__(self, broker: EmbeddedBroker, db_url: str, workdir: Path, models: int):
        run = uuid.uuid4().hex[:8]
        self.bootstrap, self.db_url, self.workdir, self.models = broker.bootstrap_servers, db_url, workdir, models
        self.settings = load_settings(
            {
                "kafka_bootstrap_servers": self.bootstrap,
                "db_url": db_url,
                "topic_prefix": f"scale-{run}.",
                "group_id": f"scale-{run}",
            },
            MonitorSettings,
        )
        self.topics = Topics(self.settings.topic_prefix)
        admin = make_admin(self.settings)
        ensure_topics(admin, self.topics, PARTITIONS)
        admin.close()
        self.reader = create_engine(db_url)
        self.processes: list[subprocess.Popen] = []

    def produce(self, n: int) -> dict[str, int]:
        """The stream (ingest.py's, predictions only); how many predictions each model got."""
        produce(self.bootstrap, self.topics, n, FEATURES, labels=False, models=self.models)
        return {f"m{m}": len(range(m, n, self.models)) for m in range(self.models)}

    def register(self) -> None:
        register_references(self.db_url, self.workdir, FEATURES, self.models)

    def start_monitor(self) -> subprocess.Popen:
        log = open(self.workdir / f"monitor-{len(self.processes)}-{self.settings.topic_prefix}log", "w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "undertow.worker.cli",
                "--log-level",
                "WARNING",
                "monitor",
                "--bootstrap-servers",
                self.bootstrap,
                "--db-url",
                self.db_url,
                "--topic-prefix",
                self.settings.topic_prefix,
                "--group-id",
                self.settings.group_id,
                "--partitions",
                str(PARTITIONS),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(proc)
        return proc

    def counts(self) -> dict[str, tuple[int, int]]:
        with self.reader.connect() as conn:
            return {
                m: (p, d) for m, p, d in conn.execute(text("SELECT model_id, predictions, duplicates FROM model_stats"))
            }

    def processed(self) -> int:
        return sum(p for p, _ in self.counts().values())

    def timed_rate(self, n: int, kill_at: float | None = None) -> tuple[float, list[float]]:
        """Records/s from the first committed batch to the last record, and each process's CPU share."""
        first, deadline, killed = None, time.monotonic() + 900, kill_at is None
        while True:
            now, done = time.perf_counter(), self.processed()
            if done and first is None:
                first = (now, done, [cpu_seconds(p.pid) for p in self.processes])
            if not killed and done >= kill_at * n:
                self.processes[0].send_signal(signal.SIGKILL)
                self.processes[0].wait()
                killed = True
                print(f"  killed monitor 0 (pid {self.processes[0].pid}) at {done:,} of {n:,} records", flush=True)
            if done >= n:
                break
            if time.monotonic() > deadline or all(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"stopped at {done} of {n} records; logs in {self.workdir}")
            time.sleep(POLL_S)
        t_first, n_first, cpu_first = first
        wall = now - t_first
        shares = (
            [] if kill_at is not None else [(cpu_seconds(p.pid) - c) / wall for p, c in zip(self.processes, cpu_first)]
        )
        return (n - n_first) / wall, shares

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.reader.dispose()


def run_phase(
    broker, db_url: str, workdir: Path, events: int, models: int, monitors: int, kill_at: float | None = None
) -> tuple[float, list[float], dict, dict]:
    phase = Phase(broker, db_url, workdir, models)
    try:
        sent = phase.produce(events)
        phase.register()
        for _ in range(monitors):
            phase.start_monitor()
        rate, shares = phase.timed_rate(events, kill_at)
        return rate, shares, sent, phase.counts()
    finally:
        phase.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--models", type=int, default=48)
    parser.add_argument(
        "--db-url", default=os.environ.get("UNDERTOW_DB_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args(argv)
    if not args.db_url.startswith("postgresql"):
        parser.error("scale-out needs PostgreSQL: SQLite takes one monitor per file")

    with tempfile.TemporaryDirectory(prefix="undertow-scale-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        results = {}
        for name, monitors in (("one", 1), ("two", 2)):
            with fresh_database(args.db_url, workdir) as db_url:
                results[name] = run_phase(broker, db_url, workdir, args.events, args.models, monitors)
            rate, shares, _, _ = results[name]
            print(
                f"{name} monitor(s): {rate:,.0f} records/s; CPU share per process "
                f"{', '.join(f'{s:.2f}' for s in shares)}",
                flush=True,
            )
        with fresh_database(args.db_url, workdir) as db_url:
            _, _, sent, counts = run_phase(broker, db_url, workdir, args.events, args.models, 2, kill_at=0.4)
        exact = all(counts.get(m, (0, 0)) == (n, 0) for m, n in sent.items()) and len(counts) == len(sent)

    print(
        f"\nevents {args.events:,}, models {args.models}, partitions {PARTITIONS}, features {FEATURES}, "
        f"drift checks on, PostgreSQL, {os.cpu_count()} cores"
    )
    print(f"{'one monitor records/s':<34}{results['one'][0]:>12,.0f}")
    print(f"{'two monitors records/s':<34}{results['two'][0]:>12,.0f}")
    print(f"{'ratio two/one':<34}{results['two'][0] / results['one'][0]:>12.2f}")
    print(f"{'one killed mid-stream: counts':<34}{'exact' if exact else 'WRONG':>12}")
    if not exact:
        wrong = {m: (n, counts.get(m)) for m, n in sent.items() if counts.get(m) != (n, 0)}
        print(f"  (model: sent, (counted, duplicates)) {wrong}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
