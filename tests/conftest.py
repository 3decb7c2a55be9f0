"""Shared fixtures: a real embedded broker, a real database, helpers to drive the CLI."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import threading
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage import db
from worker.broker import EmbeddedBroker
from worker.settings import load_settings
from worker.topics import Topics, ensure_topics
from worker.transport import make_admin

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


class Env:
    """One test's isolated world on the shared broker: own topics, group and database."""

    def __init__(self, broker: EmbeddedBroker, db_url: str, partitions: int = 3):
        self.bootstrap = broker.bootstrap_servers
        self.db_url = db_url
        self.prefix = f"t{uuid.uuid4().hex[:10]}."
        self.group_id = f"g{uuid.uuid4().hex[:10]}"
        self.topics = Topics(self.prefix)
        self.settings = load_settings({"kafka_bootstrap_servers": self.bootstrap, "db_url": db_url,
                                       "topic_prefix": self.prefix, "group_id": self.group_id}, environ={})
        admin = make_admin(self.settings)
        ensure_topics(admin, self.topics, partitions)
        admin.close()
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        self.engine = db.make_engine(db_url)
        db.migrate(self.engine)

    def cli_args(self) -> list[str]:
        return ["--bootstrap-servers", self.bootstrap, "--db-url", self.db_url,
                "--topic-prefix", self.prefix, "--group-id", self.group_id]

    def start_monitor(self, *extra: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--log-level", "WARNING", "monitor", *self.cli_args(), *extra],
            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def drain(self, idle: float = 3.0, timeout: float = 120.0, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run the monitor until its input has been idle for ``idle`` seconds."""
        proc = self.start_monitor("--until-idle", str(idle), env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"monitor did not drain within {timeout}s: {err.decode()[-3000:]}") from None
        assert proc.returncode == 0, err.decode()[-3000:]
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

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
        from worker.sample import encode
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

    def send_events(self, pairs, rate: float | None = None, labels: bool = True,
                    duplicate_every: int | None = None) -> int:
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
        from models import registry
        from models.reference import load_reference
        from worker.sample import write_reference_csv
        path = Path(tempfile.mkdtemp()) / "reference.csv"
        write_reference_csv(stream, path, rows)
        reference = load_reference(path, target="target", prediction="prediction")
        with db.make_session_factory(self.engine).begin() as session:
            registry.register(session, model_id=model_id, profile=reference.profile, artifacts_dir=path.parent,
                              drift_config=registry.DriftConfig(**config), baseline_error=reference.baseline_error,
                              error_sample=reference.error_sample,
                              data_sha256=reference.data_sha256)

    def run_with_kills(self, produce: Callable[[], None], seed: int, min_kills: int = 3, max_kills: int = 5,
                       env: dict | None = None) -> int:
        """Run ``produce`` in a thread while the monitor is SIGKILLed at random moments, then drain."""
        rng = random.Random(seed)
        producer = threading.Thread(target=produce)
        producer.start()
        kills, proc = 0, None
        progress = lambda: self.scalar("SELECT COALESCE(SUM(predictions + labels + duplicates), 0) FROM model_stats")
        try:
            while kills < min_kills or (producer.is_alive() and kills < max_kills):
                proc = self.start_monitor(env=env)
                before = progress()
                wait_for(lambda: progress() > before or proc.poll() is not None, 90,
                         "the restarted monitor to make progress")
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
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
