"""The monitor service: predictions and labels in, state in SQL, alerts and retrain requests out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaAdminClient

from undertow.errors import InvalidEvent
from undertow.worker.monitor.concept import ConceptStage
from undertow.worker.monitor.data_drift import DataDriftStage
from undertow.worker.monitor.ingest import IngestStage
from undertow.worker.monitor.model_events import ModelEventsStage, warn_if_unsigned
from undertow.worker.monitor.registration import RegistrationStage, UnregisteredPolicy
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.monitor.schema import SchemaStage
from undertow.worker.runtime.events import (
    LabelEvent,
    PredictionEvent,
    parse_label,
    parse_prediction,
)
from undertow.worker.runtime.merge import CoPartitionMerger
from undertow.worker.runtime.output_events import ModelPromoted, ModelRejected, parse_event
from undertow.worker.runtime.service import Service, ServiceRunner
from undertow.worker.runtime.settings import MonitorSettings
from undertow.worker.runtime.signing import verify
from undertow.worker.runtime.topics import Topics, ensure_topics

# Held-back records are bounded by what kafka-python has fetched ahead (up to
# one 1 MiB fetch per partition, a few thousand records); this is a backstop.
MERGER_MAX_BUFFERED = 50_000

log = logging.getLogger(__name__)


class EventParser:
    """A prediction or label record to its event, or InvalidEvent saying why not.

    Besides the event contract: the record key must be the model id (the
    join relies on co-partitioning), and the event may be dated at most
    ``max_clock_skew`` seconds after ``clock()``: event time drives
    watermarks, windows and join expiry, and one event from the far future
    would move them for good.
    """

    def __init__(
        self,
        topics: Topics,
        max_event_bytes: int,
        max_clock_skew: float,
        clock: Callable[[], float] = time.time,
        signing_key=None,
    ):
        self.topics = topics
        self._models, self._predictions = topics.models, topics.predictions  # looked up per record
        self.max_event_bytes = max_event_bytes
        self.max_clock_skew = max_clock_skew
        self.clock = clock
        self.signing_key = signing_key

    def __call__(self, record) -> PredictionEvent | LabelEvent | ModelPromoted | ModelRejected:
        if record.topic == self._models:
            verify(record, self.signing_key)
            output = parse_event(record.value or b"")
            if not isinstance(output, (ModelPromoted, ModelRejected)):
                raise InvalidEvent(f"{output.type} does not belong on {record.topic}")
            return output
        parse = parse_prediction if record.topic == self._predictions else parse_label
        event = parse(record.value, self.max_event_bytes)
        if record.key != event.model_id.encode():
            raise InvalidEvent(
                f"record key {record.key!r} is not the model_id {event.model_id!r}: events must be "
                "keyed by model_id so predictions and labels of a model share a partition"
            )
        now = self.clock()
        if event.epoch > now + self.max_clock_skew:
            raise InvalidEvent(
                f"ts {event.ts.isoformat()} is more than {self.max_clock_skew:g} s ahead of the monitor's clock "
                f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}); see UNDERTOW_MAX_CLOCK_SKEW_SECONDS"
            )
        return event


def unregistered_policy(settings: MonitorSettings) -> UnregisteredPolicy:
    return UnregisteredPolicy(
        settings.wait_for_registration,
        settings.unregistered_max_pending,
        settings.unregistered_ttl_seconds,
        settings.unregistered_tracked_ids,
        settings.unregistered_warn_interval_seconds,
    )


def monitor_service(settings: MonitorSettings, partitions: int = 3, clock: Callable[[], float] = time.time) -> Service:
    """The monitor as a service of the shared runtime: its topics, parser and stages."""
    topics = Topics(settings.topic_prefix)
    policy = RetrainPolicy(topics.retrain, settings.signing_key)

    def prepare(admin: KafkaAdminClient) -> None:
        # Said here, at the start of a run (past the single-writer lock and the broker check), not when the
        # service is built: a start refused for another reason then stays one line.
        warn_if_unsigned(settings, log)
        ensure_topics(admin, topics, partitions)

    return Service(
        name="monitor",
        topics=[topics.predictions, topics.labels, topics.models],
        parse=EventParser(
            topics, settings.max_event_bytes, settings.max_clock_skew_seconds, clock, settings.signing_key
        ),
        stages=[
            ModelEventsStage(topics.models),
            RegistrationStage(unregistered_policy(settings), clock),
            SchemaStage(settings.schema_warn_interval_seconds, clock),
            IngestStage(settings.duplicate_horizon),
            DataDriftStage(topics.alerts, policy),
            ConceptStage(
                topics.alerts,
                policy,
                settings.join_ttl_seconds,
                settings.join_max_pending,
                settings.pairs_retention,
                clock,
            ),
        ],
        make_intake=lambda: CoPartitionMerger(topics.predictions, topics.labels, max_buffered=MERGER_MAX_BUFFERED),
        prepare=prepare,
    )


class Monitor(ServiceRunner):
    """The monitor, ready to ``run()``."""

    def __init__(self, settings: MonitorSettings, partitions: int = 3):
        super().__init__(settings, monitor_service(settings, partitions))
        self.topics = Topics(settings.topic_prefix)
