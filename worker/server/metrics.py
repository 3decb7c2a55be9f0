"""The serving endpoint's Prometheus metrics, in a registry of its own (one per app).

``undertow_server_requests_total`` counts every answer of ``/predict`` and
``/labels`` by status, refusals (401, 413, 415, 422) and failures (500)
included; ``undertow_server_nonfinite_predictions_total`` counts the rows a
model predicted NaN or infinity for (answered 500, no event emitted);
``undertow_server_model_errors_total`` the requests the model raised on.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

ENDPOINTS = ("/predict", "/labels")
STATUSES = ("200", "202", "401", "413", "415", "422", "500", "503")
DROP_REASONS = ("queue_full", "send_failed", "delivery_failed", "shutdown")
# Serving latencies: half a millisecond to ten seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServerMetrics:
    def __init__(self, model_id: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "undertow_server_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "undertow_server_request_duration_seconds",
            "time to answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter("undertow_server_predictions", "rows predicted", registry=r)
        self.nonfinite = Counter(
            "undertow_server_nonfinite_predictions",
            "rows whose prediction or scores were NaN or infinite (answered 500, no event)",
            registry=r,
        )
        self.model_errors = Counter(
            "undertow_server_model_errors", "requests the model raised an error on (answered 500, no event)", registry=r
        )
        self.events = Counter(
            "undertow_server_events_emitted", "events the broker acknowledged, by kind", ["kind"], registry=r
        )
        self.events_dropped = Counter(
            "undertow_server_events_dropped",
            "events that could not be queued, sent or delivered, by reason",
            ["reason"],
            registry=r,
        )
        self.swaps = Counter(
            "undertow_server_model_swaps", "versions loaded (or that failed to load)", ["outcome"], registry=r
        )
        self.queued = Gauge("undertow_server_event_queue_size", "events waiting for the producer", registry=r)
        self.model = Info("undertow_server_model", "the version being served", registry=r)
        for endpoint in ENDPOINTS:
            self.latency.labels(endpoint)
            for status in STATUSES:
                self.requests.labels(endpoint, status)
        for kind in ("prediction", "label"):
            self.events.labels(kind)
        for reason in DROP_REASONS:
            self.events_dropped.labels(reason)
        for outcome in ("loaded", "failed"):
            self.swaps.labels(outcome)
        self.model_id = model_id
        self.model.info({"model_id": model_id, "version": ""})

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def dropped(self, reason: str, count: int = 1) -> None:
        self.events_dropped.labels(reason).inc(count)

    def emitted(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def swapped(self, version: str, outcome: str) -> None:
        self.swaps.labels(outcome).inc()
        if outcome == "loaded":
            self.model.info({"model_id": self.model_id, "version": version})
