"""One model version's concept monitor: its error stream, and the log loss as a second stream where a
classifier sends scores; the alerts they raise; its state as stored in ``concept_state``.

The log loss of the true class moves before the 0/1 error does when the model grows unsure or confidently
wrong. No validation estimate exists for it, so its baseline is production's first labels (at least 1,000)
and it has no ``deployment_gap``; its alerts say ``metric: log_loss`` and have ids of their own.
"""

from __future__ import annotations

from undertow.models.drift.concept_state import ConceptState, Context, LogLossState, concept_codec, legacy_format
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.error_stream import ErrorStream, Signal, StreamCounts
from undertow.models.drift.errors import MISCLASSIFICATION
from undertow.models.drift.production_baseline import floored_sd
from undertow.models.segments import Segment
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.output_events import Baseline, ConceptDrift, ConceptDriftAlert

LOG_LOSS_BASELINE_LABELS = 1000  # at least this many labels set the log loss's production baseline


class ErrorStreamMonitor:
    """``state``: a ``concept_state`` row (or anything with its columns); None for a new version."""

    def __init__(
        self,
        model_id: str,
        version: str,
        config: DriftConfig,
        mean: float | None,
        sd: float | None,
        state=None,
        error_sample: list[float] | None = None,
        segment: Segment | None = None,
    ):
        """``segment``: the one segment of the version's pairs this monitor watches (``mean``, ``sd`` and
        ``error_sample`` are then the segment's reference errors), named in its alerts."""
        self.model_id, self.version, self.config = model_id, version, config
        self.segment = segment
        # None where no validation estimate exists: the production baseline alone counts.
        validation = None if mean is None else (mean, floored_sd(mean, sd))
        self.log_loss_config = config.model_copy(
            update={"production_baseline_labels": max(config.production_baseline_labels, LOG_LOSS_BASELINE_LABELS)}
        )
        self.codec = concept_codec(Context(config, validation, error_sample), Context(self.log_loss_config, None, None))
        self.stored = state is not None
        loaded, counts = (None, None) if state is None else self._load(state)
        self.error = ErrorStream(config, validation, error_sample, loaded, counts, f"{model_id}@{version} error")
        self.log_loss: ErrorStream | None = None
        if loaded is not None and loaded.log_loss is not None:
            self.log_loss = self._log_loss_stream(loaded.log_loss)

    # The main stream's counters and baseline progress, as callers (bench/) read them off the monitor.
    in_episode = property(lambda self: self.error.episode.in_episode)
    episodes = property(lambda self: self.error.episode.episodes)
    silenced_alarms = property(lambda self: self.error.episode.silenced_alarms)
    refine = property(lambda self: self.error.baseline.refine)
    baseline_labels = property(lambda self: self.error.baseline.labels)

    def _load(self, row) -> tuple[ConceptState, StreamCounts]:
        number = (
            row.state_format
            if row.state_format is not None
            else legacy_format(row.detectors, self.config.pt_horizon_buckets)
        )
        counts = StreamCounts(
            labels=row.labels,
            error_sum=row.error_sum,
            in_episode=row.in_episode,
            episode_started_label=row.episode_started_label,
            episodes=row.episodes,
            silenced_alarms=row.silenced_alarms,
            calm_evaluations=row.calm_evaluations,
        )
        return self.codec.load(row.detectors, number), counts

    def _log_loss_stream(self, state: LogLossState | None = None) -> ErrorStream:
        return ErrorStream(
            self.log_loss_config,
            None,
            None,
            state,
            None if state is None else state.counts,
            f"{self.model_id}@{self.version} log loss",
        )

    def update(
        self, error: float, metric: str, label_ts: float, prediction_ts: float | None = None
    ) -> list[ConceptDriftAlert]:
        """Feed one error (at its label's and its prediction's event time); the alerts it raises."""
        signals = self.error.update(error, label_ts, prediction_ts)
        return [self._alert(s, "concept", metric, label_ts) for s in signals] if signals else []

    def update_log_loss(
        self, loss: float, label_ts: float, prediction_ts: float | None = None
    ) -> list[ConceptDriftAlert]:
        """Feed the log loss of one labelled prediction whose scores were sent; the alerts it raises."""
        if self.log_loss is None:
            self.log_loss = self._log_loss_stream()
        signals = self.log_loss.update(loss, label_ts, prediction_ts)
        return [self._alert(s, "concept_log_loss", "log_loss", label_ts) for s in signals] if signals else []

    def update_pair(self, pair) -> list[ConceptDriftAlert]:
        """A joined pair (``concept.stage.Pair``): its error, and its log loss where the classifier sent scores."""
        alerts = self.update(pair.error, pair.metric, pair.label_ts, pair.prediction_ts)
        if pair.score_loss is not None and pair.metric == MISCLASSIFICATION:
            alerts += self.update_log_loss(pair.score_loss, pair.label_ts, pair.prediction_ts)
        return alerts

    def _alert(self, signal: Signal, kind: str, metric: str, label_ts: float) -> ConceptDriftAlert:
        mean, sd = signal.baseline
        data = ConceptDrift(
            model_id=self.model_id,
            model_version=self.version,
            detector=signal.detector,
            metric=metric,
            value=signal.value,
            threshold=signal.threshold,
            unit=signal.unit,
            baseline=Baseline(mean=mean, sd=sd),
            recent_mean_error=signal.recent_mean_error,
            detected_at=cloudevents.rfc3339(label_ts),
            label_count=signal.label_count,
            severity=signal.severity,
            episode=signal.episode,
            change_started_at=None if signal.change_ts is None else cloudevents.rfc3339(signal.change_ts),
            segment=None if self.segment is None else self.segment.values,
        )
        name = signal.detector if signal.episode == "started" else signal.episode
        # A segment counts its own labels: its key keeps the ids apart from the whole stream's.
        where = () if self.segment is None else (self.segment.key,)
        return ConceptDriftAlert(
            id=cloudevents.event_id(self.model_id, self.version, kind, name, signal.label_count, *where),
            subject=self.model_id,
            time=cloudevents.rfc3339(label_ts),
            data=data,
        )

    def state(self) -> ConceptState:
        loss = (
            None
            if self.log_loss is None
            else LogLossState(**dict(self.log_loss.state()), counts=self.log_loss.counts())
        )
        return ConceptState(**dict(self.error.state()), log_loss=loss)

    def state_values(self) -> dict:
        """The ``concept_state`` row's columns: the counters, the blob and its format number."""
        blob, number = self.codec.dump(self.state())
        return {**self.error.counts().model_dump(), "detectors": blob, "state_format": number}
