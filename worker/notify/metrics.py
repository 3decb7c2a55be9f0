"""Prometheus metrics of ``undertow notify`` (registered in the service's /metrics through ``Service.collectors``).

- ``undertow_notify_deliveries_total{sink,outcome}``: attempts and their ends, counted by this process:
  ``delivered``, ``failed_attempt`` (every failed attempt, retried or not), ``dead_lettered`` (given up);
- ``undertow_notify_delivery_duration_seconds{sink}``: time of each attempt (the HTTP request);
- ``undertow_notify_pending{sink}``: deliveries waiting, backing off or collecting a digest, and
  ``undertow_notify_dead_letters{sink}``: dead-lettered and not retried; both read from the database at scrape
  time, by the process whose sender holds the sender lock (one per database), so a sum over processes is right.

Label values are the sink names of the config (bounded), every series pre-initialised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from undertow.storage import deliveries

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "failed_attempt", "dead_lettered")
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NotifyMetrics(Collector):
    def __init__(self, sinks: list[str], sessions: sessionmaker[Session], exporting: Callable[[], bool]):
        self.sinks = sinks
        self._sessions = sessions
        self._exporting = exporting  # whether this process exports the database gauges now
        self.deliveries = Counter(
            "undertow_notify_deliveries",
            "notification attempts and their ends, by sink and outcome (delivered, failed_attempt, dead_lettered)",
            ["sink", "outcome"],
            registry=None,
        )
        self.duration = Histogram(
            "undertow_notify_delivery_duration_seconds",
            "time of each delivery attempt (the HTTP request), by sink",
            ["sink"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        for sink in sinks:
            self.duration.labels(sink)
            for outcome in OUTCOMES:
                self.deliveries.labels(sink, outcome)

    def attempted(self, sink: str, seconds: float, delivered: bool, dead_lettered: bool) -> None:
        self.duration.labels(sink).observe(seconds)
        self.deliveries.labels(sink, "delivered" if delivered else "failed_attempt").inc()
        if dead_lettered:
            self.deliveries.labels(sink, "dead_lettered").inc()

    def describe(self) -> list[Metric]:
        return []  # collected lazily: the database may be away at registration

    def collect(self) -> Iterator[Metric]:
        yield from self.deliveries.collect()
        yield from self.duration.collect()
        if not self._exporting():
            return
        try:
            with self._sessions() as session:
                counted = deliveries.counts(session)
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the service down
            log.warning("notify database metrics unavailable: %s", exc)
            return
        pending = GaugeMetricFamily(
            "undertow_notify_pending",
            "deliveries waiting, backing off or collecting a digest, by sink",
            labels=["sink"],
        )
        dead = GaugeMetricFamily(
            "undertow_notify_dead_letters", "deliveries dead-lettered and not yet retried, by sink", labels=["sink"]
        )
        for sink in self.sinks:
            waiting = sum(counted.get((sink, status), 0) for status in deliveries.OPEN)
            pending.add_metric([sink], waiting)
            dead.add_metric([sink], counted.get((sink, deliveries.Status.DEAD), 0))
        yield pending
        yield dead
