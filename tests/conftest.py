"""Shared fixtures: a real embedded broker, a real database, helpers to drive the CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from undertow.storage import db
from undertow.worker.dev.broker import EmbeddedBroker
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics, ensure_topics
from undertow.worker.runtime.transport import make_admin

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], object], timeout: float, message: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as running:
        yield running


def _postgres_url() -> str | None:
    url = os.environ.get("UNDERTOW_DB_URL", "")
    return url if url.startswith("postgresql") else None


def requires_postgres(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (runs in the PostgreSQL pass: UNDERTOW_DB_URL=postgresql+psycopg://...)")


def requires_sqlite(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("a SQLite fault")


@pytest.fixture
def new_db_url(tmp_path):
    """Makes fresh databases: SQLite files, or new schemas when UNDERTOW_DB_URL is PostgreSQL."""
    pg = _postgres_url()
    schemas: list[str] = []
    admin = create_engine(pg) if pg else None

    def make() -> str:
        if pg is None:
            return f"sqlite:///{tmp_path / f'undertow-{uuid.uuid4().hex[:8]}.db'}"
        schema = "t_" + uuid.uuid4().hex[:12]
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = make_url(pg).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    yield make
    if admin is not None:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db_url(new_db_url):
    return new_db_url()


@pytest.fixture
def engine(db_url):
    eng = db.make_engine(db_url)
    db.migrate(eng)
    yield eng
    eng.dispose()


# Most tests send events of a model they never register (counting, join, crash and fault tests): they run
# the monitor as it was before unregistered ids were dropped, keeping such events for the join without a
# global cap. tests/worker/test_unregistered.py covers the default (counted, logged, not kept).
WAIT_FOR_REGISTRATION = {"UNDERTOW_WAIT_FOR_REGISTRATION": "true", "UNDERTOW_UNREGISTERED_MAX_PENDING": "100000000"}


class Env:
    """One test's isolated world on the shared broker: own topics, group and database."""

    def __init__(self, broker: EmbeddedBroker, db_url: str, partitions: int = 3):
        self.bootstrap = broker.bootstrap_servers
        self.db_url = db_url
        self.prefix = f"t{uuid.uuid4().hex[:10]}."
        self.group_id = f"g{uuid.uuid4().hex[:10]}"
        self.topics = Topics(self.prefix)
        self.settings = load_settings(
            {
                "kafka_bootstrap_servers": self.bootstrap,
                "db_url": db_url,
                "topic_prefix": self.prefix,
                "group_id": self.group_id,
                "wait_for_registration": True,
                "unregistered_max_pending": 10**8,
            },
            MonitorSettings,
        )
        self.create_topics(partitions)
        self.producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            linger_ms=5,
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
        )
        self.engine = db.make_engine(db_url)
        db.migrate(self.engine)
        self.artifacts_dir = Path(tempfile.mkdtemp(prefix="artifacts-"))
        self.processes: list[subprocess.Popen] = []  # services started; close() kills those still running

    def create_topics(self, partitions: int = 3) -> None:
        admin = make_admin(self.settings)
        try:
            ensure_topics(admin, self.topics, partitions)
        finally:
            admin.close()

    def counts(self) -> tuple[int, int, int]:
        """(predictions, labels, duplicates) over every model."""
        return tuple(
            int(self.scalar(f"SELECT COALESCE(SUM({column}), 0) FROM model_stats"))
            for column in ("predictions", "labels", "duplicates")
        )

    def status(self) -> dict:
        """``undertow status --json`` as a user runs it."""
        import json

        done = subprocess.run(
            [sys.executable, "-m", "undertow.worker.cli", "status", "--json", *self.cli_args()],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def cli_args(self, group: str | None = None) -> list[str]:
        return [
            "--bootstrap-servers",
            self.bootstrap,
            "--db-url",
            self.db_url,
            "--topic-prefix",
            self.prefix,
            "--group-id",
            group or self.group_id,
            "--artifacts-dir",
            str(self.artifacts_dir),
        ]

    def start_monitor(
        self, *extra: str, env: dict | None = None, db_url: str | None = None, log_level: str = "WARNING"
    ) -> subprocess.Popen:
        """The monitor as the CLI runs it; its output goes to a file (``log_of``), never a pipe that could fill."""
        return self.start_service("monitor", *extra, env=env, db_url=db_url, log_level=log_level)

    def start_trainer(self, *extra: str, env: dict | None = None, log_level: str = "INFO") -> subprocess.Popen:
        return self.start_service("trainer", *extra, env=env, log_level=log_level, group=self.group_id + "-trainer")

    def start_service(
        self,
        command: str,
        *extra: str,
        env: dict | None = None,
        db_url: str | None = None,
        log_level: str = "WARNING",
        group: str | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen:
        args = self.cli_args(group) if db_url is None else [*self.cli_args(group), "--db-url", db_url]
        log_file = tempfile.NamedTemporaryFile(prefix=f"{command}-", suffix=".log", delete=False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "undertow.worker.cli", "--log-level", log_level, command, *args, *extra],
            cwd=cwd,
            env={**os.environ, **WAIT_FOR_REGISTRATION, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        proc.log_path = log_file.name
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 60) -> None:
        """SIGTERM, then exit 0 within ``timeout``. A service still running by then is asked for every thread's
        stack (SIGUSR1, Python's faulthandler), killed, and the assertion carries its log and the stacks."""
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while "most recent call first" not in self.log_of(proc) and time.monotonic() < deadline:
                time.sleep(0.1)  # polling for the dump with a deadline; the assertion below fails either way
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"still running {timeout}s after SIGTERM; its log:\n{self.log_of(proc, tail=20_000)}"
            ) from None
        assert code == 0, self.log_of(proc)

    @staticmethod
    def log_of(proc: subprocess.Popen, tail: int = 3000) -> str:
        return Path(proc.log_path).read_text(errors="replace")[-tail:]

    def drain(
        self, idle: float = 3.0, timeout: float = 120.0, env: dict | None = None, db_url: str | None = None
    ) -> str:
        """Run the monitor until its input has been idle for ``idle`` seconds; its log."""
        proc = self.start_monitor("--until-idle", str(idle), env=env, db_url=db_url)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"monitor did not drain within {timeout}s: {self.log_of(proc)}") from None
        assert proc.returncode == 0, self.log_of(proc)
        return self.log_of(proc, tail=100_000)

    def send(self, topic: str, value: bytes | None, key: bytes | None = b"m", headers=None):
        return self.producer.send(topic, key=key, value=value, headers=headers or [])

    def flush(self):
        self.producer.flush()

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def read_all(self, topic: str, expected: int, timeout: float = 20.0) -> list:
        """Every record of ``topic`` (all partitions), waiting until ``expected`` have arrived."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        try:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            records: list = []
            deadline = time.monotonic() + timeout
            while len(records) < expected and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()

    def send_sequence(self, items, rate: float | None = None) -> int:
        """Produce ("prediction" | "label", event dict) items in order, keyed by model_id.

        ``rate`` paces the records per second (pacing the producer, not synchronisation).
        """
        from undertow.worker.dev.sample import encode

        topics = {"prediction": self.topics.predictions, "label": self.topics.labels}
        sent, start, futures = 0, time.monotonic(), []
        for kind, event in items:
            futures.append(self.send(topics[kind], encode(event), key=event["model_id"].encode()))
            sent += 1
            if rate and sent % 500 == 0:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        self.flush()
        failed = [f.exception for f in futures if not f.succeeded()]
        assert not failed, f"{len(failed)} records were not produced: {failed[:3]}"
        return sent

    def send_events(
        self, pairs, rate: float | None = None, labels: bool = True, duplicate_every: int | None = None
    ) -> int:
        """Produce (prediction, label) pairs; every ``duplicate_every``-th prediction twice."""

        def items():
            for i, (prediction, label) in enumerate(pairs):
                yield "prediction", prediction
                if labels:
                    yield "label", label
                if duplicate_every and i % duplicate_every == 0:
                    yield "prediction", prediction

        return self.send_sequence(items(), rate)

    def register_reference(self, stream, model_id: str = "housing", rows: int = 5000, **config) -> None:
        """Register a champion for ``model_id`` profiled from ``stream``'s pre-drift distribution."""
        from undertow.models import registry
        from undertow.models.reference import load_reference
        from undertow.worker.dev.sample import write_reference_csv

        path = Path(tempfile.mkdtemp()) / "reference.csv"
        write_reference_csv(stream, path, rows)
        reference = load_reference(path, target="target", prediction="prediction")
        with db.make_session_factory(self.engine).begin() as session:
            registry.register(
                session,
                model_id=model_id,
                profile=reference.profile,
                artifacts_dir=path.parent,
                drift_config=registry.DriftConfig(**config),
                baseline_error=reference.baseline_error,
                error_sample=reference.error_sample,
                test_set=reference.test_set,
                data_sha256=reference.data_sha256,
            )

    def run_with_kills(
        self, produce: Callable[[], None], seed: int, min_kills: int = 3, max_kills: int = 5, env: dict | None = None
    ) -> int:
        """Run ``produce`` in a thread while the monitor is SIGKILLed at random moments, then drain."""
        rng = random.Random(seed)
        sent: list[int] = []  # records produced, once the producer is done
        producer = threading.Thread(target=lambda: sent.append(produce()))
        producer.start()
        kills, proc = 0, None

        def progress():
            return self.scalar("SELECT COALESCE(SUM(predictions + labels + duplicates), 0) FROM model_stats")

        try:
            while kills < min_kills or (producer.is_alive() and kills < max_kills):
                proc = self.start_monitor(env=env)
                before = progress()
                # Or nothing is left: a monitor that keeps up may have processed every record before its kill
                # while the producer thread was still closing.
                wait_for(
                    lambda before=before, proc=proc: (
                        progress() > before or proc.poll() is not None or (sent and before >= sent[0])
                    ),
                    90,
                    "the restarted monitor to make progress",
                )
                assert proc.poll() is None, self.log_of(proc)
                time.sleep(rng.uniform(0.0, 1.5))  # a random moment to crash at, not synchronisation
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            producer.join()
        self.drain(idle=4.0, env=env)
        return kills

    def close(self):
        # A test that failed midway leaves its services running (one such monitor kept polling a stopped
        # broker for a quarter of an hour): none outlives its test.
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.producer.close()
        self.engine.dispose()


@pytest.fixture
def env(broker, db_url):
    world = Env(broker, db_url)
    yield world
    world.close()


@pytest.fixture
def make_env(broker, new_db_url):
    """Several isolated worlds in one test (e.g. an uninterrupted run and a crashed one)."""
    worlds: list[Env] = []

    def make() -> Env:
        worlds.append(Env(broker, new_db_url()))
        return worlds[-1]

    yield make
    for world in worlds:
        world.close()
