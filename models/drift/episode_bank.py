"""The detectors inside an open concept-drift episode, run against the episode's own level.

Outside an episode the detectors watch the production baseline; once one fires, the errors sit at a new
level and the baseline's detectors say nothing more (each would fire again and again). So, as river's
PageHinkley and ADWIN restart after an alarm, the episode measures its own level and runs four CUSUMs in
prediction time against it: two upward (k and k/2, as the bank's: a step of 2k and of k) whose alarm is a
further rise (``escalated``), and two downward whose alarm is a fall (``improved`` once the level after it
is known; a fall back to the baseline is the episode's end instead).

Unlike a restart, each re-based threshold is calibrated: for one false alarm per ``cusum_false_alarm_every``
labels on the errors measured at the episode's level (their own spread and shape, which a change alters: a
0/1 error at a higher rate has a larger sd), raised by two standard errors of that level, since the level is
an estimate from a few hundred labels. Labels of predictions made before the level's start no longer count
(they belong to the regime before the change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import (
    PredictionTimeCusum,
    PredictionTimeCusumState,
    cusum_threshold_from,
)

LEVEL_ALLOWANCE = 2.0  # standard errors of the measured level the thresholds allow for (one-sided, 97.7 %)


class EpisodeBankState(BaseModel):
    """The re-based detectors' state: the level they measure against, their thresholds, their sums."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    level: float  # the episode's level, in baseline sd
    thresholds: tuple[float, float, float, float]  # up k, up k/2, down k, down k/2
    up: PredictionTimeCusumState
    up_small: PredictionTimeCusumState
    down: PredictionTimeCusumState
    down_small: PredictionTimeCusumState


@dataclass(frozen=True)
class EpisodeChange:
    """A significant change of the episode's level: its direction, the evidence, when it began."""

    direction: Literal["up", "down"]
    statistic: float
    threshold: float
    change_ts: float | None


def rebased_thresholds(config: DriftConfig, level_z: list[float]) -> tuple[float, float, float, float]:
    """The four CUSUM thresholds (up k, up k/2, down k, down k/2) for errors distributed like ``level_z``
    around their mean, which estimates the level they are measured against: the errors raised (for the
    upward CUSUMs; lowered for the downward ones) by ``LEVEL_ALLOWANCE`` standard errors of that mean."""
    z = np.asarray(level_z, dtype=float)
    centred = z - z.mean()
    allowance = LEVEL_ALLOWANCE * float(z.std()) / math.sqrt(z.size)
    k, every = config.cusum_k, config.cusum_false_alarm_every
    up, down = centred + allowance, -centred + allowance
    return (
        cusum_threshold_from(up, k, every),
        cusum_threshold_from(up, k / 2, every),
        cusum_threshold_from(down, k, every),
        cusum_threshold_from(down, k / 2, every),
    )


class EpisodeBank:
    """Four prediction-time CUSUMs against the episode's ``level`` (in baseline sd); ``measured`` builds them
    on the errors that measured the level, counting labels of predictions from its start on.

    A step of +0.6 sd after a level measured at 1.0 sd is a rise, one of -0.6 sd a fall; late labels of the
    regime before the level's start are left out:

    >>> import random
    >>> from undertow.models.drift.config import DriftConfig
    >>> rng = random.Random(5)
    >>> level_z = [1.0 + rng.gauss(0, 1) for _ in range(500)]
    >>> def first_alarm(shift):
    ...     bank = EpisodeBank.measured(DriftConfig(), level_z, level_from=0.0)
    ...     for t in range(6000):
    ...         bank.update(rng.gauss(0, 1) + (1.0 + shift if t >= 3000 else 1.0), prediction_ts=float(t))
    ...         change = bank.change()
    ...         if change is not None:
    ...             return change.direction, 3000 <= t < 3600
    ...         bank.update(-3.0, prediction_ts=-100.0)  # a late label of the regime before: not counted
    >>> first_alarm(+0.6), first_alarm(-0.6), first_alarm(0.0)
    (('up', True), ('down', True), None)
    """

    def __init__(self, config: DriftConfig, level: float, thresholds: tuple[float, float, float, float]):
        if not math.isfinite(level) or min(thresholds) <= 0:
            raise ValueError("a finite level and positive thresholds are required")
        c = config
        self.config, self.level, self.thresholds = config, level, thresholds
        h_up, h_up_small, h_down, h_down_small = thresholds

        def cusum(k: float, h: float) -> PredictionTimeCusum:
            return PredictionTimeCusum(k, h, c.pt_bucket_seconds, c.pt_horizon_buckets)

        self.up, self.up_small = cusum(c.cusum_k, h_up), cusum(c.cusum_k / 2, h_up_small)
        self.down, self.down_small = cusum(c.cusum_k, h_down), cusum(c.cusum_k / 2, h_down_small)
        self._all = ((self.up, 1.0), (self.up_small, 1.0), (self.down, -1.0), (self.down_small, -1.0))

    @classmethod
    def measured(cls, config: DriftConfig, level_z: list[float], level_from: float | None) -> EpisodeBank:
        """Against the mean of ``level_z``, calibrated on them; labels of predictions before ``level_from``
        (the regime before the change) left out."""
        bank = cls(config, float(np.mean(level_z)), rebased_thresholds(config, level_z))
        if level_from is not None:
            floor = int(level_from // config.pt_bucket_seconds)
            for detector, _ in bank._all:
                detector.reset(floor=floor)
        return bank

    @classmethod
    def restored(cls, config: DriftConfig, state: EpisodeBankState) -> EpisodeBank:
        bank = cls(config, state.level, state.thresholds)
        bank.up.from_state(state.up)
        bank.up_small.from_state(state.up_small)
        bank.down.from_state(state.down)
        bank.down_small.from_state(state.down_small)
        return bank

    def update(self, z: float, prediction_ts: float) -> None:
        """One standardised error (in baseline sd) at its prediction's time."""
        deviation = z - self.level
        for detector, sign in self._all:
            detector.update(sign * deviation, prediction_ts)

    def change(self) -> EpisodeChange | None:
        """The change the last update revealed: a rise before a fall, the k CUSUM's before the k/2 one's."""
        for detector, sign in self._all:
            if detector.drift_detected:
                direction: Literal["up", "down"] = "up" if sign > 0 else "down"
                return EpisodeChange(direction, detector.statistic, detector.threshold, detector.change_ts)
        return None

    def state(self) -> EpisodeBankState:
        return EpisodeBankState(
            level=self.level,
            thresholds=self.thresholds,
            up=self.up.state(),
            up_small=self.up_small.state(),
            down=self.down.state(),
            down_small=self.down_small.state(),
        )
