"""``undertow notify`` as a service of the shared runtime: alerts and model events into the delivery outbox.

The consume loop reads ``undertow.alerts`` and ``undertow.models``; its one
stage (``OutboxStage``) routes each event to its sinks and queues a
delivery per sink, in the transaction that commits the consumer offsets.
So an event is queued exactly once whatever crashes, and the sender
(``worker.notify.sender``, the service's background work) delivers what is
queued at least once.

A record notify cannot read (not an Undertow event, an event type of a
newer release, a retrain request) or, with ``UNDERTOW_SIGNING_KEY`` set, a
model event that is not signed with it, is skipped with a warning naming
its topic, partition and offset: those topics belong to the monitor and the
trainer, who dead-letter what they refuse; notify only reads them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent
from undertow.storage import deliveries
from undertow.worker.notify.config import NotifyConfig
from undertow.worker.notify.routing import Router
from undertow.worker.notify.sender import Sender
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.output_events import RetrainRequested, parse_event
from undertow.worker.runtime.service import Service, ServiceRunner
from undertow.worker.runtime.settings import NotifySettings
from undertow.worker.runtime.signing import verify
from undertow.worker.runtime.topics import Topics, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A record notify does not deliver, and why."""

    reason: str


class NotificationParser:
    def __init__(self, models_topic: str, signing_key: Any = None):
        self.models_topic = models_topic
        self.signing_key = signing_key

    def __call__(self, record: Any) -> Any:
        try:
            if record.topic == self.models_topic:
                verify(record, self.signing_key)
            event = parse_event(record.value or b"")
        except InvalidEvent as exc:
            return Skipped(str(exc))
        if isinstance(event, RetrainRequested):
            return Skipped("a retrain request is not news")
        return event


class OutboxStage:
    """Each event to the sinks its rules name, as one delivery per sink (or into the model's digest)."""

    def __init__(self, router: Router, clock: Callable[[], float] = time.time):
        self.router = router
        self.clock = clock
        self.queued = False  # since the sender was last woken

    def reset(self) -> None:
        """Nothing cached."""

    def apply(self, session: Session, batch: Batch) -> None:
        now = self.clock()
        for position, event in batch.events:
            if isinstance(event, Skipped):
                log.warning("%s[%d]@%d skipped: %s", position.topic, position.partition, position.offset, event.reason)
                continue
            raw = (position.value or b"").decode()
            for sink in self.router.sinks_for(event):
                queued = deliveries.add_event(
                    session,
                    sink=sink.name,
                    model_id=event.subject,
                    event_id=event.id,
                    event_type=event.type,
                    cloudevent=raw,
                    now=now,
                    digest_id=cloudevents.event_id("digest", sink.name, event.id),
                    group_seconds=sink.group_seconds,
                )
                self.queued = self.queued or queued is not None


def notify_service(settings: NotifySettings, config: NotifyConfig, sender: Sender, partitions: int = 3) -> Service:
    topics = Topics(settings.topic_prefix)
    stage = OutboxStage(Router(config))

    def prepare(admin: KafkaAdminClient) -> None:
        ensure_topics(admin, topics, partitions)
        sinks = ", ".join(f"{s.name} ({s.kind})" for s in config.sinks)
        log.info("notify: %s to %s", "every event" if config.rules is None else f"{len(config.rules)} rule(s)", sinks)
        named = {name for rule in config.rules or () for name in rule.sinks}
        for sink in config.sinks:
            if config.rules is not None and sink.name not in named:
                log.warning("sink %s: no rule names it, so it receives nothing", sink.name)

    def wake_sender() -> None:
        if stage.queued:
            stage.queued = False
            sender.wake()

    return Service(
        name="notify",
        topics=[topics.alerts, topics.models],
        parse=NotificationParser(topics.models, settings.signing_key),
        stages=[stage],
        prepare=prepare,
        on_idle=[wake_sender],
        background=sender.run,
        busy=sender.busy,
        collectors=[sender.metrics],
    )


class Notifier(ServiceRunner):
    """``undertow notify``, ready to ``run()``."""

    def __init__(self, settings: NotifySettings, config: NotifyConfig, partitions: int = 3):
        self.sender = Sender(settings, config)
        super().__init__(settings, notify_service(settings, config, self.sender, partitions))

    def run(self, until_idle: float | None = None) -> int:
        try:
            return super().run(until_idle)
        finally:
            self.sender.close()
