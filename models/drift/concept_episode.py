"""A concept-drift episode of one error stream: started by the first detector to fire, escalated when the
error rises again within it, improved when it falls but stays above the baseline, ended once the rolling
mean has long been calm.

Phases: after each change (the start, a rise, a fall) the next ``rolling_window`` errors of predictions made
after it measure the episode's level; the detectors of ``EpisodeBank`` then run against that level, calibrated
on those errors, until one fires. A rise is alerted at once (``escalated``) and the level measured anew. After
a fall the level is measured anew too, and the fall alerted (``improved``) as soon as the errors measured put
that level significantly above the baseline (as much as a rolling mean needs to start an episode); a fall back
to the baseline is the end's business. End: once the rolling mean has stayed within one standard error of the
baseline for a whole window of evaluations, at least a window of labels after the episode began (hysteresis: a
drift sitting near the threshold would otherwise start episode after episode). Episodes opened before
concept-state format 10 keep the rule that opened them (``LegacyEscalation``) until they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import RollingMean
from undertow.models.drift.episode_bank import EpisodeBank, EpisodeBankState
from undertow.models.drift.legacy_escalation import LegacyEscalation, LegacyEscalationState

MIN_LEVEL_LABELS = 100  # fewer errors say too little of a skewed mean's tail to call a level above the baseline


class FallState(BaseModel):
    """A fall of the episode's level, alerted once the level after it is known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statistic: float
    threshold: float
    change_ts: float | None


class EpisodeState(BaseModel):
    """The open episode's phase (``episode`` in the concept state)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    level_z: list[float]  # errors measuring the level (empty once it is measured)
    level_from: float | None  # prediction time the level is measured from
    bank: EpisodeBankState | None  # the detectors against the measured level
    fall: FallState | None  # a fall whose level is being measured
    legacy: LegacyEscalationState | None  # an episode opened before format 10


class EpisodeCounts(BaseModel):
    """Counters of a stream's episodes (the concept_state row's columns for the 0/1 or absolute error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_episode: bool = False
    episode_started_label: int | None = None
    episodes: int = 0
    silenced_alarms: int = 0
    calm_evaluations: int = 0


@dataclass(frozen=True)
class Phase:
    """A new phase of the open episode: a rise (``escalated``) or a fall (``improved``)."""

    episode: Literal["escalated", "improved"]
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
        self.level_from: float | None = None if state is None else state.level_from
        self.bank: EpisodeBank | None = None
        if state is not None and state.bank is not None:
            self.bank = EpisodeBank.restored(config, state.bank)
        self.fall: FallState | None = None if state is None else state.fall
        self.legacy: LegacyEscalation | None = None
        if state is not None and state.legacy is not None:
            self.legacy = LegacyEscalation(config, state.legacy)

    def start(self, labels: int, change_ts: float | None, prediction_ts: float) -> None:
        self.in_episode, self.started_label = True, labels
        self.episodes += 1
        self.fall = None
        self._measure_level_after(change_ts, prediction_ts)

    def _measure_level_after(self, change_ts: float | None, prediction_ts: float) -> None:
        """The level anew, from the bucket after the one where the change began (``change_ts``, its start) or,
        without an estimate, from ``prediction_ts``. That bucket mixes predictions before and after the change,
        and its labels of the old regime (up to 60 of the 500 at a prediction a second) put the level low by
        their share of the step: 0.35 sd on a +3 sd step, more than the allowance, and an upward CUSUM then
        took the true level for a rise (bench/concept.py --episode-false-alarms, before this)."""
        self.level_z, self.bank = [], None
        self.level_from = prediction_ts if change_ts is None else change_ts + self.config.pt_bucket_seconds

    def watch(self, z: float, prediction_ts: float, baseline_labels: int | None) -> Phase | None:
        """One standardised error inside the episode: the level measured first, then watched for a change.
        ``baseline_labels``: what the production baseline rests on (None: a validation baseline), for how
        far the level must stand above it to count as still drifting after a fall."""
        if self.legacy is not None:
            change = self.legacy.escalate(z, prediction_ts)
            return None if change is None else Phase("escalated", change.statistic, change.threshold, change.change_ts)
        bank = self.bank
        if bank is None:
            return self._measure(z, prediction_ts, baseline_labels)
        bank.update(z, prediction_ts)
        change = bank.change()
        if change is None:
            return None
        self._measure_level_after(change.change_ts, prediction_ts)
        if change.direction == "down":
            self.fall = FallState(statistic=change.statistic, threshold=change.threshold, change_ts=change.change_ts)
            return None
        return Phase("escalated", change.statistic, change.threshold, change.change_ts)

    def _measure(self, z: float, prediction_ts: float, baseline_labels: int | None) -> Phase | None:
        """One more error of the level being measured; after a fall, ``improved`` as soon as the level is
        significantly above the baseline."""
        # The level from predictions made after the change began: late labels of earlier predictions
        # would pull it towards the regime before and make the next label look like a change.
        if self.level_from is None or prediction_ts >= self.level_from:
            self.level_z.append(z)
        improved = None
        fall = self.fall
        if fall is not None and self._still_drifting(baseline_labels):
            improved, self.fall = Phase("improved", fall.statistic, fall.threshold, fall.change_ts), None
        if len(self.level_z) >= self.config.rolling_window:
            self.bank = EpisodeBank.measured(self.config, self.level_z, self.level_from)
            self.level_z, self.fall = [], None  # a fall to a level not above the baseline: the end's business
        return improved

    def _still_drifting(self, baseline_labels: int | None) -> bool:
        """Whether the errors measured so far (at least ``MIN_LEVEL_LABELS``) put the level above the
        baseline by ``rolling_sigmas`` standard errors (the level's and the baseline's own): the evidence a
        rolling mean needs to start an episode. Looked at on every label up to ``rolling_window``: a level
        at the baseline crosses 4.7 standard errors on one of 100-500 looks about once in 20,000 falls
        (normal errors: 4.7 φ(4.7) log 5)."""
        n = len(self.level_z)
        if n < MIN_LEVEL_LABELS:
            return False
        z = np.asarray(self.level_z)
        standard_error = math.sqrt(float(z.var()) / n + (1 / baseline_labels if baseline_labels else 0.0))
        return float(z.mean()) > self.config.rolling_sigmas * standard_error

    @property
    def level(self) -> float | None:
        """The episode's measured level, in baseline sd (None while it is measured)."""
        if self.legacy is not None:
            return self.legacy.level
        return None if self.bank is None else self.bank.level

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
        if self.legacy is not None:  # where format 9 left it (stored, unused until the next start sets it)
            self.level_from = self.legacy.level_from
        self.level_z, self.bank, self.fall, self.legacy = [], None, None, None

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
            # Format 9 kept one: a legacy episode's own (the converter put it in both places).
            level_from=self.level_from if self.legacy is None else self.legacy.level_from,
            bank=None if self.bank is None else self.bank.state(),
            fall=self.fall,
            legacy=None if self.legacy is None else self.legacy.state(),
        )
