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
from undertow.worker.monitor.spread.merge_stage import MergeStage
from undertow.worker.monitor.spread.partial import Partial
from undertow.worker.monitor.spread.partial import decode as decode_partial
from undertow.worker.monitor.spread.partition_stage import (
    KeyedByEventId,
    SpreadEmitStage,
    SpreadRoutingStage,
    SpreadTopology,
)
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

# The merger pauses a side at merge.HOLD_AT (20,000) records waiting, so held-back records are bounded by
# that plus what kafka-python had fetched ahead (a 1 MiB fetch or two per partition); this is a backstop for
# a partner that cannot be read.
MERGER_MAX_BUFFERED = 50_000

log = logging.getLogger(__name__)


class EventParser:
    """A prediction or label record to its event, or InvalidEvent saying why not.

    Besides the event contract: the record key must be the model id, or the
    event id for a spread model (the join relies on co-partitioning), and the event may be dated at most
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
        self._models, self._predictions, self._merge = topics.models, topics.predictions, topics.merge  # per record
        # The fast path of parse_batch: the event topics' validators (any other topic takes __call__).
        self._validators = {
            topics.predictions: PredictionEvent.__pydantic_validator__.validate_json,
            topics.labels: LabelEvent.__pydantic_validator__.validate_json,
        }
        self.keyed_by_event_id = KeyedByEventId()
        self.max_event_bytes = max_event_bytes
        self.max_clock_skew = max_clock_skew
        self.clock = clock
        self.signing_key = signing_key

    def __call__(self, record) -> PredictionEvent | LabelEvent | ModelPromoted | ModelRejected | Partial:
        if record.topic == self._models:
            verify(record, self.signing_key)
            output = parse_event(record.value or b"")
            if not isinstance(output, (ModelPromoted, ModelRejected)):
                raise InvalidEvent(f"{output.type} does not belong on {record.topic}")
            return output
        if record.topic == self._merge:
            return decode_partial(record.value, record.headers)
        parse = parse_prediction if record.topic == self._predictions else parse_label
        event = parse(record.value, self.max_event_bytes)
        self._check(record, event, self.clock())
        return event

    def parse_batch(self, records) -> tuple[list[tuple], list[tuple]]:
        """``self(record)`` for every record: the events with their records and the refused records with why,
        each in the records' order.

        One loop without a call per record for the common case: bench/stages.py's validate step 13 % faster
        than ``self(record)`` per record (the calls, the topic dispatch, a clock reading per record). The
        clock is read once: it only moves forward while the batch is validated, so an event checked against
        the batch's start is checked at least as strictly, by the milliseconds validation takes.
        """
        now = self.clock()
        limit = now + self.max_clock_skew
        validators, max_bytes = self._validators, self.max_event_bytes
        events: list[tuple] = []
        rejected: list[tuple] = []
        for record in records:
            validate = validators.get(record.topic)
            value = record.value
            try:
                if validate is None or not value or len(value) > max_bytes:
                    event = self(record)  # other topics, and the records refused before parsing
                else:
                    try:
                        event = validate(value)
                    except ValueError:  # pydantic's ValidationError: rare, so the record's own path validates
                        self(record)  # again to raise the InvalidEvent that says why
                        raise
                    if record.key != event.model_id.encode() or event.epoch > limit:
                        self._check(record, event, now)
            except InvalidEvent as exc:
                rejected.append((record, exc))
            else:
                events.append((record, event))
        return events, rejected

    def _check(self, record, event: PredictionEvent | LabelEvent, now: float) -> None:
        """The record key and the event's time; InvalidEvent if either is refused."""
        if record.key != event.model_id.encode():
            if record.key != event.event_id.encode():
                raise InvalidEvent(
                    f"record key {record.key!r} is not the model_id {event.model_id!r}: events must be keyed by "
                    "model_id (or, for a spread model, by event_id) so a prediction and its label share a partition"
                )
            self.keyed_by_event_id.models.add(event.model_id)  # allowed for spread models: the routing stage checks
        if event.epoch > now + self.max_clock_skew:
            raise InvalidEvent(
                f"ts {event.ts.isoformat()} is more than {self.max_clock_skew:g} s ahead of the monitor's clock "
                f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}); see UNDERTOW_MAX_CLOCK_SKEW_SECONDS"
            )


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

    topology = SpreadTopology(partitions)

    def prepare(admin: KafkaAdminClient) -> None:
        # Said here, at the start of a run (past the single-writer lock and the broker check), not when the
        # service is built: a start refused for another reason then stays one line.
        warn_if_unsigned(settings, log)
        counts = ensure_topics(admin, topics, partitions)
        topology.partitions = counts.get(topics.predictions, partitions)

    parser = EventParser(topics, settings.max_event_bytes, settings.max_clock_skew_seconds, clock, settings.signing_key)
    data_drift = DataDriftStage(topics.alerts, policy)
    concept = ConceptStage(
        topics.alerts,
        policy,
        settings.join_ttl_seconds,
        settings.join_max_pending,
        settings.pairs_retention,
        clock,
    )
    return Service(
        name="monitor",
        topics=[topics.predictions, topics.labels, topics.models, topics.merge],
        parse=parser,
        stages=[
            ModelEventsStage(topics.models),
            MergeStage(topics.merge, data_drift, concept, settings.spread_merge_wait_seconds),
            RegistrationStage(unregistered_policy(settings), clock),
            SchemaStage(settings.schema_warn_interval_seconds, clock),
            SpreadRoutingStage(parser.keyed_by_event_id, topology),
            IngestStage(settings.duplicate_horizon),
            data_drift,
            concept,
            SpreadEmitStage(topics.merge),
        ],
        make_intake=lambda: CoPartitionMerger(topics.predictions, topics.labels, max_buffered=MERGER_MAX_BUFFERED),
        prepare=prepare,
    )


class Monitor(ServiceRunner):
    """The monitor, ready to ``run()``."""

    def __init__(self, settings: MonitorSettings, partitions: int = 3):
        super().__init__(settings, monitor_service(settings, partitions))
        self.topics = Topics(settings.topic_prefix)
