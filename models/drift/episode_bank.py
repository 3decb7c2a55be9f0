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
``len(level_z)`` labels it counts those since, and at each doubling of its labels, up to ``REFINE_LABELS``, it
moves to their mean and the thresholds are calibrated anew for the smaller allowance (on the same errors
around their own mean: a sample of 500 says the errors' shape, the learning level where they lie; measured
against the learnt level instead, a sample whose 0/1 rate came out 0.02 low would set the CUSUMs' drift too
low, and their thresholds with it); the CUSUMs keep their sums. Unless the newest ``len(level_z)`` moved away
from the first ones by more than ``TREND_SIGMAS`` standard errors of the difference: a change is under way,
the level stays and stops learning.

Where the errors cannot rise above the level by more than k (0/1 errors at a rate near 1: every step of the
upward CUSUM is negative), the chain says any threshold keeps the promise, and a level a little off would then
alarm at once; so no threshold is below the one for normal errors of the same spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import (
    DEFAULT_CLIP,
    PredictionTimeCusum,
    PredictionTimeCusumState,
    cusum_threshold,
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
    # count, sum and sum of squares of the level's labels while it learns, and the sum at the last look
    refine: tuple[int, float, float, float] | None
    first: tuple[int, float]  # count and mean of the labels that measured it, for the trend rule
    sample: list[float]  # the errors that measured it, for calibrations at the milestones ahead
    milestones: list[int]  # label counts ahead at which the level moves and the thresholds follow
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
    ``LEVEL_ALLOWANCE`` standard errors of that mean. None below the normal-theory threshold for their
    spread."""
    z = np.asarray(level_z, dtype=float)
    sd = float(z.std())
    centred = z - clipped_location(z)
    allowance = LEVEL_ALLOWANCE * sd / math.sqrt(labels or z.size)
    k, every = config.cusum_k, config.cusum_false_alarm_every

    def floor(k: float) -> float:  # normal errors of this spread
        spread = max(sd, 0.05)  # errors without spread: no overflow in the normal-theory formula
        return spread * cusum_threshold(k / spread, every)

    up, down = centred + allowance, -centred + allowance
    return (
        cusum_threshold_from(up, k, every, at_least=floor(k)),
        cusum_threshold_from(up, k / 2, every, at_least=floor(k / 2)),
        cusum_threshold_from(down, k, every, at_least=floor(k)),
        cusum_threshold_from(down, k / 2, every, at_least=floor(k / 2)),
    )


def clipped_location(z: npt.ArrayLike, clip: float = DEFAULT_CLIP) -> float:
    """The level m at which the CUSUMs' clipped steps are even: mean(clip(z - m, -clip, clip)) = 0 (Huber's
    location). The mean would not do for skewed errors: a drift confined to a fifth of the inputs puts a
    fifth of the errors 10-16 sd above the rest, their deviations from the mean are clipped at ``clip`` and
    the rest's are not, so the downward CUSUMs drift up by a sd a label and alarm ("improved") however high
    their threshold.

    >>> round(clipped_location([0.0] * 80 + [16.0] * 20), 3), round(clipped_location([1.0, 2.0, 3.0]), 3)
    (1.25, 2.0)
    """
    values = np.asarray(z, dtype=float)
    level = float(np.median(values))
    for _ in range(100):  # a fixed point approached monotonically; a few steps for any sample seen
        step = float(np.clip(values - level, -clip, clip).mean())
        level += step
        if abs(step) < 1e-9:
            break
    return level


def milestones(measured: int) -> list[int]:
    """The label counts at which a level measured on ``measured`` labels moves to the mean of its labels and
    its thresholds are calibrated anew: each doubling up to ``REFINE_LABELS``."""
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

    Quiet, the level learns from further labels, and its thresholds are calibrated anew (tighter: a smaller
    allowance) at 1,000, 2,000, 4,000 and 8,000 of them:

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
        sample: list[float] | None = None,
    ):
        if not math.isfinite(level) or min(thresholds) <= 0:
            raise ValueError("a finite level and positive thresholds are required")
        c = config
        self.config, self.level, self.thresholds, self.level_from = config, level, thresholds, level_from
        self.sample = list(sample or [])
        self.first = (len(self.sample), level)
        self.milestones = milestones(len(self.sample)) if self.sample else []
        self.refine: tuple[int, float, float, float] | None = None

        def cusum(k: float, h: float) -> PredictionTimeCusum:
            return PredictionTimeCusum(k, h, c.pt_bucket_seconds, c.pt_horizon_buckets)

        self.up, self.up_small = cusum(c.cusum_k, thresholds[0]), cusum(c.cusum_k / 2, thresholds[1])
        self.down, self.down_small = cusum(c.cusum_k, thresholds[2]), cusum(c.cusum_k / 2, thresholds[3])
        self._all = ((self.up, 1.0), (self.up_small, 1.0), (self.down, -1.0), (self.down_small, -1.0))

    @classmethod
    def measured(cls, config: DriftConfig, level_z: list[float], level_from: float | None) -> EpisodeBank:
        """Against the mean of ``level_z``, calibrated on them; labels of predictions before ``level_from``
        (the regime before the change) left out."""
        z = np.asarray(level_z, dtype=float)
        bank = cls(config, clipped_location(z), rebased_thresholds(config, level_z), level_from, list(level_z))
        if bank.milestones:
            bank.refine = (int(z.size), float(z.sum()), float((z**2).sum()), float(z.sum()))
        if level_from is not None:
            floor = int(level_from // config.pt_bucket_seconds)
            for detector, _ in bank._all:
                detector.reset(floor=floor)
        return bank

    @classmethod
    def restored(cls, config: DriftConfig, state: EpisodeBankState) -> EpisodeBank:
        bank = cls(config, state.level, state.thresholds, state.level_from, state.sample)
        bank.first, bank.milestones, bank.refine = state.first, list(state.milestones), state.refine
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
        n, total, squares, looked = self.refine
        n, total, squares = n + 1, total + z, squares + z * z
        self.refine = (n, total, squares, looked)
        first_n, first_mean = self.first
        if n % first_n:
            return
        # The newest labels against the first ones: clearly apart, a change is under way (the detectors'
        # business); taking them in would hide part of it.
        newest_mean = (total - looked) / first_n
        sd = math.sqrt(max(squares / n - (total / n) ** 2, 0.0))
        if abs(newest_mean - first_mean) > TREND_SIGMAS * sd * math.sqrt(2 / first_n):
            self.refine, self.milestones, self.sample = None, [], []
            return
        self.refine = (n, total, squares, total)
        if self.milestones and self.milestones[0] <= n:
            self.milestones = self.milestones[1:]
            # The mean of its labels, less the sample's gap between its mean and its clipped location.
            level = total / n - (float(np.mean(self.sample)) - clipped_location(self.sample))
            moved, self.level = level - self.level, level
            self.thresholds = rebased_thresholds(self.config, self.sample, n)
            floor = None if self.level_from is None else int(self.level_from // self.config.pt_bucket_seconds)
            for (detector, sign), h in zip(self._all, self.thresholds):
                detector.threshold = h
                # Every label so far stepped by ``moved`` too far toward this CUSUM's direction (measured
                # against a level that was off): its sums are dropped, not carried into an alarm. The other
                # direction's sums were held back by as much, and keep what they have.
                if sign * moved > 0:
                    detector.reset(floor=floor)
        if not self.milestones:
            self.refine, self.sample = None, []  # settled: the sample is no longer needed

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
            sample=self.sample,
            milestones=self.milestones,
            up=self.up.state(),
            up_small=self.up_small.state(),
            down=self.down.state(),
            down_small=self.down_small.state(),
        )
