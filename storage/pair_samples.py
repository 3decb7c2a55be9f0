"""Reads of labelled pairs around a change, for what explains it (the caller owns the session)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from undertow.storage.tables import LabelledPair


def pairs_of_version(
    session: Session,
    model_id: str,
    version: str,
    *,
    up_to_seq: int,
    predicted_before: float | None = None,
    predicted_from: float | None = None,
    limit: int,
) -> list[tuple[int, str, float, float | None]]:
    """(seq, features JSON, error, log loss) of the version's newest pairs joined up to ``up_to_seq`` (at
    most ``limit``, newest first), with a prediction time in [``predicted_from``, ``predicted_before``)."""
    query = select(LabelledPair.seq, LabelledPair.features, LabelledPair.error, LabelledPair.score_loss).where(
        LabelledPair.model_id == model_id, LabelledPair.version == version, LabelledPair.seq <= up_to_seq
    )
    if predicted_before is not None:
        query = query.where(LabelledPair.prediction_ts < predicted_before)
    if predicted_from is not None:
        query = query.where(LabelledPair.prediction_ts >= predicted_from)
    rows = session.execute(query.order_by(LabelledPair.seq.desc()).limit(limit)).all()
    return [(seq, features, error, loss) for seq, features, error, loss in rows]
