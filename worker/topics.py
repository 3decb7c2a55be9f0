"""Topic names (from the configured prefix) and their idempotent creation."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from storage.errors import ConfigError

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".DLT"


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def predictions(self) -> str:
        return self.prefix + "predictions"

    @property
    def labels(self) -> str:
        return self.prefix + "labels"

    @property
    def alerts(self) -> str:
        return self.prefix + "alerts"

    @property
    def retrain(self) -> str:
        return self.prefix + "retrain"

    @property
    def models(self) -> str:
        return self.prefix + "models"

    @staticmethod
    def dead_letter(topic: str) -> str:
        return topic + DEAD_LETTER_SUFFIX

    def all(self) -> list[str]:
        sources = [self.predictions, self.labels, self.retrain]
        return sources + [self.alerts, self.models] + [self.dead_letter(t) for t in sources]


def ensure_topics(admin: KafkaAdminClient, topics: Topics, partitions: int) -> dict[str, int]:
    """Create missing topics; check that predictions and labels are co-partitioned.

    Returns the partition count of every topic. Existing topics are left as
    they are (partition counts are never changed: adding partitions would
    move models to other partitions and break the local join).
    """
    if partitions < 1:
        raise ConfigError("--partitions must be at least 1")
    wanted = topics.all()
    existing = set(admin.list_topics())
    missing = [name for name in wanted if name not in existing]
    for name in missing:
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
            log.info("created topic %s with %d partitions", name, partitions)
        except TopicAlreadyExistsError:
            pass  # created concurrently by another process
    counts = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(wanted)}
    if counts.get(topics.predictions) != counts.get(topics.labels):
        raise ConfigError(
            f"{topics.predictions} has {counts.get(topics.predictions)} partitions but {topics.labels} has "
            f"{counts.get(topics.labels)}: predictions and labels must be co-partitioned")
    return counts
