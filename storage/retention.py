"""Retention: what each table that grows with the stream keeps, and the deletes that bound it.

Every rule is a pair of repository functions over a ``Session`` that never
commit: ``count`` (what a prune would delete now: ``undertow db prune
--dry-run``) and ``delete`` (at most ``limit`` rows of it, oldest first). Both
build their ``WHERE`` from the same function, so a dry run counts exactly what
a prune deletes. ``Pruner`` is the one driver that owns transactions: one short
transaction per chunk of rows, so a prune never holds a long lock, however
large the backlog (a first prune, a lowered setting).

Age is judged in the time the rows carry: the stream's event time for what
the monitor derives from events (windows, alerts, retrain requests), measured
from the model's newest event (``model_stats.last_event_ts``) and not from the
wall clock, so a backfill of last year's events is not deleted as it is
written and a stopped stream keeps its history; the wall clock for what
services do (training runs, partition gaps). What is still needed is never
deleted, whatever its age (docs/operations.md, "Retention and database size"):
each model version's newest window (status, metrics, the report), the alerts
of an episode still open on a live version and of an open retrain request
(the trainer reads them), open retrain requests and each model's newest one
(the cooldown is measured from it), active training runs and the runs that
made a registered version (its model card).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Table, and_, delete, func, select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker

from undertow.storage.db import sqlite_path
from undertow.storage.tables import (
    Alert,
    Base,
    ModelStats,
    ModelVersion,
    PartitionGap,
    RetrainRequest,
    TrainingRun,
    WindowResult,
)

DAY = 86_400.0
CHUNK_ROWS = 2_000  # rows per delete statement and transaction: milliseconds of lock on either database

# Training runs that may be deleted once old: models.runs.FINISHED (storage cannot import models).
FINISHED_RUNS = ("promoted", "rejected", "registered", "gave_up", "failed")
# Versions whose open episodes can still end (or escalate): their alerts are kept while they are open.
LIVE_STAGES = ("champion", "candidate")


@dataclass(frozen=True)
class Retention:
    """How long each growing table keeps its rows, in seconds (worker.runtime.settings.RetentionSettings)."""

    windows_seconds: float = 30 * DAY  # event time
    alerts_seconds: float = 90 * DAY  # event time
    retrain_requests_seconds: float = 180 * DAY  # event time of the triggering alert
    training_runs_seconds: float = 365 * DAY  # wall clock, from the run's end
    partition_gaps_seconds: float = 90 * DAY  # wall clock, from detection


def event_clock(session: Session) -> dict[str, float]:
    """Each model's newest event time: the "now" event-time retention is measured from."""
    rows = session.execute(
        select(ModelStats.model_id, ModelStats.last_event_ts).where(ModelStats.last_event_ts.is_not(None))
    )
    return {model_id: float(ts) for model_id, ts in rows if ts is not None}


# --- window_results: per model, windows ended more than windows_seconds before its newest event ----------------


def _old_windows(w: FromClause, model_id: str, cutoff: float) -> ColumnElement[bool]:
    newest = WindowResult.__table__.alias("newest")
    newest_index = (
        select(func.max(newest.c.window_index))
        .where(newest.c.model_id == w.c.model_id, newest.c.version == w.c.version)
        .scalar_subquery()
    )
    # The version's newest window stays: `undertow status`, /metrics and the report show it.
    return and_(w.c.model_id == model_id, w.c.end_ts < cutoff, w.c.window_index < newest_index)


def count_windows(session: Session, retention: Retention, now: float) -> int:
    w = WindowResult.__table__.alias("w")
    clock = event_clock(session)
    return sum(_count(session, w, _old_windows(w, m, ts - retention.windows_seconds)) for m, ts in clock.items())


def delete_windows(session: Session, retention: Retention, now: float, limit: int) -> int:
    table, w = WindowResult.__table__, WindowResult.__table__.alias("w")
    keys = ("model_id", "version", "window_index", "feature")
    deleted = 0
    for model_id, ts in event_clock(session).items():
        if deleted >= limit:
            break
        chosen = (
            select(*(w.c[k] for k in keys))
            .where(_old_windows(w, model_id, ts - retention.windows_seconds))
            .order_by(w.c.end_ts)
            .limit(limit - deleted)
        )
        result = session.execute(delete(table).where(tuple_(*(table.c[k] for k in keys)).in_(chosen)))
        deleted += _rowcount(result)
    return deleted


# --- alerts: per model, older than alerts_seconds of event time, unless still needed ---------------------------


