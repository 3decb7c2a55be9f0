"""Keeps the served model on the registry's champion: at start-up, on model events, and every little while.

The registry is the source of truth; ``undertow.models`` only says when to
look. One thread: it positions a consumer at the end of the models topic
*before* reading the champion, so a promotion made in between is seen
either way, then loads the champion (``load_served``: SHA-256 checked,
warmed up with one prediction) and swaps the slot's one reference. A
version that fails to load is logged, counted and not tried again; the
previous version keeps serving. The registry is also checked every
``check_seconds``, so a missed event (broker away) only delays a swap.

Each check also reads whether the model is *spread* (``undertow models
spread``): the server then keys its events by event id instead of model id.
There is no event for that setting: a change is seen within ``check_seconds``.

The first version is not the follower's: ``load_champion`` loads it before
the server binds its port, and ``undertow serve`` exits saying why when it
cannot (no such model, no artifact, an artifact that will not load), rather
than answering 503 for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.orm import Session, sessionmaker

from undertow.errors import InvalidEvent, NotFound, UndertowError
from undertow.models import registry
from undertow.worker.runtime import signing
from undertow.worker.runtime.output_events import ModelPromoted, parse_event
from undertow.worker.runtime.settings import Settings
from undertow.worker.runtime.transport import TransientError, make_tail_consumer
from undertow.worker.server.served_model import MAX_BATCH_ROWS, ServedModel, load_served

log = logging.getLogger(__name__)


_LISTED_IDS = 10  # ids (or versions) named in the message: enough to spot a typo, still one readable line


def load_champion(
    sessions: sessionmaker[Session], model_id: str, max_rows: int = MAX_BATCH_ROWS, threads: int = 1
) -> ServedModel:
    """The champion of ``model_id``, loaded and warmed up, or an ``UndertowError`` saying why it cannot be.

    For start-up: a server with nothing it could ever serve would answer 503
    for ever, so the caller exits instead. Once serving, a version that will
    not load is only logged (``PromotionFollower.sync``): the old one serves.
    """
    with sessions() as session:
        version = registry.champions(session, [model_id]).get(model_id)
        if version is None:
            raise _no_champion(session, model_id)
        return load_served(registry.get_version(session, model_id, version), max_rows, threads)


def _no_champion(session: Session, model_id: str) -> NotFound:
    stages = [(row.version, row.stage) for row in registry.list_versions(session, model_id)]
    if stages:
        listed = ", ".join(f"{version} {stage}" for version, stage in stages[-_LISTED_IDS:])
        listed = ("..., " if len(stages) > _LISTED_IDS else "") + listed  # the newest, those likely promoted
        return NotFound(
            f"model {model_id!r} has no champion (versions: {listed}); promote one with `undertow models promote`"
        )
    return registry.not_registered(session, model_id)


class ModelSlot:
    """The one reference to the version being served; reading it is atomic, so is the swap.

    ``spread``: whether the registry says the model is spread, i.e. its events are keyed by event id (read
    once per request, so one request's events are keyed alike).
    """

    def __init__(self) -> None:
        self.current: ServedModel | None = None
        self.spread = False


class PromotionFollower:
    def __init__(
        self,
        settings: Settings,
        model_id: str,
        slot: ModelSlot,
        sessions: sessionmaker[Session],
        topic: str,
        on_swap: Callable[[str, str], None],
        check_seconds: float = 10.0,
        max_rows: int = 1000,
        threads: int = 1,
    ):
        self.settings, self.model_id, self.slot, self.sessions = settings, model_id, slot, sessions
        self.topic, self.on_swap, self.check_seconds, self.max_rows = topic, on_swap, check_seconds, max_rows
        self.threads = threads
        self._failed: set[tuple[str, str | None]] = set()  # (version, sha256) that would not load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="undertow-follower", daemon=True)

    def start(self) -> PromotionFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sync_spread(self, session: Session | None = None) -> bool:
        """Key events as the registry says (spread or not); True when that changed, which is logged."""
        if session is None:
            with self.sessions() as own:
                return self.sync_spread(own)
        spread = registry.is_spread(session, self.model_id)
        if spread == self.slot.spread:
            return False
        self.slot.spread = spread
        log.info(
            "model %s: %s",
            self.model_id,
            "spread: events are now keyed by event id (over every partition)"
            if spread
            else "no longer spread: events are now keyed by model id (one partition)",
        )
        return True

    def sync(self) -> bool:
        """Serve the registry's champion if it is not served yet, and key events as the registry says; True
        when a swap happened."""
        with self.sessions() as session:
            self.sync_spread(session)
            version = registry.champions(session, [self.model_id]).get(self.model_id)
            current = self.slot.current
            if version is None or (current is not None and current.version == version):
                return False
            row = registry.get_version(session, self.model_id, version)
            key = (version, row.artifact_sha256)
            if key in self._failed:
                return False
            try:
                served = load_served(row, self.max_rows, self.threads)
            except Exception as exc:  # noqa: BLE001 - whatever a model does on load, the old one keeps serving
                self._failed.add(key)
                # load_served's own errors already name the version and the cause; anything else gets its type.
                reason = str(exc) if isinstance(exc, UndertowError) else f"{type(exc).__name__}: {exc}"
                log.error(
                    "model %s version %s could not be served (%s); still serving %s",
                    self.model_id,
                    version,
                    reason,
                    "nothing" if current is None else current.version,
                )
                self.on_swap(version, "failed")
                return False
        self.slot.current = served
        log.info(
            "model %s: now serving version %s (was %s)",
            self.model_id,
            version,
            "none" if current is None else current.version,
        )
        self.on_swap(version, "loaded")
        return True

    def _run(self) -> None:
        consumer = None
        next_check = 0.0
        while not self._stop.is_set():
            if consumer is None:
                consumer = self._tail()
            if time.monotonic() >= next_check or consumer is None:
                self._sync_logged()
                next_check = time.monotonic() + self.check_seconds
            if consumer is None:
                self._stop.wait(min(self.check_seconds, 1.0))
                continue
            try:
                polled = consumer.poll(timeout_ms=500)
            except KafkaError as exc:
                log.warning(
                    "reading %s failed (%s); the registry is still checked every %.0f s",
                    self.topic,
                    exc,
                    self.check_seconds,
                )
                self._stop.wait(1.0)
                continue
            if any(self._concerns_us(r) for records in polled.values() for r in records):
                self._sync_logged()
        if consumer is not None:
            consumer.close()

    def _tail(self):
        try:
            consumer = make_tail_consumer(self.settings, f"undertow-server-{self.model_id}")
            partitions = [
                TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or ())
            ]
            if not partitions:
                consumer.close()
                log.warning("topic %s not found; following the registry only", self.topic)
                return None
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for tp in partitions:
                consumer.position(tp)  # resolve the end now, before the registry is read
            return consumer
        except (KafkaError, TransientError) as exc:
            log.warning("cannot follow %s yet (%s); following the registry only", self.topic, exc)
            return None

    def _concerns_us(self, record) -> bool:
        try:
            signing.verify(record, self.settings.signing_key)
            event = parse_event(record.value)
        except InvalidEvent as exc:
            log.warning("ignoring a model event at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            return False
        return isinstance(event, ModelPromoted) and event.data.model_id == self.model_id

    def _sync_logged(self) -> None:
        try:
            self.sync()
        except UndertowError as exc:
            log.error("model %s: checking the registry failed: %s", self.model_id, exc)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the thread
            log.error("model %s: checking the registry failed (%s: %s)", self.model_id, type(exc).__name__, exc)
