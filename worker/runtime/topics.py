"""Topic names (from the configured prefix) and their idempotent creation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from undertow.errors import ConfigError

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

    @property
    def merge(self) -> str:
        """Internal: the partial windows and errors of spread models, keyed by model id (one merger each)."""
        return self.prefix + "merge"

    @staticmethod
    def dead_letter(topic: str) -> str:
        return topic + DEAD_LETTER_SUFFIX

    def all(self) -> list[str]:
        sources = [self.predictions, self.labels, self.retrain, self.models, self.merge]
        return sources + [self.alerts] + [self.dead_letter(t) for t in sources]


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
    inputs = [t for t in (topics.predictions, topics.labels) if t in existing]
    counts = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(inputs)} if inputs else {}
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"{topics.predictions} has {counts[topics.predictions]} partitions but {topics.labels} has "
            f"{counts[topics.labels]}: predictions and labels must be co-partitioned"
        )
    # A missing input topic gets its partner's partition count, whatever was asked.
    input_partitions = next(iter(counts.values()), partitions)
    for name in wanted:
        if name in existing:
            continue
        n = input_partitions if name in (topics.predictions, topics.labels) else partitions
        try:
            admin.create_topics([NewTopic(name, n, 1)])
            log.info("created topic %s with %d partitions", name, n)
        except TopicAlreadyExistsError:
            pass  # created concurrently by another process
    return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(wanted)}
