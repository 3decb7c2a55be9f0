"""What a person reads about an event: the model, what drifted, how badly, the value against its threshold,
since when, and what happens next. Slack messages and Alertmanager annotations are made of these.

The value against its threshold comes from the report's formatters
(``worker.report.alerts``): one definition of which number an alert compares
with which threshold, in the same unit. What the event does not carry (the
thresholds of the version's configuration, when its episode began, whether
a retrain request followed) comes from a ``Context``, read from the
database by the sender, or defaults when there is none (``notify test``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from undertow.models.drift.config import DriftConfig
from undertow.models.profile import PREDICTION_FEATURE
from undertow.worker.report.alerts import detail
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.output_events import ModelPromoted, ModelRejected

TEST_TYPE = "undertow.notify.test"

KINDS = {
    "undertow.drift.data": "Data drift",
    "undertow.drift.prediction": "Prediction drift",
    "undertow.drift.dataset": "Dataset drift",
    "undertow.drift.multivariate": "Multivariate drift",
    "undertow.drift.dependence": "Dependence drift",
    "undertow.performance.estimated": "Estimated accuracy drop",
    "undertow.drift.concept": "Concept drift",
}


class Context(Protocol):
    def drift_config(self, model_id: str, version: str) -> DriftConfig: ...

    def episode_started_at(self, event: Any) -> float | None: ...

    def retrain_request(self, event: Any) -> str | None: ...


class NoContext:
    """No database: the default thresholds, no episode history, no retrain requests."""

    def drift_config(self, model_id: str, version: str) -> DriftConfig:
        return DriftConfig()

    def episode_started_at(self, event: Any) -> float | None:
        return None

    def retrain_request(self, event: Any) -> str | None:
        return None


@dataclass(frozen=True)
class Notice:
    model_id: str
    version: str | None
    title: str  # one line: "Data drift in x2: significant (started)"
    what: str  # what drifted, or what changed
    severity: str | None
    phase: str | None  # the episode's phase (started, escalated, ended, deployment_gap), or the model action
    value: str  # the value against its threshold, with its unit
    since: str | None  # RFC 3339: when the episode began
    next_step: str
    time: str  # the event's time
    event_id: str
    event_type: str


def _what(event: Any) -> str:
    d = event.data
    feature = getattr(d, "feature", None)
    if feature == PREDICTION_FEATURE:
        return "the model's output (prediction drift)"
    if feature is not None:
        return f"feature {feature}"
    if event.type == "undertow.drift.concept":
        return f"the model's {d.metric.replace('_', ' ')} ({d.detector.replace('_', ' ')})"
    if event.type == "undertow.drift.dataset":
        return f"{len(d.drifted_features)} input(s): {', '.join(d.drifted_features[:8])}"
    if event.type == "undertow.drift.multivariate":
        return "the joint distribution of the numeric inputs"
    if event.type == "undertow.drift.dependence":
        if not d.pairs:
            return "how the numeric inputs move together"
        a, b = d.pairs[0].features
        return f"{a} and {b} move together differently, though each on its own may look as before"
    if event.type == "undertow.performance.estimated":
        return "estimated accuracy"
    return event.type.removeprefix("undertow.")


def _since(event: Any, context: Context) -> str | None:
    d = event.data
    if d.episode == "started":
        started = getattr(d, "change_started_at", None)
        return started or event.time
    if d.episode == "deployment_gap":
        return None
    at = context.episode_started_at(event)
    return None if at is None else cloudevents.rfc3339(at)


def _alert_next(event: Any, context: Context, config: DriftConfig) -> str:
    d = event.data
    model = d.model_id
    if d.episode == "ended":
        return "Nothing to do: back under the threshold; the episode is closed."
    if d.episode == "improved":
        return (
            "The error fell inside the episode but stays above the baseline: the episode stays open until it is "
            f"back; see `undertow report --model-id {model}`."
        )
    request = context.retrain_request(event)
    if request is not None:
        return (
            f"Retraining requested ({request}): the trainer trains a candidate and promotes it only if the gate "
            f"shows it is better. Follow it with `undertow retrain list --model-id {model}` (picked up by a trainer?) "
            f"and `undertow runs list --model-id {model}`."
        )
    if event.type == "undertow.drift.concept":
        if d.episode == "deployment_gap":
            return "A one-off notice: production error is above the validation estimate; no retraining follows."
        return (
            "No retrain request this time (one is open already, or the cooldown runs); "
            f"see `undertow retrain list --model-id {model}`."
        )
    return (
        f"The monitor keeps checking every window; the episode ends after {config.end_after} window(s) under the "
        f"exit threshold. Look at `undertow report --model-id {model}`."
    )


def alert_notice(event: Any, context: Context) -> Notice:
    d = event.data
    config = context.drift_config(d.model_id, d.model_version)
    shown = detail(event.model_dump(mode="json"), {d.model_version: config}, config)
    kind = KINDS.get(event.type, event.type)
    what = _what(event)
    value = f"{shown.measure}: {shown.value} against {shown.threshold}" if shown.measure else shown.value
    return Notice(
        model_id=d.model_id,
        version=d.model_version,
        title=f"{kind} in {d.model_id} v{d.model_version} ended"
        if d.episode == "ended"
        else f"{kind} in {d.model_id} v{d.model_version}: {d.severity} ({d.episode.replace('_', ' ')})",
        what=what + (f"; {shown.note}" if shown.note else ""),
        severity=d.severity,
        phase=d.episode,
        value=value,
        since=_since(event, context),
        next_step=_alert_next(event, context, config),
        time=event.time,
        event_id=event.id,
        event_type=event.type,
    )


def rejected_notice(event: ModelRejected) -> Notice:
    d = event.data
    return Notice(
        model_id=d.model_id,
        version=d.model_version,
        title=f"Candidate {d.model_version} of {d.model_id} rejected by the gate",
        what=f"candidate version {d.model_version} against champion {d.champion_version}",
        severity=None,
        phase="rejected",
        value="; ".join(d.reasons) or "no reason recorded",
        since=None,
        next_step=f"Version {d.champion_version} stays champion. The run: `undertow runs show --run-id {d.run_id}`.",
        time=event.time,
        event_id=event.id,
        event_type=event.type,
    )


def promoted_notice(event: ModelPromoted) -> Notice:
    d = event.data
    verb = "rolled back to" if d.action == "rolled_back" else "promoted:"
    return Notice(
        model_id=d.model_id,
        version=d.model_version,
        title=f"{d.model_id} {verb} version {d.model_version}",
        what=f"champion {d.previous_version or 'none'} → {d.model_version} ({d.action.replace('_', ' ')} by {d.actor})",
        severity=None,
        phase=d.action,
        value=d.reason,
        since=event.time,
        next_step="`undertow serve` switches to it without dropping a request; the monitor follows it from the "
        "next batch.",
        time=event.time,
        event_id=event.id,
        event_type=event.type,
    )


def notice_of_test(event: dict[str, Any]) -> Notice:
    return Notice(
        model_id=str(event.get("subject", "undertow")),
        version=None,
        title="Test message from undertow notify",
        what="nothing: this is a test",
        severity=None,
        phase="test",
        value=str(event.get("data", {}).get("message", "")),
        since=None,
        next_step="Nothing to do: if you read this, the sink works.",
        time=str(event["time"]),
        event_id=str(event["id"]),
        event_type=TEST_TYPE,
    )


def notice(event: Any, context: Context) -> Notice:
    """The notice of an Undertow event (parsed), or of a test message (a dict)."""
    if isinstance(event, dict):
        return notice_of_test(event)
    if isinstance(event, ModelRejected):
        return rejected_notice(event)
    if isinstance(event, ModelPromoted):
        return promoted_notice(event)
    return alert_notice(event, context)
