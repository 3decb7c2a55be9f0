"""The ingest stage: duplicate filtering and per-model counts."""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy.orm import Session

from storage import repo
from storage.repo import SeenKey
from worker.runtime.batch import Batch
from worker.runtime.events import PredictionEvent


class IngestStage:
    """Writes the counting state of a batch and removes duplicates from it.

    A duplicate is an event whose (kind, model_id, event_id) was processed
    within the last ``duplicate_horizon`` records of its source partition.
    After ``apply`` the batch holds only first occurrences, so later stages
    see each event once.
    """

    def __init__(self, duplicate_horizon: int):
        if duplicate_horizon < 1:
            raise ValueError("duplicate_horizon must be at least 1")
        self.duplicate_horizon = duplicate_horizon

    def reset(self) -> None:
        """Nothing cached: every read goes to the database."""

    def apply(self, session: Session, batch: Batch) -> None:
        batch.events = self._first_occurrences(session, batch.events)
        self._count(session, batch)
        for (topic, partition), next_offset in batch.next_offsets.items():
            repo.expire_seen(session, topic, partition, next_offset - self.duplicate_horizon)

    def _first_occurrences(self, session: Session, events: list) -> list:
        if not events:
            return events
        keys = [SeenKey("prediction" if isinstance(event, PredictionEvent) else "label", event.model_id,
                        event.event_id) for _, event in events]
        seen = repo.already_seen(session, keys)
        fresh, rows, duplicates = [], [], defaultdict(int)
        for key, (position, event) in zip(keys, events):
            if key in seen:
                duplicates[event.model_id] += 1
                continue
            seen.add(key)
            fresh.append((position, event))
            rows.append({"kind": key.kind, "model_id": key.model_id, "event_id": key.event_id,
                         "topic": position.topic, "partition": position.partition, "offset": position.offset})
        repo.remember_seen(session, rows)
        for model_id, n in duplicates.items():
            repo.add_model_counts(session, model_id, duplicates=n)
        return fresh

    @staticmethod
    def _count(session: Session, batch: Batch) -> None:
        per_model: dict[str, list] = {}
        for _, event in batch.events:
            epoch = event.epoch
            entry = per_model.setdefault(event.model_id, [0, 0, epoch, epoch])
            entry[0 if isinstance(event, PredictionEvent) else 1] += 1
            if epoch < entry[2]:
                entry[2] = epoch
            elif epoch > entry[3]:
                entry[3] = epoch
        for model_id, (predictions, labels, lo, hi) in per_model.items():
            repo.add_model_counts(session, model_id, predictions=predictions, labels=labels, min_ts=lo, max_ts=hi)
