"""Alembic environment: the services' own engine and connection, SQLite in batch mode."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from undertow.storage.tables import Base

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # storage.db.migrate passes its connection (and holds the lock)
        _run(connection)
        return
    from undertow.storage.db import make_engine  # the alembic command line: UNDERTOW_DB_URL

    engine = make_engine(os.environ.get("UNDERTOW_DB_URL", "sqlite:///undertow.db"))
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: Alembic copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
