"""The merge of spread models: partials from every source partition in, the usual detectors and alerts out.

Run by the monitors themselves: the merge topic is keyed by model id, so the
monitor that owns a model's partition of it merges that model, and scaling
stays "start another monitor". In the batch's transaction, like every stage:

1. a partial applied before (re-sent by an outbox after a crash) is dropped,
   by its per-partition sequence number;
2. its counts go to the model's counters at once (``model_stats``);
3. its rows and pairs are held (``merge_pending``) until every partition that
   is not silent has passed their event time (its watermark), then released in
   event-time order to the data-drift stage's windows and the concept stage's
   error streams: the same code, state rows, alerts and retrain requests as a
   model on one partition;
4. the merge's progress (``merge_state``) and what it still holds are saved.

A partition more than ``spread_merge_wait_seconds`` of event time behind the
newest is silent: not waited for; what it sends later is released as it comes
(counted late). Event time, not the wall clock, so a replay merges the same.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from undertow.storage import repo
from undertow.storage import spread as spread_repo
from undertow.worker.monitor.concept.stage import ConceptStage
from undertow.worker.monitor.data_drift import DataDriftStage
from undertow.worker.monitor.model_events import PREDICTION_GROUPS
from undertow.worker.monitor.spread.merge_state import FORMAT, HeldPart, MergeProgress, ModelMerge
from undertow.worker.monitor.spread.partial import Partial
from undertow.worker.runtime.batch import Batch

log = logging.getLogger(__name__)


class MergeStage:
    def __init__(self, merge_topic: str, data: DataDriftStage, concept: ConceptStage, wait_seconds: float):
        self.merge_topic = merge_topic
        self.data, self.concept = data, concept
        self.wait_seconds = wait_seconds
        self._merges: dict[str, ModelMerge] = {}

    def reset(self) -> None:
        self._merges.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        if all(topic != self.merge_topic for topic, _ in batch.next_offsets):
            return  # no partial in the batch
        partials = [event for _, event in batch.events if event.__class__ is Partial]
        if not partials:
            return
        batch.events = [item for item in batch.events if item[1].__class__ is not Partial]
        batch.shared.pop(PREDICTION_GROUPS, None)
        touched: dict[str, ModelMerge] = {}
        counts: dict[str, list] = {}
        for partial in partials:
            merge = touched[partial.model_id] = self._merge(session, partial)
            if merge.add(partial) == "applied":
                _add_counts(counts, partial)
        repo.add_model_counts_many(session, [repo.ModelCounts(model_id, *c) for model_id, c in counts.items()])
        for model_id, merge in touched.items():
            self._feed(session, model_id, merge)
            self._save(session, merge)

    def _merge(self, session: Session, partial: Partial) -> ModelMerge:
        merge = self._merges.get(partial.model_id)
        if merge is None:
            row = spread_repo.merge_state(session, partial.model_id)
            progress = (
                MergeProgress(partitions=partial.partitions)
                if row is None
                else MergeProgress.model_validate_json(row.state)
            )
            held = [
                HeldPart.restore(pending.payload, progress.released_to, progress.label_released_to)
                for pending in spread_repo.merge_pending(session, partial.model_id)
            ]
            merge = self._merges[partial.model_id] = ModelMerge(partial.model_id, progress, held, self.wait_seconds)
        return merge

    def _feed(self, session: Session, model_id: str, merge: ModelMerge) -> None:
        released = merge.release()
        for version, (rows, ts) in released.rows.items():
            monitor = self.data.monitor(session, model_id, version)
            if monitor is not None:
                self.data.add_rows(session, (model_id, version), monitor, rows, ts)
        for version, pairs in released.pairs.items():
            self.concept.feed_pairs(session, model_id, version, pairs)

    @staticmethod
    def _save(session: Session, merge: ModelMerge) -> None:
        p = merge.progress
        p.held_rows = sum(len(ts) for part in merge.held for _, ts in part.rows.values())
        p.held_pairs = sum(len(a["seq"]) for part in merge.held for a in part.pairs.values())
        spread_repo.save_merge_state(session, merge.model_id, merge.progress.model_dump_json().encode(), FORMAT)
        released = [(part.partition, part.seq) for part in merge.deleted]
        spread_repo.delete_merge_pending(session, merge.model_id, released)
        merge.deleted = []
        for part in merge.held:
            if not part.stored:
                payload = part.encode(merge.model_id, p.partitions)
                spread_repo.add_merge_pending(session, merge.model_id, part.partition, part.seq, payload)
                part.stored = True


def _add_counts(counts: dict[str, list], partial: Partial) -> None:
    """A partial's counts into its model's sums for the batch: (predictions, labels, duplicates, min, max)."""
    entry = counts.setdefault(partial.model_id, [0, 0, 0, None, None])
    entry[0] += partial.predictions
    entry[1] += partial.labels
    entry[2] += partial.duplicates
    if partial.min_ts is not None:
        entry[3] = partial.min_ts if entry[3] is None else min(entry[3], partial.min_ts)
    if partial.max_ts is not None:
        entry[4] = partial.max_ts if entry[4] is None else max(entry[4], partial.max_ts)
