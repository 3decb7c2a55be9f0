"""The monitor's view of promotions and rollbacks on ``undertow.models``.

The champion itself is read from the registry once per batch
(``batch_champions``: the same database, the source of truth), so
predictions without a version follow a promotion or a rollback from the
next batch on, with the new version's reference, windows and detectors;
predictions naming a version keep theirs.
This stage takes the model events out of the batch before the other stages
see it, and logs each change; forged ones never get here (the parser
dead-letters them when a signing key is set).
"""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from models import registry
from worker.runtime.batch import Batch
from worker.runtime.output_events import ModelPromoted, ModelRejected

log = logging.getLogger(__name__)


class ModelEventsStage:
    """Takes the model events (records of ``models_topic``) out of a batch and logs them. A batch that
    read no partition of that topic (``Batch.next_offsets``, which ``build_batch`` fills for every record)
    has none, and is passed on without looking at its events."""

    def __init__(self, models_topic: str):
        self.models_topic = models_topic

    def reset(self) -> None:
        """Nothing cached."""

    def apply(self, session: Session, batch: Batch) -> None:
        if all(topic != self.models_topic for topic, _ in batch.next_offsets):
            return  # the common batch: predictions and labels only, no event to look at
        kept = []
        for position, event in batch.events:
            if isinstance(event, ModelPromoted):
                d = event.data
                log.info("model %s: champion is now version %s (%s by %s: %s); from %s[%d]@%d", d.model_id,
                         d.model_version, d.action, d.actor, d.reason, position.topic, position.partition,
                         position.offset)
            elif isinstance(event, ModelRejected):
                log.info("model %s: candidate %s rejected; champion stays %s", event.data.model_id,
                         event.data.model_version, event.data.champion_version)
            else:
                kept.append((position, event))
        batch.events = kept


def batch_champions(session: Session, batch: Batch) -> dict[str, str]:
    """The champion version of every model in the batch, read once per batch and shared by the stages:
    on PostgreSQL each statement sees the latest commit, so two reads could see a promotion in between."""
    champions = batch.shared.get("champions")
    if champions is None:
        champions = batch.shared["champions"] = registry.champions(
            session, sorted({event.model_id for _, event in batch.events}))
    return champions
