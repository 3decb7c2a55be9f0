"""The monitor's view of promotions and rollbacks on ``undertow.models``.

The champion itself is read from the registry once per batch
(``batch_champions``: the same database, the source of truth), so
predictions without a version follow a promotion or a rollback from the
next batch on, with the new version's reference, windows and detectors;
predictions naming a version keep theirs.
This stage takes the model events out of the batch before the other stages
see it, and logs each change. Forged ones are acted on by nothing: with a
signing key set the parser dead-letters those not signed with it; key or
not, an event naming a model that is not registered or a version that does
not exist is dead-lettered here (``check_known``), never logged as a change.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent
from undertow.models import registry
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import PredictionEvent
from undertow.worker.runtime.output_events import ModelPromoted, ModelRejected

log = logging.getLogger(__name__)

UNSIGNED_NOTICE = (
    "control events are unsigned (UNDERTOW_SIGNING_KEY is not set): acting only on those for "
    "registered models and existing versions; set a key in production"
)


def warn_if_unsigned(settings, logger: logging.Logger) -> None:
    """Log ``UNSIGNED_NOTICE`` once, at start-up, when no signing key is set (the monitor, trainer and serve).

    Without a key anyone who can write to the control topics can make a
    service act; saying so at every start keeps it from going unnoticed.
    """
    if settings.signing_key is None:
        logger.warning(UNSIGNED_NOTICE)


def check_known(session: Session, what: str, model_id: str, *versions: str | None) -> None:
    """Raise InvalidEvent (one line, saying which) unless ``model_id`` is registered and every version
    given exists in the registry; None stands for no version (e.g. no previous champion).

    The check a control event passes before anything acts on it, signing key or not: without a key, it is
    what stops a forged event from training or being logged as a change of a model that is not there.
    """
    for version in versions:
        if version is not None and registry.find_version(session, model_id, version) is None:
            break
    else:
        return
    if not registry.registered(session, [model_id]):
        raise InvalidEvent(f"{what} names model {model_id!r}, which is not registered: not acted on")
    raise InvalidEvent(f"{what} names version {version!r} of model {model_id!r}, which does not exist: not acted on")


class ModelEventsStage:
    """Takes the model events (records of ``models_topic``) out of a batch and logs them. A batch that
    read no partition of that topic (``Batch.next_offsets``, which ``build_batch`` fills for every record)
    has none, and is passed on without looking at its events.

    An event naming a model or version the registry does not have raises InvalidEvent: the runtime then
    isolates that record and dead-letters it with the reason, and the rest of the batch commits.
    """

    def __init__(self, models_topic: str):
        self.models_topic = models_topic

    def reset(self) -> None:
        """Nothing cached."""

    def apply(self, session: Session, batch: Batch) -> None:
        if all(topic != self.models_topic for topic, _ in batch.next_offsets):
            return  # the common batch: predictions and labels only, no event to look at
        models = [event for _, event in batch.events if isinstance(event, (ModelPromoted, ModelRejected))]
        # Every event is checked before any is logged: a failed check rolls the batch back and it is
        # processed again without the culprit, which would otherwise log the good ones twice.
        for event in models:
            d = event.data
            other = d.previous_version if isinstance(event, ModelPromoted) else d.champion_version
            check_known(session, f"{event.type} {event.id!r}", d.model_id, d.model_version, other)
        kept = []
        for position, event in batch.events:
            if isinstance(event, ModelPromoted):
                d = event.data
                log.info(
                    "model %s: champion is now version %s (%s by %s: %s); from %s[%d]@%d",
                    d.model_id,
                    d.model_version,
                    d.action,
                    d.actor,
                    d.reason,
                    position.topic,
                    position.partition,
                    position.offset,
                )
            elif isinstance(event, ModelRejected):
                log.info(
                    "model %s: candidate %s rejected; champion stays %s",
                    event.data.model_id,
                    event.data.model_version,
                    event.data.champion_version,
                )
            else:
                kept.append((position, event))
        batch.events = kept


def batch_champions(session: Session, batch: Batch) -> dict[str, str]:
    """The champion version of every model in the batch, read once per batch and shared by the stages:
    on PostgreSQL each statement sees the latest commit, so two reads could see a promotion in between."""
    champions = batch.shared.get("champions")
    if champions is None:
        champions = batch.shared["champions"] = registry.champions(
            session, sorted({event.model_id for _, event in batch.events})
        )
    return champions


PREDICTION_GROUPS = "prediction_groups"  # Batch.shared key; a stage that takes events out of the batch drops it


def batch_prediction_groups(session: Session, batch: Batch) -> dict[tuple[str, str], list[tuple[Any, PredictionEvent]]]:
    """The batch's predictions by model version (the event's, else the champion's), in batch order, grouped
    once per batch for the schema and data-drift stages. Predictions with neither are left out. A stage that
    takes events out of the batch after the first call drops the groups (``batch.shared``) or updates them."""
    groups = batch.shared.get(PREDICTION_GROUPS)
    if groups is None:
        champions = batch_champions(session, batch)
        grouped: dict[tuple[str, str], list] = defaultdict(list)
        for item in batch.events:
            event = item[1]
            if event.__class__ is PredictionEvent:
                version = event.model_version or champions.get(event.model_id)
                if version is not None:
                    grouped[(event.model_id, version)].append(item)
        groups = batch.shared[PREDICTION_GROUPS] = dict(grouped)
    return groups
