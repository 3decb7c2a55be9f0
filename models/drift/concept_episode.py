"""A concept-drift episode of one error stream: started by the first detector to fire, escalated when the
error rises again within it, ended once the rolling mean has long been calm.

Escalation: inside an episode the next ``rolling_window`` errors estimate the episode's own level; an upper
CUSUM against that level (in arrival order and in prediction time) escalates when the error rises
significantly again, and the level is then estimated anew: an episode cannot hide a second, larger change.
End: once the rolling mean has stayed within one standard error of the baseline for a whole window of
evaluations, at least a window of labels after the episode began (hysteresis: a drift sitting near the
threshold would otherwise start episode after episode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import (
    Cusum,
    CusumState,
    PredictionTimeCusum,
    PredictionTimeCusumState,
    RollingMean,
)


class EpisodeState(BaseModel):
    """The open episode's level and escalation detectors (``episode`` in the concept state)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    level_z: list[float]
    level: float | None
    level_from: float | None  # prediction time the level is measured from
    escalation: CusumState | None
    escalation_pt: PredictionTimeCusumState | None


class EpisodeCounts(BaseModel):
    """Counters of a stream's episodes (the concept_state row's columns for the 0/1 or absolute error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_episode: bool = False
    episode_started_label: int | None = None
    episodes: int = 0
    silenced_alarms: int = 0
    calm_evaluations: int = 0


@dataclass(frozen=True)
class Escalated:
    statistic: float
    threshold: float
    change_ts: float | None


@dataclass(frozen=True)
class Ended:
    value: float  # the rolling mean
    calm_level: float  # one standard error


class Episode:
    def __init__(self, config: DriftConfig, counts: EpisodeCounts, state: EpisodeState | None):
        self.config = config
        self.in_episode, self.started_label = counts.in_episode, counts.episode_started_label
        self.episodes, self.silenced_alarms = counts.episodes, counts.silenced_alarms
        self.calm_evaluations = counts.calm_evaluations
        self.level_z: list[float] = [] if state is None else list(state.level_z)
        self.level: float | None = None if state is None else state.level
        self.level_from: float | None = None if state is None else state.level_from
        self.escalation: Cusum | None = None
        self.escalation_pt: PredictionTimeCusum | None = None
        if state is not None and state.level is not None:
            if state.escalation is None or state.escalation_pt is None:
                raise ValueError("an episode state with a level needs the states of its escalation detectors")
            escalation, escalation_pt = self._start_escalation()
            escalation.from_state(state.escalation)
            escalation_pt.from_state(state.escalation_pt)

    def start(self, labels: int, change_ts: float | None, prediction_ts: float) -> None:
        self.in_episode, self.started_label = True, labels
        self.episodes += 1
        self._measure_level_from(change_ts if change_ts is not None else prediction_ts)

    def _measure_level_from(self, prediction_ts: float) -> None:
        self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None
        self.level_from = prediction_ts

    def _start_escalation(self) -> tuple[Cusum, PredictionTimeCusum]:
        """Upper CUSUMs (arrival order and prediction time) against the episode's own level; returns them."""
        c = self.config
        self.level = level = float(np.mean(self.level_z))
        self.escalation = escalation = Cusum(
            c.cusum_k,
            c.cusum_false_alarm_every,
            reference_z=np.array(self.level_z) - level if len(self.level_z) >= 100 else None,
        )
        self.escalation_pt = escalation_pt = PredictionTimeCusum(
            c.cusum_k, escalation.threshold, c.pt_bucket_seconds, c.pt_horizon_buckets
        )
        return escalation, escalation_pt

    def escalate(self, z: float, prediction_ts: float) -> Escalated | None:
        """One standardised error inside the episode: its level measured first, then watched for a rise."""
        level, escalation, escalation_pt = self.level, self.escalation, self.escalation_pt
        if level is None:
            # The episode's level from predictions made after the change began: late labels of
            # earlier predictions would pull it down and make the next rise look like an escalation.
            if self.level_from is None or prediction_ts >= self.level_from:
                self.level_z.append(z)
            if len(self.level_z) >= self.config.rolling_window:
                self._start_escalation()
            return None
        if escalation is None or escalation_pt is None:  # set with the level
            raise ValueError("an episode with a level has its escalation detectors")
        escalation.update(z - level)
        escalation_pt.update(z - level, prediction_ts)
        fired: Cusum | PredictionTimeCusum | None = (
            escalation if escalation.drift_detected else (escalation_pt if escalation_pt.drift_detected else None)
        )
        if fired is None:
            return None
        change = escalation_pt.change_ts
        escalated = Escalated(fired.statistic, fired.threshold, change)
        self._measure_level_from(change if change is not None else prediction_ts)
        return escalated

    def calm(self, rolling: RollingMean, labels: int) -> Ended | None:
        """Whether the episode ends here (the rolling mean calm for a whole window of evaluations)."""
        value = rolling.value  # None only before the rolling mean's first evaluation
        if rolling.evaluated and value is not None:
            self.calm_evaluations = self.calm_evaluations + 1 if value <= rolling.calm_level else 0
        if value is None or self.calm_evaluations < math.ceil(rolling.window / rolling.step):
            return None
        if self.started_label is None:
            raise ValueError("no episode is open")
        return Ended(value, rolling.calm_level) if labels - self.started_label >= rolling.window else None

    def end(self) -> None:
        self.in_episode, self.started_label, self.calm_evaluations = False, None, 0
        self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None

    def counts(self) -> EpisodeCounts:
        return EpisodeCounts(
            in_episode=self.in_episode,
            episode_started_label=self.started_label,
            episodes=self.episodes,
            silenced_alarms=self.silenced_alarms,
            calm_evaluations=self.calm_evaluations,
        )

    def state(self) -> EpisodeState:
        return EpisodeState(
            level_z=self.level_z,
            level=self.level,
            level_from=self.level_from,
            escalation=None if self.escalation is None else self.escalation.state(),
            escalation_pt=None if self.escalation_pt is None else self.escalation_pt.state(),
        )
