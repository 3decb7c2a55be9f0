"""The partition-local side of spread models: which models are spread, and their partials out.

``SpreadRoutingStage`` runs before the ingest stage: it reads which models are
spread (``model_settings``, once per batch), dead-letters events keyed by
event id whose model is not spread (their partners may sit on another
partition: the join would miss them, and two monitors would write the model's
state), and puts a ``SpreadCollector`` in the batch for the stages after it.

``SpreadEmitStage`` runs last: each (spread model, source partition) of the
batch becomes one partial, numbered per partition, queued in the outbox for
the merge topic in the batch's transaction (so it is published once the
offsets are committed, and re-sent with the same bytes after a crash; the
merge drops what it applied before).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent
from undertow.models import registry
from undertow.storage import repo
from undertow.storage import spread as spread_repo
from undertow.worker.monitor.spread.collect import SPREAD, SPREAD_SWITCHED, PartitionPart, SpreadCollector
from undertow.worker.monitor.spread.partial import PAIR_ARRAYS, PairsPart, Partial, RowsPart, encode
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.checkpoint import store_dead_letter
from undertow.worker.runtime.transport import dead_letter


@dataclass
class SpreadTopology:
    """The source topics' partition count, as the broker has it (set when the monitor starts)."""

    partitions: int


class KeyedByEventId:
    """Model ids whose events the parser accepted keyed by event id, for the routing stage to check."""

    def __init__(self) -> None:
        self.models: set[str] = set()


class SpreadRoutingStage:
    def __init__(self, keyed: KeyedByEventId, topology: SpreadTopology):
        self.keyed = keyed
        self.topology = topology
        self._last: set[str] | None = None  # the spread models of the last batch

    def reset(self) -> None:
        self._last = None  # the stages' joins are restored from SQL anyway

    def apply(self, session: Session, batch: Batch) -> None:
        spread = registry.spread_models(session)
        if self._last is not None and spread != self._last:
            batch.shared[SPREAD_SWITCHED] = spread ^ self._last  # their joins restart numbering from SQL
        self._last = spread
        if self.keyed.models - spread:
            self._refuse_keyed_by_event_id(session, batch, self.keyed.models - spread)
        self.keyed.models = set()
        if spread and any(event.model_id in spread for _, event in batch.events):
            batch.shared[SPREAD] = SpreadCollector(spread, self.topology.partitions)

    @staticmethod
    def _refuse_keyed_by_event_id(session: Session, batch: Batch, models: set[str]) -> None:
        kept = []
        for position, event in batch.events:
            model_id = getattr(event, "model_id", None)
            key = getattr(position, "key", None)  # the consumer record's
            if model_id in models and key != model_id.encode():
                error = InvalidEvent(
                    f"record key {key!r} is not the model_id {model_id!r}: model {model_id} is not "
                    "spread, so its events must be keyed by model_id (`undertow models spread` changes it)"
                )
                letter = dead_letter(position, "spread", error)
                store_dead_letter(session, letter)
                batch.dead_letters.append(letter)
            else:
                kept.append((position, event))
        batch.events = kept


class SpreadEmitStage:
    def __init__(self, merge_topic: str):
        self.merge_topic = merge_topic

    def reset(self) -> None:
        pass

    def apply(self, session: Session, batch: Batch) -> None:
        spread: SpreadCollector | None = batch.shared.get(SPREAD)
        if spread is None:
            return
        for (model_id, partition), part in sorted(spread.parts.items()):
            state = spread_repo.partition_state(session, model_id, partition)
            seq = 0 if state is None else state.next_partial
            watermarks = (
                _newest(None if state is None else state.watermark_ts, part.max_prediction_ts),
                _newest(None if state is None else state.label_watermark_ts, part.max_label_ts),
            )
            partial = _partial(model_id, partition, spread.partitions, seq, watermarks, part)
            value, headers = encode(partial)
            repo.enqueue(session, self.merge_topic, model_id.encode(), value, headers)
            spread_repo.save_partition_state(session, model_id, partition, seq + 1, watermarks)


def _newest(old: float | None, new: float | None) -> float | None:
    return new if old is None or (new is not None and new > old) else old


def _partial(
    model_id: str,
    partition: int,
    partitions: int,
    seq: int,
    watermarks: tuple[float | None, float | None],
    part: PartitionPart,
) -> Partial:
    rows = []
    for version, chunks in part.rows.items():
        values = np.concatenate([c[0] for c in chunks])
        ts = np.concatenate([c[1] for c in chunks])
        rows.append(RowsPart.of(version, values, ts))
    pairs = []
    for (version, metric), joined in part.pairs.items():
        arrays = {name: [getattr(p, name) for p in joined] for name in PAIR_ARRAYS}
        arrays["score_loss"] = [np.nan if loss is None else loss for loss in arrays["score_loss"]]
        pairs.append(PairsPart.of(version, metric, arrays))
    return Partial(
        model_id=model_id,
        partition=partition,
        partitions=partitions,
        seq=seq,
        watermark_ts=watermarks[0],
        label_watermark_ts=watermarks[1],
        predictions=part.predictions,
        labels=part.labels,
        duplicates=part.duplicates,
        min_ts=part.min_ts,
        max_ts=part.max_ts,
        rows=rows,
        pairs=pairs,
    )
