"""Repository functions. Each takes a Session and never commits."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Dialect,
    Float,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import processors
from sqlalchemy.orm import Session

from undertow.errors import StaleOffsets
from undertow.storage.tables import (
    Alert,
    ConceptState,
    ConsumerOffset,
    DeadLetterStats,
    DriftState,
    JoinStats,
    LabelledPair,
    ModelStats,
    ModelVersion,
    OutboxMessage,
    PartitionGap,
    PendingEvent,
    RetrainRequest,
    SchemaMismatch,
    SeenBlock,
    SegmentConceptState,
    SegmentDriftState,
    UnregisteredModel,
    WindowResult,
)

TopicPartitionKey = tuple[str, int]

# SQLite's default limit on bound parameters is 32766; stay far below it.
_IN_CHUNK = 2000


def insert_many(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows (dicts with the columns to fill, the same in every row); see ``insert_values``."""
    if rows:
        columns = [column.name for column in table.columns if column.name in rows[0]]
        insert_values(session, table, columns, [[row[name] for name in columns] for row in rows])


def insert_values(session: Session, table: Table, columns: list[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows (value lists, in the order of ``columns``) in one executemany, or one COPY with psycopg.

    psycopg's COPY writes a batch's rows in one round trip with no SQL to
    build per row: several times faster than an INSERT of many VALUES. On
    SQLite the lists go straight to the driver's executemany, converted
    column by column (floats: numpy scalars to float): the compiled
    statement's per-row parameter handling had cost as much as the insert.
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    if dialect.driver == "psycopg":
        from psycopg import sql  # installed wherever the psycopg driver is

        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        dbapi: Any = connection.connection.dbapi_connection  # psycopg's Connection: its cursor has copy()
        with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    elif dialect.paramstyle == "qmark":
        converters = [
            (i, convert)
            for i, name in enumerate(columns)
            if (convert := table.c[name].type.bind_processor(dialect)) is not None
            and not (convert is processors.to_float and {row[i].__class__ for row in rows} <= _FLOATS)
        ]
        if converters:  # column by column: a call per value only where the type asks for one
            converted = [list(row) for row in rows]
            for i, convert in converters:
                for row in converted:
                    row[i] = convert(row[i])
            rows = converted
        connection.exec_driver_sql(_insert_sql(table, tuple(columns), dialect), [tuple(row) for row in rows])
    else:  # PostgreSQL through another driver
        connection.execute(table.insert(), [dict(zip(columns, row)) for row in rows])


# What SQLite's Float converter (numpy scalars to float) leaves as it is: a column of only these is not
# converted, nor its rows copied for it (the join's rows: about a tenth of the executemany).
_FLOATS = {float, type(None)}


@functools.lru_cache(maxsize=64)
def _insert_sql(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str:
    return str(table.insert().compile(dialect=dialect, column_keys=list(columns)))  # compiling cost ~1 ms


def load_offsets(
    conn: Connection | Session, group_id: str, partitions: Iterable[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    """Stored next offsets for the given partitions (absent: never processed)."""
    return {key: offset for key, (offset, _) in load_positions(conn, group_id, partitions).items()}


def load_positions(
    conn: Connection | Session, group_id: str, partitions: Iterable[TopicPartitionKey]
) -> dict[TopicPartitionKey, tuple[int, str | None]]:
    """Stored (next offset, topic id) for the given partitions (absent: never processed)."""
    wanted = set(partitions)
    rows = conn.execute(
        select(
            ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset, ConsumerOffset.topic_id
        ).where(ConsumerOffset.group_id == group_id)
    )
    return {(t, p): (o, tid) for t, p, o, tid in rows if (t, p) in wanted}


def all_offsets(session: Session) -> list[ConsumerOffset]:
    return list(
        session.scalars(
            select(ConsumerOffset).order_by(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition)
        )
    )


def advance_offsets(
    session: Session,
    group_id: str,
    moves: Mapping[TopicPartitionKey, tuple[int | None, int]],
    topic_ids: Mapping[str, str] | None = None,
) -> None:
    """Compare-and-set each partition's offset from ``expected`` to ``new``.

    ``expected`` None means no row may exist yet. A mismatch means another
    consumer advanced the partition since we read it: raise StaleOffsets so the
    whole transaction rolls back (a fence against zombie monitors). The
    topic's id, where known, is stored beside the offset.
    """
    topic_ids = topic_ids or {}
    for (topic, partition), (expected, new) in moves.items():
        values: dict[str, Any] = {"next_offset": new}
        if topic_ids.get(topic):
            values["topic_id"] = topic_ids[topic]
        if expected is None:
            exists = session.execute(
                select(ConsumerOffset.next_offset).where(
                    ConsumerOffset.group_id == group_id,
                    ConsumerOffset.topic == topic,
                    ConsumerOffset.partition == partition,
                )
            ).first()
            if exists is not None:
                raise StaleOffsets(f"{topic}[{partition}] already has a stored offset {exists[0]}")
            session.execute(
                ConsumerOffset.__table__.insert().values(group_id=group_id, topic=topic, partition=partition, **values)
            )
            continue
        table = ConsumerOffset.__table__
        result = session.execute(
            update(table)
            .where(
                table.c.group_id == group_id,
                table.c.topic == topic,
                table.c.partition == partition,
                table.c.next_offset == expected,
            )
            .values(**values)
        )
        if cast(CursorResult[Any], result).rowcount != 1:  # an UPDATE's result is a CursorResult
            raise StaleOffsets(f"{topic}[{partition}] is no longer at offset {expected}")


def add_partition_gap(session: Session, gap: PartitionGap) -> None:
    session.add(gap)


def partition_gaps(session: Session, group_id: str | None = None) -> list[PartitionGap]:
    query = select(PartitionGap).order_by(PartitionGap.id)
    if group_id:
        query = query.where(PartitionGap.group_id == group_id)
    return list(session.scalars(query))


def seen_blocks(session: Session, topic: str, partition: int) -> list[tuple[int, int, str]]:
    """(first offset, next offset, keys) of a source partition's duplicate-filter blocks, in write order."""
    return [
        (first, next_offset, keys)
        for first, next_offset, keys in session.execute(
            select(SeenBlock.first_offset, SeenBlock.next_offset, SeenBlock.keys)
            .where(SeenBlock.topic == topic, SeenBlock.partition == partition)
            .order_by(SeenBlock.id)
        )
    ]


def add_seen_block(
    session: Session, topic: str, partition: int, first_offset: int, next_offset: int, keys: str
) -> None:
    session.execute(
        SeenBlock.__table__.insert().values(
            topic=topic, partition=partition, first_offset=first_offset, next_offset=next_offset, keys=keys
        )
    )


def expire_seen_blocks(session: Session, topic: str, partition: int, below_offset: int) -> None:
    """Delete the blocks whose every offset is below ``below_offset``."""
    table = SeenBlock.__table__
    session.execute(
        delete(table).where(table.c.topic == topic, table.c.partition == partition, table.c.next_offset <= below_offset)
    )


class ModelCounts(NamedTuple):
    """What one batch adds to a model's counters."""

    model_id: str
    predictions: int = 0
    labels: int = 0
    duplicates: int = 0
    min_ts: float | None = None
    max_ts: float | None = None


def add_model_counts(
    session: Session,
    model_id: str,
    *,
    predictions: int = 0,
    labels: int = 0,
    duplicates: int = 0,
    min_ts: float | None = None,
    max_ts: float | None = None,
) -> None:
    add_model_counts_many(session, [ModelCounts(model_id, predictions, labels, duplicates, min_ts, max_ts)])


def add_model_counts_many(session: Session, counts: list[ModelCounts]) -> None:
    """Add to the counters of several models (distinct ids) in one statement, without reading them first.

    One executemany UPDATE; only when it touched fewer rows than models (a
    model seen for the first time) are the missing ones looked up and
    inserted.
    """
    if not counts:
        return
    table = ModelStats.__table__
    lo, hi = bindparam("b_min_ts", type_=Float), bindparam("b_max_ts", type_=Float)
    statement = (
        update(table)
        .where(table.c.model_id == bindparam("b_model_id"))
        .values(
            predictions=table.c.predictions + bindparam("b_predictions"),
            labels=table.c.labels + bindparam("b_labels"),
            duplicates=table.c.duplicates + bindparam("b_duplicates"),
            first_event_ts=case(
                (table.c.first_event_ts.is_(None), lo), (lo < table.c.first_event_ts, lo), else_=table.c.first_event_ts
            ),
            last_event_ts=case(
                (table.c.last_event_ts.is_(None), hi), (hi > table.c.last_event_ts, hi), else_=table.c.last_event_ts
            ),
        )
    )
    result = session.execute(
        statement,
        [
            {
                "b_model_id": c.model_id,
                "b_predictions": c.predictions,
                "b_labels": c.labels,
                "b_duplicates": c.duplicates,
                "b_min_ts": c.min_ts,
                "b_max_ts": c.max_ts,
            }
            for c in counts
        ],
    )
    updated = cast(CursorResult[Any], result).rowcount  # an UPDATE's result is a CursorResult
    if updated == len(counts):
        return
    existing = set(session.scalars(select(table.c.model_id).where(table.c.model_id.in_([c.model_id for c in counts]))))
    session.execute(
        insert(table),
        [
            {
                "model_id": c.model_id,
                "predictions": c.predictions,
                "labels": c.labels,
                "duplicates": c.duplicates,
                "first_event_ts": c.min_ts,
                "last_event_ts": c.max_ts,
            }
            for c in counts
            if c.model_id not in existing
        ],
    )


def model_stats(session: Session) -> list[ModelStats]:
    return list(session.scalars(select(ModelStats).order_by(ModelStats.model_id)))


def add_dead_letter(session: Session, source_topic: str, error: str) -> None:
    stats = session.get(DeadLetterStats, source_topic)
    if stats is None:
        stats = DeadLetterStats(source_topic=source_topic, count=0)
        session.add(stats)
    stats.count += 1
    stats.last_error = error[:1000]


def dead_letter_stats(session: Session) -> list[DeadLetterStats]:
    return list(session.scalars(select(DeadLetterStats).order_by(DeadLetterStats.source_topic)))


OUTBOX_WRITTEN = "undertow.outbox_written"  # a key of Session.info


def enqueue(
    session: Session, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
) -> None:
    session.info[OUTBOX_WRITTEN] = True  # the checkpoint publishes after a transaction that wrote here
    session.add(
        OutboxMessage(
            topic=topic,
            key=key,
            value=value,
            created_at=time.time(),
            headers=json.dumps([[n, v.hex()] for n, v in headers]),
        )
    )


def pending_outbox(session: Session, limit: int) -> list[OutboxMessage]:
    return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id).limit(limit)))


def decode_headers(message: OutboxMessage) -> list[tuple[str, bytes]]:
    return [(n, bytes.fromhex(v)) for n, v in json.loads(message.headers)]


def delete_outbox(session: Session, ids: Iterable[int]) -> None:
    ids = list(ids)
    for i in range(0, len(ids), _IN_CHUNK):
        session.execute(
            delete(OutboxMessage)
            .where(OutboxMessage.id.in_(ids[i : i + _IN_CHUNK]))
            .execution_options(synchronize_session=False)
        )


def drift_states(session: Session) -> list[DriftState]:
    """Every model version's data-drift state (for ``status``)."""
    return list(session.scalars(select(DriftState).order_by(DriftState.model_id, DriftState.version)))


def drift_state(session: Session, model_id: str, version: str) -> DriftState | None:
    return session.get(DriftState, (model_id, version))


def save_drift_state(
    session: Session,
    model_id: str,
    version: str,
    columns: dict[str, Any],
    episodes: str,
    state_format: int,
    exists: bool,
) -> None:
    """Write a model version's window state without reading the old buffer back; ``state_format`` is the
    format number of ``episodes`` (models.drift.drift_state), stored beside it."""
    if exists:
        session.execute(
            _UPDATE_DRIFT_STATE,
            {
                "b_model_id": model_id,
                "b_version": version,
                **columns,
                "episodes": episodes,
                "state_format": state_format,
            },
        )
    else:
        session.execute(
            DriftState.__table__.insert().values(
                model_id=model_id, version=version, episodes=episodes, state_format=state_format, **columns
            )
        )


# Core, built once (it runs every batch): the ORM's bulk-update path costs more than the write.
_UPDATE_DRIFT_STATE = update(DriftState.__table__).where(
    DriftState.__table__.c.model_id == bindparam("b_model_id"), DriftState.__table__.c.version == bindparam("b_version")
)


def add_window_results(session: Session, rows: list[dict[str, Any]]) -> None:
    insert_many(session, WindowResult.__table__, rows)


def latest_window_results(session: Session) -> list[WindowResult]:
    """Per model version, the feature rows of its newest window."""
    newest = (
        select(WindowResult.model_id, WindowResult.version, func.max(WindowResult.window_index).label("window_index"))
        .group_by(WindowResult.model_id, WindowResult.version)
        .subquery()
    )
    return list(
        session.scalars(
            select(WindowResult)
            .join(
                newest,
                and_(
                    WindowResult.model_id == newest.c.model_id,
                    WindowResult.version == newest.c.version,
                    WindowResult.window_index == newest.c.window_index,
                ),
            )
            .order_by(WindowResult.model_id, WindowResult.version, WindowResult.feature)
        )
    )


def window_history(session: Session, model_id: str) -> list[Row[str, int, str, float, float, str]]:
    """(version, window_index, feature, end_ts, psi, severity) of every window result of a model, by end time."""
    return list(
        session.execute(
            select(
                WindowResult.version,
                WindowResult.window_index,
                WindowResult.feature,
                WindowResult.end_ts,
                WindowResult.psi,
                WindowResult.severity,
            )
            .where(WindowResult.model_id == model_id)
            .order_by(WindowResult.end_ts)
        ).all()
    )


def add_alert(session: Session, alert: Alert) -> None:
    session.add(alert)


def alerts(session: Session, model_id: str | None = None, limit: int = 1000) -> list[Alert]:
    query = select(Alert).order_by(Alert.event_ts.desc(), Alert.id).limit(limit)
    if model_id:
        query = query.where(Alert.model_id == model_id)
    return list(session.scalars(query))


def alert_history(session: Session, model_id: str) -> list[str]:
    """The CloudEvents (JSON text) of every alert of a model, oldest first."""
    return list(session.scalars(select(Alert.cloudevent).where(Alert.model_id == model_id).order_by(Alert.event_ts)))


def pending_index(session: Session, model_id: str) -> list[tuple[int, str, str, str | None, float]]:
    """(seq, kind, event_id, version, ts) of every waiting prediction and label of a model."""
    return [
        (seq, kind, event_id, version, ts)
        for seq, kind, event_id, version, ts in session.execute(
            select(
                PendingEvent.seq, PendingEvent.kind, PendingEvent.event_id, PendingEvent.version, PendingEvent.ts
            ).where(PendingEvent.model_id == model_id)
        )
    ]


def pending_payloads(session: Session, model_id: str, seqs: list[int]) -> dict[int, str]:
    """The stored JSON of waiting events, by seq."""
    connection, found = session.connection(), dict[int, str]()
    for i in range(0, len(seqs), _IN_CHUNK):
        rows = connection.execute(_PENDING_PAYLOADS, {"b_model_id": model_id, "b_seqs": seqs[i : i + _IN_CHUNK]})
        found.update((seq, payload) for seq, payload in rows)
    return found


# Built once and run on the connection: built per call and run through the ORM session they took twice as
# long on SQLite (about 450 us against 230 to read 8 rows, 1.1 ms against 1.0 to delete 300; noisy machine).
_PENDING = PendingEvent.__table__
_PENDING_WHERE = (
    _PENDING.c.model_id == bindparam("b_model_id"),
    _PENDING.c.seq.in_(bindparam("b_seqs", expanding=True)),
)
_PENDING_PAYLOADS = select(_PENDING.c.seq, _PENDING.c.payload).where(*_PENDING_WHERE)
_REMOVE_PENDING = delete(_PENDING).where(*_PENDING_WHERE)


PENDING_COLUMNS = ["model_id", "seq", "kind", "event_id", "version", "ts", "payload"]


def add_pending(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Rows of values in the order of ``PENDING_COLUMNS``."""
    insert_values(session, PendingEvent.__table__, PENDING_COLUMNS, rows)


def remove_pending(session: Session, model_id: str, seqs: list[int]) -> None:
    connection = session.connection()
    for i in range(0, len(seqs), _IN_CHUNK):
        connection.execute(_REMOVE_PENDING, {"b_model_id": model_id, "b_seqs": seqs[i : i + _IN_CHUNK]})


JOIN_COUNTERS = (
    "pending_predictions",
    "pending_labels",
    "joined",
    "expired_predictions",
    "expired_labels",
    "evicted_predictions",
    "evicted_labels",
)


def load_join_stats(session: Session, model_id: str) -> dict[str, Any]:
    """A model's join statistics as column values; a row of zeros is written for a new model."""
    table = JoinStats.__table__
    row = session.execute(select(table).where(table.c.model_id == model_id)).mappings().first()
    if row is not None:
        return dict(row)
    values = {
        "model_id": model_id,
        **dict.fromkeys(JOIN_COUNTERS, 0),
        "watermark_ts": None,
        "arrived_at": None,
        "seq_base": 0,
    }
    session.execute(insert(table).values(**values))
    return values


def save_join_stats(session: Session, rows: list[dict[str, Any]]) -> None:
    """Write the join statistics of several models (rows from ``load_join_stats``) in one statement."""
    if rows:
        session.execute(
            _UPDATE_JOIN_STATS,
            [
                {
                    "b_model_id": row["model_id"],
                    "watermark_ts": row["watermark_ts"],
                    "arrived_at": row["arrived_at"],
                    "seq_base": row["seq_base"],
                    **{name: row[name] for name in JOIN_COUNTERS},
                }
                for row in rows
            ],
        )


# Built once, like the drift state's: they run every batch.
_UPDATE_JOIN_STATS = update(JoinStats.__table__).where(JoinStats.__table__.c.model_id == bindparam("b_model_id"))
_UPDATE_CONCEPT_STATE = update(ConceptState.__table__).where(
    ConceptState.__table__.c.model_id == bindparam("b_model_id"),
    ConceptState.__table__.c.version == bindparam("b_version"),
)


def join_stats(session: Session, model_id: str) -> JoinStats:
    stats = session.get(JoinStats, model_id)
    if stats is None:
        stats = JoinStats(
            model_id=model_id,
            pending_predictions=0,
            pending_labels=0,
            joined=0,
            expired_predictions=0,
            expired_labels=0,
            evicted_predictions=0,
            evicted_labels=0,
        )
        session.add(stats)
    return stats


def all_join_stats(session: Session) -> list[JoinStats]:
    return list(session.scalars(select(JoinStats).order_by(JoinStats.model_id)))


_PAIR_COLUMNS = [column.name for column in LabelledPair.__table__.columns]


def add_pairs(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Insert joined pairs: value tuples in the order of ``labelled_pairs``' columns."""
    insert_values(session, LabelledPair.__table__, _PAIR_COLUMNS, rows)


def highest_pair_seq(session: Session, model_id: str) -> int | None:
    """The model's highest ``labelled_pairs.seq`` (None: no pairs); read from the primary key's index."""
    table = LabelledPair.__table__
    highest = session.scalar(select(func.max(table.c.seq)).where(table.c.model_id == model_id))
    return None if highest is None else int(highest)


def trim_pairs(session: Session, model_id: str, keep_from_seq: int) -> None:
    table = LabelledPair.__table__  # Core: the ORM's bulk-delete path costs more than the delete
    session.execute(delete(table).where(table.c.model_id == model_id, table.c.seq < keep_from_seq))


def concept_state(session: Session, model_id: str, version: str) -> ConceptState | None:
    return session.get(ConceptState, (model_id, version))


def all_concept_states(session: Session) -> list[ConceptState]:
    return list(session.scalars(select(ConceptState).order_by(ConceptState.model_id, ConceptState.version)))


def save_concept_state(session: Session, model_id: str, version: str, values: dict[str, Any], exists: bool) -> None:
    """``values``: the row's columns, ``state_format`` among them: the number of the blob's format
    (models.state_format), required so that no row is written without it."""
    if values.get("state_format") is None:
        raise ValueError("a concept state is saved with its state_format")
    if exists:
        session.execute(_UPDATE_CONCEPT_STATE, {"b_model_id": model_id, "b_version": version, **values})
    else:
        session.execute(ConceptState.__table__.insert().values(model_id=model_id, version=version, **values))


def segment_drift_state(session: Session, model_id: str, version: str, segment: str) -> SegmentDriftState | None:
    return session.get(SegmentDriftState, (model_id, version, segment))


def segment_drift_states(session: Session, model_id: str | None = None) -> list[SegmentDriftState]:
    """The segments' data-drift states (of one model, or all), by model, version and segment."""
    query = select(SegmentDriftState)
    if model_id is not None:
        query = query.where(SegmentDriftState.model_id == model_id)
    order = (SegmentDriftState.model_id, SegmentDriftState.version, SegmentDriftState.segment)
    return list(session.scalars(query.order_by(*order)))


def save_segment_drift_state(
    session: Session,
    key: tuple[str, str, str],
    columns: dict[str, Any],
    episodes: str,
    state_format: int,
    exists: bool,
) -> None:
    """``save_drift_state`` for one segment; ``key``: (model id, version, segment)."""
    values = {**columns, "episodes": episodes, "state_format": state_format}
    _save_segment_row(session, SegmentDriftState.__table__, key, values, exists)


def segment_concept_state(session: Session, model_id: str, version: str, segment: str) -> SegmentConceptState | None:
    return session.get(SegmentConceptState, (model_id, version, segment))


def segment_concept_states(session: Session, model_id: str | None = None) -> list[SegmentConceptState]:
    query = select(SegmentConceptState)
    if model_id is not None:
        query = query.where(SegmentConceptState.model_id == model_id)
    order = (SegmentConceptState.model_id, SegmentConceptState.version, SegmentConceptState.segment)
    return list(session.scalars(query.order_by(*order)))


def save_segment_concept_state(
    session: Session, key: tuple[str, str, str], values: dict[str, Any], exists: bool
) -> None:
    """``save_concept_state`` for one segment; ``key``: (model id, version, segment)."""
    if values.get("state_format") is None:
        raise ValueError("a concept state is saved with its state_format")
    _save_segment_row(session, SegmentConceptState.__table__, key, values, exists)


def _save_segment_row(
    session: Session, table: Table, key: tuple[str, str, str], values: dict[str, Any], exists: bool
) -> None:
    model_id, version, segment = key
    if exists:
        session.execute(
            _update_segment_statement(table),
            {"b_model_id": model_id, "b_version": version, "b_segment": segment, **values},
        )
    else:
        session.execute(table.insert().values(model_id=model_id, version=version, segment=segment, **values))


@functools.cache
def _update_segment_statement(table: Table) -> Any:
    """Built once per table (it runs every batch), as the drift state's is."""
    c = table.c
    return update(table).where(
        c.model_id == bindparam("b_model_id"), c.version == bindparam("b_version"), c.segment == bindparam("b_segment")
    )


def open_retrain_request(session: Session, model_id: str) -> RetrainRequest | None:
    return session.scalars(
        select(RetrainRequest).where(RetrainRequest.model_id == model_id, RetrainRequest.status == "open")
    ).first()


def last_retrain_request(session: Session, model_id: str) -> RetrainRequest | None:
    return session.scalars(
        select(RetrainRequest)
        .where(RetrainRequest.model_id == model_id)
        .order_by(RetrainRequest.created_ts.desc(), RetrainRequest.request_id)
    ).first()


def retrain_requests(session: Session, model_id: str | None = None) -> list[RetrainRequest]:
    query = select(RetrainRequest).order_by(RetrainRequest.created_ts, RetrainRequest.request_id)
    if model_id:
        query = query.where(RetrainRequest.model_id == model_id)
    return list(session.scalars(query))


def close_retrain_request(session: Session, request_id: str, outcome: str) -> RetrainRequest | None:
    request = session.get(RetrainRequest, request_id)
    if request is not None:
        request.status, request.outcome = "closed", outcome
    return request


def count_pairs(session: Session, model_id: str, predicted_from: float | None = None) -> int:
    query = select(func.count()).select_from(LabelledPair).where(LabelledPair.model_id == model_id)
    if predicted_from is not None:
        query = query.where(LabelledPair.prediction_ts >= predicted_from)
    return int(session.scalar(query) or 0)  # COUNT is never NULL


def newest_pairs(
    session: Session, model_id: str, limit: int | None, predicted_from: float | None = None
) -> list[LabelledPair]:
    """The newest labelled pairs by prediction time (at most ``limit``), oldest first."""
    query = select(LabelledPair).where(LabelledPair.model_id == model_id)
    if predicted_from is not None:
        query = query.where(LabelledPair.prediction_ts >= predicted_from)
    query = query.order_by(LabelledPair.prediction_ts.desc(), LabelledPair.seq.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(reversed(session.scalars(query).all()))


def error_history(session: Session, model_id: str) -> list[Row[float, float, str | None, str]]:
    """(prediction_ts, error, version, features) of every labelled pair of a model, by prediction time."""
    return list(
        session.execute(
            select(LabelledPair.prediction_ts, LabelledPair.error, LabelledPair.version, LabelledPair.features)
            .where(LabelledPair.model_id == model_id)
            .order_by(LabelledPair.prediction_ts)
        ).all()
    )


def alert(session: Session, alert_id: str) -> Alert | None:
    return session.get(Alert, alert_id)


UNREGISTERED_COLUMNS = ("model_id", "predictions", "labels", "ids", "kept", "expired", "first_seen_at", "last_seen_at")


def unregistered_models(session: Session) -> list[UnregisteredModel]:
    """The tracked unregistered ids, most events first, and the "(other)" row."""
    table = UnregisteredModel.__table__
    return list(
        session.scalars(
            select(UnregisteredModel).order_by((table.c.predictions + table.c.labels).desc(), table.c.model_id)
        )
    )


def save_unregistered(session: Session, rows: list[dict[str, Any]], new_ids: set[str], removed: Iterable[str]) -> None:
    """Write the rows of ``unregistered_models`` that changed: ``new_ids`` are inserted, the rest updated;
    ``removed`` ids (folded into the "(other)" row) are deleted."""
    table = UnregisteredModel.__table__
    removed = list(removed)
    for i in range(0, len(removed), _IN_CHUNK):
        session.execute(delete(table).where(table.c.model_id.in_(removed[i : i + _IN_CHUNK])))
    inserts = [row for row in rows if row["model_id"] in new_ids]
    updates = [row for row in rows if row["model_id"] not in new_ids]
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        session.execute(
            update(table).where(table.c.model_id == bindparam("b_model_id")),
            [{"b_model_id": row["model_id"], **{k: row[k] for k in UNREGISTERED_COLUMNS[1:]}} for row in updates],
        )


def _unregistered(column: ColumnElement[str]) -> ColumnElement[bool]:
    # A spread model's join is kept per partition under "model@partition" (model ids have no "@"): registered.
    return column.not_in(select(ModelVersion.__table__.c.model_id).distinct()) & ~column.contains("@")


def waiting_unregistered(session: Session) -> int:
    """Events of unregistered models waiting in the join buffer (UNDERTOW_WAIT_FOR_REGISTRATION's cap)."""
    table = JoinStats.__table__
    return int(
        session.scalar(
            select(func.coalesce(func.sum(table.c.pending_predictions + table.c.pending_labels), 0)).where(
                _unregistered(table.c.model_id)
            )
        )
        or 0
    )


def stale_unregistered_joins(session: Session, arrived_before: float) -> list[tuple[str, int]]:
    """Unregistered models whose last event arrived before ``arrived_before`` (wall clock), with their
    waiting events; rows written before arrival times were kept count as stale."""
    table = JoinStats.__table__
    return [
        (model_id, int(n))
        for model_id, n in session.execute(
            select(table.c.model_id, table.c.pending_predictions + table.c.pending_labels)
            .where(
                _unregistered(table.c.model_id), (table.c.arrived_at < arrived_before) | table.c.arrived_at.is_(None)
            )
            .order_by(table.c.model_id)
        )
    ]


def forget_model(session: Session, model_id: str) -> None:
    """Delete what the monitor keeps of an unregistered model: waiting events, join and event counts."""
    for table in (PendingEvent.__table__, JoinStats.__table__, ModelStats.__table__):
        session.execute(delete(table).where(table.c.model_id == model_id))


class MismatchCount(NamedTuple):
    """One batch's predictions of a model with one kind of schema fault (``SchemaMismatch.reason``)."""

    model_id: str
    reason: str
    model_version: str
    feature: str
    predictions: int
    dead_lettered: int


def add_schema_mismatches(session: Session, counts: Iterable[MismatchCount], now: float) -> None:
    """Add a batch's schema faults to ``schema_mismatches`` (a row per model and reason)."""
    for c in counts:
        row = session.get(SchemaMismatch, (c.model_id, c.reason))
        if row is None:
            row = SchemaMismatch(
                model_id=c.model_id, reason=c.reason, predictions=0, dead_lettered=0, first_seen_at=now
            )
            session.add(row)
        row.predictions += c.predictions
        row.dead_lettered += c.dead_lettered
        row.feature, row.model_version, row.last_seen_at = c.feature[:200], c.model_version, now


def schema_mismatches(session: Session) -> list[SchemaMismatch]:
    return list(session.scalars(select(SchemaMismatch).order_by(SchemaMismatch.model_id, SchemaMismatch.reason)))
