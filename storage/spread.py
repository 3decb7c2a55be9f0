"""Repository functions of spread models: the partition-local side's state, the merge's state and what it
holds back. They take the caller's Session and never commit."""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.orm import Session

from undertow.storage.tables import LabelledPair, MergePending, MergeState, SpreadPartitionState


def trim_partition_pairs(session: Session, model_id: str, partition: int, stride: int, keep_from_seq: int) -> None:
    """Drop one partition's pairs of a spread model below ``keep_from_seq`` (its seqs are ``n * stride +
    partition``): only its own rows, so monitors on other partitions never wait on each other's deletes."""
    table = LabelledPair.__table__
    session.execute(
        delete(table).where(
            table.c.model_id == model_id, table.c.seq < keep_from_seq, table.c.seq % stride == partition
        )
    )


def partition_state(session: Session, model_id: str, partition: int) -> SpreadPartitionState | None:
    return session.get(SpreadPartitionState, (model_id, partition))


def save_partition_state(
    session: Session,
    model_id: str,
    partition: int,
    next_partial: int,
    watermarks: tuple[float | None, float | None],
) -> None:
    """``watermarks``: the newest prediction time and label time seen on the partition."""
    watermark_ts, label_watermark_ts = watermarks
    row = session.get(SpreadPartitionState, (model_id, partition))
    if row is None:
        session.add(
            SpreadPartitionState(
                model_id=model_id,
                partition=partition,
                next_partial=next_partial,
                watermark_ts=watermark_ts,
                label_watermark_ts=label_watermark_ts,
            )
        )
    else:
        row.next_partial = next_partial
        row.watermark_ts, row.label_watermark_ts = watermark_ts, label_watermark_ts


def merge_state(session: Session, model_id: str) -> MergeState | None:
    return session.get(MergeState, model_id)


def merge_states(session: Session) -> list[MergeState]:
    return list(session.scalars(select(MergeState).order_by(MergeState.model_id)))


def save_merge_state(session: Session, model_id: str, state: bytes, state_format: int) -> None:
    row = session.get(MergeState, model_id)
    if row is None:
        session.add(MergeState(model_id=model_id, state=state, state_format=state_format, updated_at=time.time()))
    else:
        row.state, row.state_format, row.updated_at = state, state_format, time.time()


def merge_pending(session: Session, model_id: str) -> list[MergePending]:
    query = select(MergePending).where(MergePending.model_id == model_id)
    return list(session.scalars(query.order_by(MergePending.partition, MergePending.seq)))


def add_merge_pending(session: Session, model_id: str, partition: int, seq: int, payload: bytes) -> None:
    # Core, like the delete below, so the two apply in the order they are called.
    session.execute(
        insert(MergePending.__table__).values(model_id=model_id, partition=partition, seq=seq, payload=payload)
    )


def delete_merge_pending(session: Session, model_id: str, partials: list[tuple[int, int]]) -> None:
    """Partials released entirely: (partition, seq) of each."""
    if partials:
        table = MergePending.__table__
        session.execute(
            delete(table).where(table.c.model_id == model_id, tuple_(table.c.partition, table.c.seq).in_(partials))
        )
