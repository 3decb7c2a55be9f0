"""Prediction and label events to Kafka without a request ever waiting for the broker.

A request puts its encoded records on a bounded queue and returns; one
sender thread owns the producer (created there, retried while the broker
is away) and hands the records to it. ``KafkaProducer.send`` can block up to
``max_block_ms`` while metadata is missing; only the sender thread ever
waits. kafka-python 3's producer buffers without a bound, so the sender
keeps at most ``max_pending`` records unacknowledged and waits for the broker
beyond that; the queue then fills. When the queue is full, or the producer
refuses a record or fails to deliver it, the record is counted by reason in
``undertow_server_events_dropped_total`` and logged: never silently lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError

log = logging.getLogger(__name__)

_STOP = object()


class EventEmitter:
    def __init__(
        self,
        make_producer: Callable[[], object],
        queue_size: int,
        max_pending: int,
        dropped: Callable[[str, int], None],
        emitted: Callable[[str], None],
        retry_seconds: float = 1.0,
    ):
        self._make_producer = make_producer
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._pending = threading.BoundedSemaphore(max_pending)
        self._dropped = dropped
        self._emitted = emitted
        self._retry_seconds = retry_seconds
        self._producer = None
        self._last_drop_log = 0.0
        self._thread = threading.Thread(target=self._run, name="undertow-emitter", daemon=True)

    def start(self) -> EventEmitter:
        self._thread.start()
        return self

    def emit(self, kind: str, topic: str, key: bytes, value: bytes) -> bool:
        """Queue one record of ``kind`` (prediction, label); False (counted, logged) when the queue is full."""
        try:
            self._queue.put_nowait((kind, topic, key, value))
            return True
        except queue.Full:
            self._drop("queue_full", topic, "the event queue is full (broker slow or away)")
            return False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, flush the producer, close it (waits at most about ``timeout``)."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Full:
            pass
        self._thread.join(max(deadline - time.monotonic(), 0.01))
        left = self._queue.qsize()
        if left:
            self._drop("shutdown", "", f"{left} events still queued at shutdown", count=left)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
            except KafkaError as exc:
                log.error("flushing the producer at shutdown failed: %s", exc)
            self._producer.close(timeout=1)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            kind, topic, key, value = item
            while self._producer is None:
                try:
                    self._producer = self._make_producer()
                except Exception as exc:  # noqa: BLE001 - broker away or misconfigured: keep trying, say why
                    log.warning("no producer yet (%s); events wait in the queue (%d)", exc, self._queue.qsize())
                    time.sleep(self._retry_seconds)  # the broker is away: nothing else to do in this thread
            self._pending.acquire()  # the broker is behind: wait here, not in a request
            try:
                future = self._producer.send(topic, key=key, value=value)
            except Exception as exc:  # noqa: BLE001 - metadata missing for max_block_ms, or a closed producer
                self._pending.release()
                self._drop("send_failed", topic, str(exc))
                continue
            future.add_callback(self._delivered, kind)
            future.add_errback(self._failed, topic)

    def _delivered(self, kind: str, _metadata) -> None:  # kafka-python appends the result
        self._pending.release()
        self._emitted(kind)

    def _failed(self, topic: str, exc) -> None:
        self._pending.release()
        self._drop("delivery_failed", topic, str(exc))

    def _drop(self, reason: str, topic: str, message: str, count: int = 1) -> None:
        self._dropped(reason, count)
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:  # a broker outage drops thousands: one line a second
            self._last_drop_log = now
            log.error(
                "event to %s dropped (%s): %s; see undertow_server_events_dropped_total", topic or "-", reason, message
            )
