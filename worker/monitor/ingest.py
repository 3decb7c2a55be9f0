"""The ingest stage: duplicate filtering and per-model counts."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.orm import Session

from undertow.storage import repo
from undertow.worker.monitor.duplicates import DuplicateFilter
from undertow.worker.monitor.model_events import PREDICTION_GROUPS
from undertow.worker.monitor.spread.collect import SPREAD
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import PredictionEvent


class IngestStage:
    """Writes the counting state of a batch and removes duplicates from it.

    A duplicate is an event whose (kind, model_id, event_id) was processed
    within the last ``duplicate_horizon`` records of its source partition
    (events are keyed by model id, so a model's events share a partition).
    After ``apply`` the batch holds only first occurrences, so later stages
    see each event once. The filters live in memory (``DuplicateFilter``,
    one per source partition) and are restored from SQL after ``reset``.
    """

    def __init__(self, duplicate_horizon: int):
        if duplicate_horizon < 1:
            raise ValueError("duplicate_horizon must be at least 1")
        self.duplicate_horizon = duplicate_horizon
        self._filters: dict[tuple[str, int], DuplicateFilter] = {}

    def reset(self) -> None:
        """Drop the filters: the next batch restores them from the database."""
        self._filters.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        batch.events, duplicates = self._first_occurrences(session, batch.events)
        if duplicates:  # the schema stage's grouping still has them
            batch.shared.pop(PREDICTION_GROUPS, None)
        self._count(session, batch, duplicates)
        for (topic, partition), next_offset in batch.next_offsets.items():
            self._filter(session, topic, partition).expire(session, next_offset - self.duplicate_horizon)

    def _filter(self, session: Session, topic: str, partition: int) -> DuplicateFilter:
        found = self._filters.get((topic, partition))
        if found is None:
            found = self._filters[(topic, partition)] = DuplicateFilter.restore(session, topic, partition)
        return found

    def _first_occurrences(self, session: Session, events: list) -> tuple[list, dict[str, int]]:
        """The events without duplicates, and how many duplicates each model had."""
        by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, (position, _) in enumerate(events):
            by_partition[(position.topic, position.partition)].append(i)
        first = [True] * len(events)
        duplicates: dict[str, int] = defaultdict(int)
        every_key = [
            f"{'prediction' if event.__class__ is PredictionEvent else 'label'}\t{event.model_id}\t{event.event_id}"
            for _, event in events
        ]
        for (topic, partition), indices in by_partition.items():
            keys = every_key if len(indices) == len(events) else [every_key[i] for i in indices]
            taken = self._filter(session, topic, partition).take(
                session, keys, events[indices[0]][0].offset, events[indices[-1]][0].offset + 1
            )
            if all(taken):
                continue
            for i, is_first in zip(indices, taken):
                if not is_first:
                    first[i] = False
                    duplicates[events[i][1].model_id] += 1
        return ([item for item, keep in zip(events, first) if keep] if duplicates else events), duplicates

    @staticmethod
    def _count(session: Session, batch: Batch, duplicates: dict[str, int]) -> None:
        events, spread = batch.events, batch.shared.get(SPREAD)
        if spread is not None:  # spread models are counted in their partials: the merge adds them up
            events = spread.take_counts(events, duplicates, batch.next_offsets)
        per_model: dict[str, list] = {}
        for _, event in events:
            epoch = event.epoch
            entry = per_model.get(event.model_id)
            if entry is None:
                entry = per_model[event.model_id] = [0, 0, epoch, epoch]
            entry[0 if event.__class__ is PredictionEvent else 1] += 1
            if epoch < entry[2]:
                entry[2] = epoch
            elif epoch > entry[3]:
                entry[3] = epoch
        counts = [
            repo.ModelCounts(model_id, predictions, labels, duplicates.get(model_id, 0), lo, hi)
            for model_id, (predictions, labels, lo, hi) in per_model.items()
        ]
        counts += [
            repo.ModelCounts(model_id, duplicates=n) for model_id, n in duplicates.items() if model_id not in per_model
        ]
        repo.add_model_counts_many(session, counts)
