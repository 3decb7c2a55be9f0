"""Engine and session factory from a SQLAlchemy URL, and schema migrations."""
from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import ConfigError
from storage.tables import Base, SchemaVersion

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, must_exist: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and a busy timeout.

    The busy timeout is 30 s unless the URL sets ``?timeout=SECONDS``. With
    ``must_exist``, a SQLite file that does not exist is an error instead of
    a new empty database (commands that only read state). Raises
    ConfigError with a one-line message for a malformed URL, a missing
    driver or a missing file.
    """
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = sqlite_path(url)
            if must_exist and path is not None and not path.is_file():
                raise ConfigError(f"no database at {path}: nothing has been recorded there yet "
                                  "(check --db-url / UNDERTOW_DB_URL)")
            busy_ms = float(parsed.query.get("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)) * 1000
            engine = create_engine(parsed, connect_args={"timeout": busy_ms / 1000})
            _configure_sqlite(engine, int(busy_ms))
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from None
    return engine


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


@contextmanager
def single_writer_lock(url: str, service: str) -> Iterator[None]:
    """Refuse a second ``service`` process on the same SQLite file (nothing to do elsewhere).

    SQLite serialises writers, so two monitors on one file would only take
    turns; and the file cannot be shared across hosts. The lock is an
    ``flock`` on ``<file>.<service>.lock``, released by the kernel when the
    process ends however it ends.
    """
    path = sqlite_path(url)
    if path is None:
        yield
        return
    lock_path = path.with_name(f"{path.name}.{service}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot create {lock_path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another {service} already runs on {path}: a SQLite database takes one {service}; to run "
                "several, use PostgreSQL (UNDERTOW_DB_URL=postgresql+psycopg://user@host:5432/db)") from None
        yield
    finally:
        os.close(fd)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    # pysqlite's own transaction handling starts transactions lazily (before
    # the first write only), so reads inside `Session.begin()` would not be
    # isolated. Take over: autocommit at the driver, explicit BEGIN from us.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # NORMAL in WAL mode survives process crashes; a power loss may drop the
        # last commits, which then replay from the (equally old) stored offsets.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# Ordered, append-only. Each step creates or alters what its version added;
# never edit a released step, add a new one.
def _create(*names: str) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for name in names:
            Base.metadata.tables[name].create(conn, checkfirst=True)

    return step


def _add_column(conn: Connection, table: str, column: str, sql_type: str) -> None:
    if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "spine: offsets, model counts, duplicate horizon, outbox, dead letters",
     _create("consumer_offsets", "model_stats", "seen_events", "outbox", "dead_letter_stats")),
    (2, "data drift: model registry, window state and results, alerts",
     _create("model_versions", "drift_state", "window_results", "alerts")),
    (3, "concept drift: join buffer, labelled pairs, detector state, retrain requests",
     lambda conn: (_add_column(conn, "model_versions", "baseline_errors", "TEXT"),
                   _create("join_pending", "labelled_pairs", "join_stats", "concept_state",
                           "retrain_requests")(conn))),
    (4, "faults: topic ids beside stored offsets, partition gaps",
     lambda conn: (_add_column(conn, "consumer_offsets", "topic_id", "VARCHAR(64)"),
                   _create("partition_gaps")(conn))),
]


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; safe to run from several processes."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7243061)"))
        SchemaVersion.__table__.create(conn, checkfirst=True)
        current = conn.execute(select(SchemaVersion.version).order_by(SchemaVersion.version.desc())).scalar()
        current = current or 0
        for version, description, step in MIGRATIONS:
            if version > current:
                log.info("migrating schema to version %d: %s", version, description)
                step(conn)
                conn.execute(SchemaVersion.__table__.insert().values(
                    version=version, description=description, applied_at=time.time()))
                current = version
    return current
