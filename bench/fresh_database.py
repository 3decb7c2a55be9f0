"""A database for one benchmark run: a new SQLite file, or a new schema on a PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def fresh_database(url: str | None, workdir: Path) -> Iterator[str]:
    """Yield the URL of an empty database; a PostgreSQL schema made here is dropped afterwards."""
    if url is None or make_url(url).get_backend_name() == "sqlite":
        yield url or f"sqlite:///{workdir / 'bench.db'}"
        return
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield (
                make_url(url)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