def protected_alerts(session: Session, model_id: str) -> set[str]:
    """Alerts kept whatever their age: those of an episode still open on a live version (its start dates the
    episode for the report and notify), and those an open retrain request names (the trainer reads them)."""
    live = select(ModelVersion.version).where(ModelVersion.model_id == model_id, ModelVersion.stage.in_(LIVE_STAGES))
    rows = session.execute(
        select(Alert.id, Alert.version, Alert.type, Alert.feature, Alert.cloudevent)
        .where(Alert.model_id == model_id, Alert.version.in_(live))
        .order_by(Alert.event_ts, Alert.id)
    )
    open_episodes: dict[tuple[Any, ...], list[str]] = {}
    for alert_id, version, kind, feature, cloudevent in rows:
        data = json.loads(cloudevent).get("data", {})
        # One episode per stream: the version, the kind, the feature, a concept alert's metric, the segment.
        stream = (version, kind, feature, data.get("metric"), json.dumps(data.get("segment"), sort_keys=True))
        episode = data.get("episode")
        if episode == "started":
            open_episodes[stream] = [alert_id]
        elif episode == "ended":
            open_episodes.pop(stream, None)
        elif stream in open_episodes:
            open_episodes[stream].append(alert_id)
    kept = {alert_id for ids in open_episodes.values() for alert_id in ids}
    for alert_ids in session.scalars(
        select(RetrainRequest.alert_ids).where(RetrainRequest.model_id == model_id, RetrainRequest.status == "open")
    ):
        kept.update(json.loads(alert_ids))
    return kept


def _old_alerts(a: Table, model_id: str, cutoff: float, kept: Iterable[str]) -> ColumnElement[bool]:
    condition = and_(a.c.model_id == model_id, a.c.event_ts < cutoff)
    kept = sorted(kept)
    return and_(condition, a.c.id.not_in(kept)) if kept else condition


def _alert_cutoffs(session: Session, retention: Retention) -> list[tuple[str, float, set[str]]]:
    """(model, cutoff, alerts kept) of every model that has alerts older than its cutoff."""
    out = []
    for model_id, ts in event_clock(session).items():
        cutoff = ts - retention.alerts_seconds
        a = Alert.__table__
        if session.scalar(select(a.c.id).where(_old_alerts(a, model_id, cutoff, ())).limit(1)) is None:
            continue  # nothing old: the open episodes need not be read
        out.append((model_id, cutoff, protected_alerts(session, model_id)))
    return out


def count_alerts(session: Session, retention: Retention, now: float) -> int:
    a = Alert.__table__
    return sum(_count(session, a, _old_alerts(a, m, c, kept)) for m, c, kept in _alert_cutoffs(session, retention))


def delete_alerts(session: Session, retention: Retention, now: float, limit: int) -> int:
    a = Alert.__table__
    deleted = 0
    for model_id, cutoff, kept in _alert_cutoffs(session, retention):
        if deleted >= limit:
            break
        chosen = (
            select(a.c.id).where(_old_alerts(a, model_id, cutoff, kept)).order_by(a.c.event_ts).limit(limit - deleted)
        )
        deleted += _rowcount(session.execute(delete(a).where(a.c.id.in_(chosen))))
    return deleted


# --- retrain_requests: closed ones older than retrain_requests_seconds, never a model's newest -----------------


def _old_requests(r: Table, model_id: str, cutoff: float, newest: str | None) -> ColumnElement[bool]:
    # The newest request stays: the monitor's cooldown is measured from it (retrain_policy).
    return and_(r.c.model_id == model_id, r.c.status == "closed", r.c.created_ts < cutoff, r.c.request_id != newest)


def _request_cutoffs(session: Session, retention: Retention) -> list[tuple[str, float, str | None]]:
    r = RetrainRequest.__table__
    out = []
    for model_id, ts in event_clock(session).items():
        newest = session.scalar(
            select(r.c.request_id).where(r.c.model_id == model_id).order_by(r.c.created_ts.desc(), r.c.request_id)
        )
        if newest is not None:
            out.append((model_id, ts - retention.retrain_requests_seconds, newest))
    return out


def count_retrain_requests(session: Session, retention: Retention, now: float) -> int:
    r = RetrainRequest.__table__
    return sum(_count(session, r, _old_requests(r, *cut)) for cut in _request_cutoffs(session, retention))


def delete_retrain_requests(session: Session, retention: Retention, now: float, limit: int) -> int:
    r = RetrainRequest.__table__
    deleted = 0
    for cut in _request_cutoffs(session, retention):
        if deleted >= limit:
            break
        chosen = select(r.c.request_id).where(_old_requests(r, *cut)).order_by(r.c.created_ts).limit(limit - deleted)
        deleted += _rowcount(session.execute(delete(r).where(r.c.request_id.in_(chosen))))
    return deleted


# --- training_runs: finished more than training_runs_seconds ago, unless they made a registered version ---------


def _old_runs(t: Table, cutoff: float) -> ColumnElement[bool]:
    made_a_version = select(ModelVersion.run_id).where(ModelVersion.run_id.is_not(None))
    return and_(t.c.status.in_(FINISHED_RUNS), t.c.finished_at < cutoff, t.c.run_id.not_in(made_a_version))


