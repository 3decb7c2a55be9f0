"""One error stream of a model version (its 0/1 or absolute error, or its log loss): the production baseline,
the detector bank and the episode, composed. ``update`` returns what the stream has to say as ``Signal``s;
turning them into alerts is the monitor's business."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from undertow.models.drift.concept_episode import Episode, EpisodeCounts, EpisodeState
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detector_bank import BankState, DetectorBank
from undertow.models.drift.production_baseline import BaselineState, DeploymentGap, ProductionBaseline


class StreamState(BaseModel):
    """A stream's stored state, but for its counters."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    detectors: BankState
    production: BaselineState
    episode: EpisodeState


class StreamCounts(EpisodeCounts):
    labels: int = 0
    error_sum: float = 0.0


@dataclass(frozen=True)
class Signal:
    """An alert's content, as the stream saw it at that label."""

    detector: str
    episode: str  # deployment_gap | started | escalated | improved | ended
    value: float
    threshold: float | None
    baseline: tuple[float, float]  # mean and sd the value is measured against
    recent_mean_error: float | None  # the rolling mean's plain mean, in error units
    label_count: int
    unit: str = "baseline_sd"
    severity: str = "significant"
    change_ts: float | None = None


class ErrorStream:
    def __init__(
        self,
        config: DriftConfig,
        validation: tuple[float, float] | None,
        validation_sample: list[float] | None,
        state: StreamState | None = None,
        counts: StreamCounts | None = None,
        describe: str = "",
    ):
        counts = counts or StreamCounts()
        self.config, self.describe = config, describe
        self.labels, self.error_sum = counts.labels, counts.error_sum
        self.baseline = ProductionBaseline(
            config, validation, validation_sample, None if state is None else state.production, describe
        )
        # While the production baseline is collected the detectors are silent, and are rebuilt (and
        # calibrated) once it is set: calibrating the placeholders would be wasted.
        self.baseline.calibrate(validation_sample if not self.baseline.collecting else None)
        self.bank = self._new_bank()
        if state is not None:
            self.bank.from_state(state.detectors)
        self.episode = Episode(config, counts, None if state is None else state.episode)

    def _new_bank(self, since: float | None = None) -> DetectorBank:
        b = self.baseline
        return DetectorBank(self.config, *b.calibrated_thresholds(), b.labels, b.skewness, since)

    def update(self, error: float, label_ts: float, prediction_ts: float | None = None) -> list[Signal]:
        """Feed one error (at its label's and its prediction's event time); what it gives rise to."""
        self.labels += 1
        self.error_sum += error
        baseline, episode = self.baseline, self.episode
        if baseline.collected is not None:
            return self._collect(error, prediction_ts, label_ts)
        signals: list[Signal] = []
        if baseline.refine is not None and not episode.in_episode:
            signals = self._refine(error)
        z = (error - baseline.mean) / baseline.sd
        predicted_at = label_ts if prediction_ts is None else prediction_ts
        fired = self.bank.update(z, predicted_at)
        if episode.in_episode:
            episode.silenced_alarms += len(fired)
            return self._during_episode(z, predicted_at, label_ts)
        if fired:
            signals.append(self._start(fired[0], predicted_at))
        return signals

    def _collect(self, error: float, prediction_ts: float | None, label_ts: float) -> list[Signal]:
        if not self.baseline.collect(error, prediction_ts, label_ts):
            return []
        self.bank = self._new_bank()
        gap = self.baseline.first_gap_test()
        return [] if gap is None else [self._gap(gap)]

    def _refine(self, error: float) -> list[Signal]:
        refined, gap = self.baseline.refine_with(error)
        signals = [] if gap is None else [self._gap(gap)]
        if refined:
            self.bank.set_baseline_labels(self.baseline.labels)
            self.bank.set_thresholds(*self.baseline.calibrated_thresholds())
        return signals

    def _start(self, name: str, predicted_at: float) -> Signal:
        self.baseline.gap_pending = False  # a gap measured across a change would be the change's, not the deployment's
        change = self.bank.change_ts(name)
        self.episode.start(self.labels, change, predicted_at)
        found = self.bank.result(name)
        reported = "prediction_time_cusum" if name.startswith("prediction_time_cusum") else name
        return self._signal(reported, "started", found.statistic, found.threshold, change_ts=change)

    def _during_episode(self, z: float, predicted_at: float, label_ts: float) -> list[Signal]:
        signals = []
        phase = self.episode.watch(z, predicted_at, self.baseline.labels)
        if phase is not None:
            # A fall leaves a drift that is smaller but still there: moderate.
            severity = "significant" if phase.episode == "escalated" else "moderate"
            signals.append(
                self._signal(
                    "escalation_cusum",
                    phase.episode,
                    phase.statistic,
                    phase.threshold,
                    severity=severity,
                    change_ts=phase.change_ts,
                )
            )
        ended = self.episode.calm(self.bank.rolling, self.labels)
        if ended is not None:
            signals.append(self._signal("rolling_mean", "ended", ended.value, ended.calm_level, severity="stable"))
            self.episode.end()
            self.bank = self._new_bank(since=label_ts)  # predictions made after the end
        return signals

    def _gap(self, gap: DeploymentGap) -> Signal:
        return self._signal(
            "production_baseline",
            "deployment_gap",
            gap.production_mean,
            gap.threshold,
            unit="error",
            baseline=gap.validation,
            severity="moderate",
        )

    def _signal(
        self,
        detector: str,
        episode: str,
        value: float,
        threshold: float | None,
        baseline: tuple[float, float] | None = None,
        **details: Any,
    ) -> Signal:
        recent = self.bank.rolling.mean
        mean, sd = self.baseline.mean, self.baseline.sd
        return Signal(
            detector,
            episode,
            value,
            threshold,
            baseline or (mean, sd),
            None if recent is None else mean + sd * recent,
            self.labels,
            **details,
        )

    def counts(self) -> StreamCounts:
        return StreamCounts(labels=self.labels, error_sum=self.error_sum, **self.episode.counts().model_dump())

    def state(self) -> StreamState:
        return StreamState(detectors=self.bank.state(), production=self.baseline.state(), episode=self.episode.state())
