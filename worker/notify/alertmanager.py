"""Alertmanager sinks: ``POST <url>/api/v2/alerts`` with a JSON list of alerts.

An alert's labels identify it (Alertmanager deduplicates by them):
``alertname`` (``UndertowDataDrift``, ``UndertowConceptDrift``, ...),
``model_id``, ``model_version``, ``type`` (the CloudEvent type), ``feature``
for data and prediction drift, ``segment`` for a segment's alert (``region=west``), ``severity`` (``moderate`` or
``significant``), and the sink's own ``labels``. The annotations say what a
person reads (summary, description, value, since, next step, event id).

An episode's alerts keep their labels, except severity:

- ``started``, ``escalated`` (and ``deployment_gap``, once): the alert at the
  event's severity fires, ``endsAt`` ``resolve_after_seconds`` from now (an
  episode that sends nothing for that long stops firing by itself);
  an escalation or an improvement (a fall inside the episode) also resolves
  the alert at the other severity;
- ``ended``: the alerts at both severities are resolved: ``endsAt`` is the
  event's time (never later than now).
"""

from __future__ import annotations

import json
from typing import Any

from undertow.worker.notify.config import AlertmanagerSink
from undertow.worker.notify.notice import Context, Notice, notice
from undertow.worker.notify.request import Message, Request
from undertow.worker.notify.segments import segment_of
from undertow.worker.runtime import cloudevents

PATH = "/api/v2/alerts"
ALERT_NAMES = {
    "undertow.drift.data": "UndertowDataDrift",
    "undertow.drift.prediction": "UndertowPredictionDrift",
    "undertow.drift.dataset": "UndertowDatasetDrift",
    "undertow.drift.multivariate": "UndertowMultivariateDrift",
    "undertow.drift.dependence": "UndertowDependenceDrift",
    "undertow.performance.estimated": "UndertowEstimatedAccuracyDrop",
    "undertow.drift.concept": "UndertowConceptDrift",
    "undertow.notify.test": "UndertowNotifyTest",
}
FIRING_SEVERITIES = ("moderate", "significant")
TEST_FIRES_SECONDS = 300.0  # a test alert resolves by itself after five minutes


def labels_of(sink: AlertmanagerSink, event: Any, n: Notice) -> dict[str, str]:
    base = {
        "alertname": ALERT_NAMES.get(n.event_type, "UndertowAlert"),
        "model_id": n.model_id,
        "type": n.event_type,
        **sink.labels,
    }
    if n.version is not None:
        base["model_version"] = n.version
    feature = None if isinstance(event, dict) else getattr(event.data, "feature", None)
    if feature is not None:
        base["feature"] = feature
    segment = segment_of(event)
    if segment is not None:  # a segment's episode is an alert of its own beside the whole stream's
        base["segment"] = segment
    return base


def annotations_of(n: Notice) -> dict[str, str]:
    found = {
        "summary": n.title,
        "description": f"{n.what}. {n.value}.",
        "value": n.value,
        "next": n.next_step,
        "event_id": n.event_id,
    }
    if n.since:
        found["since"] = n.since
    return found


def _alert(sink: AlertmanagerSink, lbls: dict[str, str], n: Notice, starts: float, ends: float) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": lbls,
        "annotations": annotations_of(n),
        "startsAt": cloudevents.rfc3339(starts),
        "endsAt": cloudevents.rfc3339(max(ends, starts)),
    }
    if sink.generator_url:
        alert["generatorURL"] = sink.generator_url
    return alert


def alerts_for(sink: AlertmanagerSink, event: Any, n: Notice, now: float) -> list[dict[str, Any]]:
    """The alerts one event fires or resolves (see the module docstring)."""
    at = cloudevents.epoch(n.time)
    base = labels_of(sink, event, n)
    if n.phase == "test":
        return [_alert(sink, {**base, "severity": "info"}, n, now, now + TEST_FIRES_SECONDS)]
    began = cloudevents.epoch(n.since) if n.since else at
    if n.phase == "ended":
        ends = min(at, now)
        return [_alert(sink, {**base, "severity": s}, n, min(began, ends), ends) for s in FIRING_SEVERITIES]
    firing = _alert(sink, {**base, "severity": str(n.severity)}, n, began, max(now, at) + sink.resolve_after_seconds)
    resolved = [
        _alert(sink, {**base, "severity": s}, n, min(began, now), now)
        for s in FIRING_SEVERITIES
        if n.phase in ("escalated", "improved", "changed") and s != n.severity
    ]
    return [firing, *resolved]


def payload(sink: AlertmanagerSink, message: Message, context: Context, now: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in message.events():
        out.extend(alerts_for(sink, event, notice(event, context), now))
    return out


def request(sink: AlertmanagerSink, message: Message, context: Context, now: float) -> Request:
    body = json.dumps(payload(sink, message, context, now), separators=(",", ":")).encode()
    return Request(sink.url.rstrip("/") + PATH, body, {"content-type": "application/json"})