def count_training_runs(session: Session, retention: Retention, now: float) -> int:
    t = TrainingRun.__table__
    return _count(session, t, _old_runs(t, now - retention.training_runs_seconds))


def delete_training_runs(session: Session, retention: Retention, now: float, limit: int) -> int:
    t = TrainingRun.__table__
    chosen = (
        select(t.c.run_id).where(_old_runs(t, now - retention.training_runs_seconds)).order_by(t.c.finished_at)
    ).limit(limit)
    return _rowcount(session.execute(delete(t).where(t.c.run_id.in_(chosen))))


# --- partition_gaps: detected more than partition_gaps_seconds ago ---------------------------------------------


def count_partition_gaps(session: Session, retention: Retention, now: float) -> int:
    g = PartitionGap.__table__
    return _count(session, g, g.c.detected_at < now - retention.partition_gaps_seconds)


def delete_partition_gaps(session: Session, retention: Retention, now: float, limit: int) -> int:
    g = PartitionGap.__table__
    chosen = (
        select(g.c.id).where(g.c.detected_at < now - retention.partition_gaps_seconds).order_by(g.c.id).limit(limit)
    )
    return _rowcount(session.execute(delete(g).where(g.c.id.in_(chosen))))


# --- the rules, and the driver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    table: str
    count: Callable[[Session, Retention, float], int]
    delete: Callable[[Session, Retention, float, int], int]


RULES = {
    rule.table: rule
    for rule in (
        Rule("window_results", count_windows, delete_windows),
        Rule("alerts", count_alerts, delete_alerts),
        Rule("retrain_requests", count_retrain_requests, delete_retrain_requests),
        Rule("training_runs", count_training_runs, delete_training_runs),
        Rule("partition_gaps", count_partition_gaps, delete_partition_gaps),
    )
}
TABLES = tuple(RULES)


@dataclass
class Pruner:
    """Applies the rules of ``tables`` in chunks of ``chunk_rows``, one transaction per chunk."""

    sessions: sessionmaker[Session]
    retention: Retention
    tables: Sequence[str] = TABLES
    chunk_rows: int = CHUNK_ROWS
    clock: Callable[[], float] = time.time
    _rules: list[Rule] = field(init=False)

    def __post_init__(self) -> None:
        unknown = [t for t in self.tables if t not in RULES]
        if unknown:
            raise ValueError(f"no retention rule for {', '.join(unknown)} (rules: {', '.join(TABLES)})")
        self._rules = [RULES[t] for t in self.tables]

    def dry_run(self) -> dict[str, int]:
        """Rows each table would lose now; nothing is deleted (the transaction is rolled back)."""
        now = self.clock()
        with self.sessions() as session:
            counts = {rule.table: rule.count(session, self.retention, now) for rule in self._rules}
            session.rollback()
        return counts

    def prune(self, max_chunks: int | None = None) -> tuple[dict[str, int], bool]:
        """Rows deleted per table, and whether everything due is deleted (False: ``max_chunks`` ran out first;
        the next call goes on)."""
        now = self.clock()
        deleted = dict.fromkeys(self.tables, 0)
        chunks = 0
        for rule in self._rules:
            while max_chunks is None or chunks < max_chunks:
                with self.sessions.begin() as session:
                    rows = rule.delete(session, self.retention, now, self.chunk_rows)
                chunks += 1
                deleted[rule.table] += rows
                if rows < self.chunk_rows:
                    break
            else:
                return deleted, False
        return deleted, True


def _count(session: Session, table: FromClause, where: ColumnElement[bool]) -> int:
    return int(session.scalar(select(func.count()).select_from(table).where(where)) or 0)


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)


# --- database size -----------------------------------------------------------------------------------------------


def database_size(session: Session) -> int | None:
    """Bytes the database takes on disk: a SQLite file with its write-ahead log (None in memory); on
    PostgreSQL Undertow's tables with their indexes and TOAST (``pg_total_relation_size``, in the schema the
    connection uses), so a server shared with other applications counts Undertow only."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        path = sqlite_path(bind.engine.url.render_as_string(hide_password=False))
        if path is None:
            return None
        files = (path, path.with_name(path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())
    names = sorted(Base.metadata.tables) + ["alembic_version"]
    size = session.execute(
        text("SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(CAST(:names AS text[])) t"),
        {"names": names},
    ).scalar()
    return int(size or 0)


def table_rows(session: Session, tables: Iterable[str]) -> dict[str, int]:
    """COUNT(*) of each named table (benchmarks and the docs' sizes)."""
    return {
        name: int(session.scalar(select(func.count()).select_from(Base.metadata.tables[name])) or 0) for name in tables
    }


def human_bytes(size: int | None) -> str:
    """``12.3 MiB``; ``unknown`` for a database without a file (SQLite in memory)."""
    if size is None:
        return "unknown"
    if size < 1024:
        return f"{size} B"
    value, unit = float(size) / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f} {unit}"
