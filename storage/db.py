"""Engine and session factory from a SQLAlchemy URL, and schema migrations."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from undertow.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

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
                raise ConfigError(
                    f"no database at {path}: nothing has been recorded there yet (check --db-url / UNDERTOW_DB_URL)"
                )
            # One ?timeout= (a repeated one, a tuple, fails float() as before).
            busy_ms = float(cast(str, parsed.query.get("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000))) * 1000
            engine = create_engine(parsed, connect_args={"timeout": busy_ms / 1000})
            _configure_sqlite(engine, int(busy_ms))
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(_missing_driver(url, exc)) from None
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from None
    return engine


def _missing_driver(url: str, exc: Exception) -> str:
    """A URL whose driver is not installed: a valid URL, so say what to install (a trial read "invalid
    database URL ... No module named 'psycopg'" as a typo in the URL)."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return f"invalid database URL {url!r}: {exc}"
    hint = (
        "install the postgres extra (pip install -e '.[postgres]' in a checkout)"
        if backend == "postgresql"
        else "SQLite and PostgreSQL are supported"
    )
    return f"the database driver for {backend} is not installed ({exc}): {hint}"


def has_schema(engine: Engine) -> bool:
    """Whether the database holds Undertow's schema (Alembic's table, or the hand-written migrations' one)."""
    names = set(inspect(engine).get_table_names())
    return "alembic_version" in names or "schema_version" in names


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


# What a user starting a second process usually wants instead (from a trial: a second notify for a second sink).
_SECOND_PROCESS_HINTS = {"notify": "several sinks go in one --config file (docs/notify.md); "}


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
            hint = _SECOND_PROCESS_HINTS.get(service, "")
            raise ConfigError(
                f"another {service} already runs on {path}: a SQLite database takes one {service}; {hint}to run "
                "several, use PostgreSQL (UNDERTOW_DB_URL=postgresql+psycopg://user@host:5432/db)"
            ) from None
        yield
    finally:
        os.close(fd)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    # pysqlite's own transaction handling starts transactions lazily (before
    # the first write only), so reads inside `Session.begin()` would not be
    # isolated. Take over: autocommit at the driver, explicit BEGIN from us.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # NORMAL in WAL mode survives process crashes; a power loss may drop the
        # last commits, which then replay from the (equally old) stored offsets.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# The hand-written migrations before Alembic numbered versions 1 to 4 in a
# table ``schema_version``; such a database is stamped with the revision that
# has the same schema, then upgraded like any other.
LEGACY_REVISIONS = {3: "0001", 4: "0002"}
_ADVISORY_LOCK = 7243061
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config(str(Path(__file__).resolve().parent / "alembic.ini"))
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def migrate(engine: Engine) -> str | None:
    """Bring the schema to Alembic's head; safe to run from several processes at once.

    On PostgreSQL a transaction-level advisory lock makes concurrent
    start-ups migrate one after the other (the second finds nothing to do);
    SQLite's ``BEGIN IMMEDIATE`` does the same. Returns the revision.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})"))
        _adopt_legacy_schema(conn, config)
        before = MigrationContext.configure(conn).get_current_revision()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        after = MigrationContext.configure(conn).get_current_revision()
        if after != before:
            log.info("database schema migrated from revision %s to %s", before, after)
        return after


def _adopt_legacy_schema(conn: Connection, config: Config) -> None:
    from alembic import command

    names = set(inspect(conn).get_table_names())
    if "schema_version" not in names or "alembic_version" in names:
        return
    legacy = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar() or 0
    if legacy not in LEGACY_REVISIONS:
        raise ConfigError(
            f"database schema version {legacy} predates 3 (the oldest one that upgrades in place); "
            "migrate it with the release that created it first"
        )
    revision = LEGACY_REVISIONS[legacy]
    log.info("adopting hand-written schema version %d as Alembic revision %s", legacy, revision)
    config.attributes["connection"] = conn
    command.stamp(config, revision)
    conn.execute(text("DROP TABLE schema_version"))
