"""Shared fixtures: a real embedded broker, a real database, helpers to drive the CLI."""
from __future__ import annotations

import os
import subprocess
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
def db_url(tmp_path):
    """A fresh database: a SQLite file, or a new schema when UNDERTOW_DB_URL is PostgreSQL."""
    pg = _postgres_url()
    if pg is None:
        yield f"sqlite:///{tmp_path / 'undertow.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(pg)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


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

    def drain(self, idle: float = 3.0, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the monitor until its input has been idle for ``idle`` seconds."""
        proc = self.start_monitor("--until-idle", str(idle))
        out, err = proc.communicate(timeout=timeout)
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

    def close(self):
        self.producer.close()
        self.engine.dispose()


@pytest.fixture
def env(broker, db_url):
    world = Env(broker, db_url)
    yield world
    world.close()
