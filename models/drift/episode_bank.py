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

As the production baseline does, the level keeps learning while the detectors are quiet: every
``len(level_z)`` labels it takes in those since, up to ``REFINE_LABELS``, and at each doubling of its labels
the thresholds tighten to those calibrated (when the level was measured, on the same errors) for the smaller
allowance; the CUSUMs keep their sums. Unless the newest ``len(level_z)`` moved away from the first ones by
more than ``TREND_SIGMAS`` standard errors of the difference: a change is under way, the level stays and stops
learning.
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
REFINE_LABELS = 8000  # the level learns from at most this many labels (thresholds at 500: x1.3-1.5 those at 8,000)
TREND_SIGMAS = 2.5  # the newest labels this far from the first: a change under way, not more of the level

Thresholds = tuple[float, float, float, float]  # up k, up k/2, down k, down k/2


class EpisodeBankState(BaseModel):
    """The re-based detectors' state: the level they measure against, their thresholds, their sums."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    level: float  # the episode's level, in baseline sd
    thresholds: Thresholds
    level_from: float | None  # labels of predictions before it do not count
    refine: tuple[int, float, float] | None  # count, sum and sum of squares of the level's labels while it learns
    first: tuple[int, float]  # count and mean of the labels that measured it, for the trend rule
    tighten_at: list[tuple[int, float, float, float, float]]  # [labels, thresholds] ahead
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


def rebased_thresholds(config: DriftConfig, level_z: list[float], labels: int | None = None) -> Thresholds:
    """The four CUSUM thresholds (up k, up k/2, down k, down k/2) for errors distributed like ``level_z``
    around their mean, which estimates the level they are measured against from ``labels`` labels (default:
    ``level_z`` themselves): the errors raised (for the upward CUSUMs; lowered for the downward ones) by
    ``LEVEL_ALLOWANCE`` standard errors of that mean."""
    z = np.asarray(level_z, dtype=float)
    centred = z - z.mean()
    allowance = LEVEL_ALLOWANCE * float(z.std()) / math.sqrt(labels or z.size)
    k, every = config.cusum_k, config.cusum_false_alarm_every
    up, down = centred + allowance, -centred + allowance
    return (
        cusum_threshold_from(up, k, every),
        cusum_threshold_from(up, k / 2, every),
        cusum_threshold_from(down, k, every),
        cusum_threshold_from(down, k / 2, every),
    )


def milestones(measured: int) -> list[int]:
    """The label counts at which a level measured on ``measured`` labels tightens its thresholds: each
    doubling up to ``REFINE_LABELS``."""
    points, labels = [], 2 * measured
    while labels <= REFINE_LABELS:
        points.append(labels)
        labels *= 2
    return points


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

    Quiet, the level learns from further labels and the thresholds tighten at 1,000, 2,000, 4,000 and
    8,000 of them:

    >>> bank = EpisodeBank.measured(DriftConfig(), level_z, level_from=0.0)
    >>> h = [bank.thresholds[1]]
    >>> for t in range(8000):
    ...     bank.update(1.0 + rng.gauss(0, 1), prediction_ts=float(t))
    ...     if bank.thresholds[1] != h[-1]:
    ...         h.append(bank.thresholds[1])
    >>> len(h), h[-1] < 0.8 * h[0], bank.refine is None, abs(bank.level - 1.0) < 0.03
    (5, True, True, True)
    """

    def __init__(
        self,
        config: DriftConfig,
        level: float,
        thresholds: Thresholds,
        level_from: float | None = None,
        first: tuple[int, float] | None = None,
        tighten_at: list[tuple[int, float, float, float, float]] | None = None,
    ):
        if not math.isfinite(level) or min(thresholds) <= 0:
            raise ValueError("a finite level and positive thresholds are required")
        c = config
        self.config, self.level, self.thresholds, self.level_from = config, level, thresholds, level_from
        self.first = first or (0, level)
        self.refine: tuple[int, float, float] | None = None
        self.tighten_at = list(tighten_at or [])

        def cusum(k: float, h: float) -> PredictionTimeCusum:
            return PredictionTimeCusum(k, h, c.pt_bucket_seconds, c.pt_horizon_buckets)

        self.up, self.up_small = cusum(c.cusum_k, thresholds[0]), cusum(c.cusum_k / 2, thresholds[1])
        self.down, self.down_small = cusum(c.cusum_k, thresholds[2]), cusum(c.cusum_k / 2, thresholds[3])
        self._all = ((self.up, 1.0), (self.up_small, 1.0), (self.down, -1.0), (self.down_small, -1.0))

    @classmethod
    def measured(cls, config: DriftConfig, level_z: list[float], level_from: float | None) -> EpisodeBank:
        """Against the mean of ``level_z``, calibrated on them (and for each milestone of the level's
        learning); labels of predictions before ``level_from`` (the regime before the change) left out."""
        z = np.asarray(level_z, dtype=float)
        ahead = [(labels, *rebased_thresholds(config, level_z, labels)) for labels in milestones(z.size)]
        level = float(z.mean())
        bank = cls(config, level, rebased_thresholds(config, level_z), level_from, (z.size, level), ahead)
        if ahead:
            bank.refine = (int(z.size), float(z.sum()), float((z**2).sum()))
        if level_from is not None:
            floor = int(level_from // config.pt_bucket_seconds)
            for detector, _ in bank._all:
                detector.reset(floor=floor)
        return bank

    @classmethod
    def restored(cls, config: DriftConfig, state: EpisodeBankState) -> EpisodeBank:
        bank = cls(config, state.level, state.thresholds, state.level_from, state.first, state.tighten_at)
        bank.refine = state.refine
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
        if self.refine is not None and (self.level_from is None or prediction_ts >= self.level_from):
            self._learn(z)

    def _learn(self, z: float) -> None:
        """One more label of the level while the detectors are quiet (an alarm ends the bank)."""
        if self.refine is None:
            raise ValueError("the episode's level has stopped learning")
        n, total, squares = self.refine
        n, total, squares = n + 1, total + z, squares + z * z
        self.refine = (n, total, squares)
        first_n, first_mean = self.first
        if n % first_n:
            return
        # The newest labels against the first ones: clearly apart, a change is under way (the detectors'
        # business); taking them in would hide part of it.
        newest_mean = (total - self.level * (n - first_n)) / first_n  # the level: the mean of the labels before
        sd = math.sqrt(max(squares / n - (total / n) ** 2, 0.0))
        if abs(newest_mean - first_mean) > TREND_SIGMAS * sd * math.sqrt(2 / first_n):
            self.refine, self.tighten_at = None, []
            return
        self.level = total / n
        due = [t for t in self.tighten_at if t[0] <= n]
        if due:
            self.tighten_at = self.tighten_at[len(due) :]
            # Never looser: calibrations on different allowances need not be monotonic to the last digit.
            tighter = tuple(min(old, new) for old, new in zip(self.thresholds, due[-1][1:]))
            self.thresholds = (tighter[0], tighter[1], tighter[2], tighter[3])
            for (detector, _), h in zip(self._all, self.thresholds):
                detector.threshold = h
        if not self.tighten_at:
            self.refine = None

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
            level_from=self.level_from,
            refine=self.refine,
            first=self.first,
            tighten_at=self.tighten_at,
            up=self.up.state(),
            up_small=self.up_small.state(),
            down=self.down.state(),
            down_small=self.down_small.state(),
        )
