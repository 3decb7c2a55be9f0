"""Sequential detectors on a model version's error stream.

Each detector works in units of the baseline error's standard deviation:
an error ``e`` enters as ``z = (e - mean) / sd`` of the error on the
reference (validation) data, so one configuration fits models whose errors
live on any scale.

Every detector is a ``Detector`` (river's idea: one small class per test
behind one interface): ``update(z, prediction_ts)``, ``drift_detected``,
``statistic`` against ``threshold`` (the same units), ``result()`` (one
``Detection`` shape for all), and its state as a small frozen pydantic model
(``state()``; ``from_state()`` restores it into a detector built with the same
parameters, which are configuration and not state). Parameters are checked in
``__init__``.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Self, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from threadpoolctl import ThreadpoolController


@dataclass(frozen=True)
class Detection:
    """What any detector says after an update: evidence ``statistic`` against ``threshold``, and for a
    prediction-time detector when the change began (``change_ts``; None elsewhere)."""

    drift_detected: bool
    statistic: float
    threshold: float
    change_ts: float | None = None


class DetectorState(BaseModel):
    """A detector's state: plain fields, frozen. Infinity and NaN are written as JSON's usual extension."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


S = TypeVar("S", bound=DetectorState)


class Detector(ABC, Generic[S]):
    """One sequential test on standardised errors ``z``; ``S``: its state's model."""

    threshold: float

    @abstractmethod
    def update(self, z: float, prediction_ts: float | None = None) -> None:
        """One standardised error; ``prediction_ts`` (its prediction's event time) counts where time does."""

    @property
    @abstractmethod
    def drift_detected(self) -> bool: ...

    @property
    @abstractmethod
    def statistic(self) -> float: ...

    @property
    def change_ts(self) -> float | None:
        return None

    def result(self) -> Detection:
        return Detection(self.drift_detected, self.statistic, self.threshold, self.change_ts)

    @abstractmethod
    def state(self) -> S: ...

    @abstractmethod
    def from_state(self, state: S) -> Self:
        """This detector (same parameters) where the one that wrote ``state`` was; returns itself."""


class PageHinkleyState(DetectorState):
    n: float
    mean: float
    sum_increase: float
    sum_decrease: float
    min_increase: float  # infinite until the first update
    max_decrease: float
    drift_detected: bool


class PageHinkley(Detector[PageHinkleyState]):
    """Page-Hinkley test for an increase of the mean, on standardised errors.

    The same test as river's ``PageHinkley(mode="up", alpha=1)``, step for
    step (``tests/models/test_detectors.py`` checks it against river on the
    same streams), with its state in plain fields. ``delta`` and
    ``threshold`` are in baseline standard deviations. After an alarm the
    next update starts afresh.

    >>> import random
    >>> rng = random.Random(7)
    >>> ph = PageHinkley(delta=0.25, threshold=50.0)
    >>> alarms = []
    >>> for i in range(3000):
    ...     ph.update(rng.gauss(0, 1) + (2.0 if i >= 2000 else 0.0))
    ...     if ph.drift_detected:
    ...         alarms.append(i)
    >>> alarms[:1]
    [2028]
    """

    def __init__(self, delta: float = 0.25, threshold: float = 50.0, min_instances: int = 30):
        if delta < 0 or threshold <= 0 or min_instances < 1:
            raise ValueError("delta >= 0, threshold > 0 and min_instances >= 1 are required")
        self.delta = delta
        self.threshold = threshold
        self.min_instances = min_instances
        self.reset()

    def reset(self) -> None:
        self._n = 0.0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0
        self._drift_detected = False

    def update(self, z: float, prediction_ts: float | None = None) -> None:
        if self._drift_detected:
            self.reset()
        self._n += 1.0
        self._mean += (1.0 / self._n) * (z - self._mean)
        deviation = z - self._mean
        self._sum_increase = self._sum_increase + deviation - self.delta
        self._sum_decrease = self._sum_decrease + deviation + self.delta
        self._min_increase = min(self._min_increase, self._sum_increase)
        self._max_decrease = max(self._max_decrease, self._sum_decrease)
        if self._n >= self.min_instances:
            self._drift_detected = self._sum_increase - self._min_increase > self.threshold

    @property
    def drift_detected(self) -> bool:
        return self._drift_detected

    @property
    def statistic(self) -> float:
        return self._sum_increase - self._min_increase

    def state(self) -> PageHinkleyState:
        return PageHinkleyState(
            n=self._n,
            mean=self._mean,
            sum_increase=self._sum_increase,
            sum_decrease=self._sum_decrease,
            min_increase=self._min_increase,
            max_decrease=self._max_decrease,
            drift_detected=self._drift_detected,
        )

    def from_state(self, state: PageHinkleyState) -> PageHinkley:
        self._n, self._mean = state.n, state.mean
        self._sum_increase, self._sum_decrease = state.sum_increase, state.sum_decrease
        self._min_increase, self._max_decrease = state.min_increase, state.max_decrease
        self._drift_detected = state.drift_detected
        return self


def cusum_threshold(k: float, arl: float) -> float:
    """Decision interval h of a one-sided CUSUM for an in-control average run length.

    Siegmund's approximation ARL0 = (exp(2k(h+1.166)) - 2k(h+1.166) - 1) / (2k^2),
    solved for h by bisection.

    >>> round(cusum_threshold(0.5, 938), 1)   # one-sided ARL0 of the textbook h = 5, k = 0.5
    5.0
    """
    if k <= 0 or arl <= 1:
        raise ValueError("k > 0 and arl > 1 are required")

    def run_length(h: float) -> float:
        b = 2 * k * (h + 1.166)
        return (math.exp(b) - b - 1) / (2 * k * k)

    low, high = 0.0, 1.0
    while run_length(high) < arl:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if run_length(mid) < arl else (low, mid)
    return (low + high) / 2


def cusum_threshold_for(
    sample: npt.ArrayLike, k: float, arl: float, clip: float, states: int = 150, at_least: float = 0.0
) -> float:
    """Decision interval h for an in-control ARL, for errors distributed like ``sample`` (and at least
    ``at_least``: a threshold that must also hold for other errors; one chain solve where it does here).

    Brook and Evans' Markov-chain ARL of the discretised CUSUM, with the
    transition probabilities taken from the empirical distribution of the
    (standardised, clipped) reference errors, solved for h by regula falsi.
    Skewed errors (|y - p| is half-normal-like) make the normal approximation
    fire several times too often; this keeps the promised false-alarm rate.

    Errors with few distinct values (0/1 misclassification) move the CUSUM on
    a lattice, and rounding each step to the nearest state biases the drift:
    the run length then jumps about with h (for k = 0.25 at a 11.6 % error
    rate bisection found h = 770 where about 43 is right). There each step is
    split between the two states around it, in proportion to its distance,
    which keeps the drift exact (checked by simulation in
    ``tests/models/test_detectors.py``).
    """
    z = np.sort(np.clip(np.asarray(sample, dtype=float), -clip, clip))
    values, counts = np.unique(z, return_counts=True)
    if values.size <= DISCRETE_VALUES:
        return _solve_h(
            lambda h: _lattice_run_length(values, counts / z.size, k, h, states), arl, cusum_threshold(k, arl), at_least
        )
    offsets = np.arange(1 - states, states) + 0.5
    toeplitz = np.arange(states)[None, :] - np.arange(states)[:, None] + states - 1
    identity, ones = np.eye(states), np.ones(states)

    def run_length(h: float) -> float:
        width = h / (states - 0.5)
        # P(next state <= j | current i) = P(z <= (j + 0.5) * width - i * width + k): a function of
        # j - i alone, so 2 * states - 1 lookups give every cdf value, and their differences every
        # transition but into state 0 (which takes all mass at or below it). Differenced before they are
        # spread over the matrix: the same subtractions as differencing the matrix's rows, 5 times faster.
        cdf = np.searchsorted(z, offsets * width + k, side="right") / z.size
        steps = np.empty_like(cdf)
        steps[0] = cdf[0]
        np.subtract(cdf[1:], cdf[:-1], out=steps[1:])
        q = steps[toeplitz]
        q[:, 0] = cdf[toeplitz[:, 0]]
        try:
            return float(np.linalg.solve(identity - q, ones)[0])
        except np.linalg.LinAlgError:
            return math.inf

    return _solve_h(run_length, arl, cusum_threshold(k, arl), at_least)


@functools.cache
def _blas() -> ThreadpoolController:
    # Inspects the loaded libraries once: threadpool_limits does on every call, 0.65 ms here and more in the
    # monitor's process (more libraries loaded), 2-3 times a calibration's own chain solves.
    return ThreadpoolController()


DISCRETE_VALUES = 64  # samples with at most this many distinct values get the lattice chain


def _solve_h(
    run_length: Callable[[float], float], arl: float, guess: float, at_least: float = 0.0, rel_tol: float = 1e-4
) -> float:
    """The h whose run length reaches ``arl``, to ``rel_tol``: the upper end of a bracket whose lower end
    falls short; ``at_least`` itself if its run length reaches ``arl`` already.

    log ARL is nearly linear in h, so regula falsi on it (Illinois: a stalled end's value is halved)
    needs 6-18 chain solves where bisection to machine precision needed 45. The chain's ARL is a step
    function of h that wobbles by a few per cent (150 states), so a finer h means nothing; at 1e-4
    the ARL moves by 2kh * 1e-4, well under 1 %.

    Not scipy's brentq: checked on 16 calibrations (0/1 and half-normal errors, k = 0.25 and 0.5), brentq
    to the same jump of that step function stops up to 2.3e-4 (relative) away from where this stops, which
    would move the thresholds in recorded alerts; the golden stream holds them to 1e-9.
    """
    target = math.log(arl)

    def excess(h: float) -> float:  # log ARL above the target; a singular chain never alarms
        length = run_length(h)
        return math.inf if math.isinf(length) or not length > 0 else math.log(length) - target

    # One BLAS thread: on 150x150 solves a second one only spins (measured: the same wall time at twice
    # the CPU, taken from the monitor's other work and from the broker beside it). Same result either way.
    with _blas().limit(limits=1, user_api="blas"):
        low, f_low = 0.0, -math.inf
        if at_least > 0:
            f_low = excess(at_least)
            if f_low >= 0:
                return at_least
            low, guess = at_least, max(guess, at_least * 1.05)
        high, f_high = max(guess, 1e-3), excess(max(guess, 1e-3))
        while f_high < 0:  # bracket upwards in steps of 1.5x from the guess
            if high >= 1e4:
                return high
            low, f_low = high, f_high
            high *= 1.5
            f_high = excess(high)
        while low == 0.0:  # or downwards
            h = high / 1.5
            f_h = excess(h)
            if f_h < 0:
                low, f_low = h, f_h
            else:
                high, f_high = h, f_h
                if high < 1e-6:
                    return high
        stalled = 0
        while high - low > rel_tol * high:
            span = high - low
            if math.isfinite(f_low) and math.isfinite(f_high) and f_high > f_low:
                h = min(max(high - f_high * span / (f_high - f_low), low + 0.01 * span), high - 0.01 * span)
            else:
                h = (low + high) / 2
            f_h = excess(h)
            if f_h < 0:
                low, f_low = h, f_h
                f_high, stalled = (f_high / 2 if stalled == -1 else f_high), -1
            else:
                high, f_high = h, f_h
                f_low, stalled = (f_low / 2 if stalled == 1 else f_low), 1
    return high


def _lattice_run_length(
    values: npt.NDArray[np.float64], probabilities: npt.NDArray[np.float64], k: float, h: float, states: int
) -> float:
    """ARL of the CUSUM on states 0, h/(states-1), ..., h; a step to x is split between the states around it."""
    levels = np.linspace(0.0, h, states)
    position = np.maximum(levels[:, None] + values[None, :] - k, 0.0) / levels[1]
    lower = np.floor(position).astype(int)
    upper_share = position - lower
    q = np.zeros((states, states + 2))  # columns from ``states`` on: beyond h, the alarm
    rows = np.repeat(np.arange(states), values.size)
    weights = np.tile(probabilities, states)
    np.add.at(q, (rows, np.minimum(lower.ravel(), states)), weights * (1 - upper_share.ravel()))
    np.add.at(q, (rows, np.minimum(lower.ravel() + 1, states + 1)), weights * upper_share.ravel())
    try:
        return float(np.linalg.solve(np.eye(states) - q[:, :states], np.ones(states))[0])
    except np.linalg.LinAlgError:
        return math.inf


DEFAULT_CLIP = 5.0  # standardised errors beyond it count as it: one wild error cannot raise an alarm alone
MIN_CALIBRATION_SAMPLE = 100  # fewer reference errors than this say too little: normal theory sets h


def cusum_threshold_from(
    reference_z: npt.NDArray[np.float64] | None, k: float, arl: float, clip: float = DEFAULT_CLIP, at_least: float = 0.0
) -> float:
    """h for errors distributed like ``reference_z`` where there are enough of them, else under normal
    errors; at least ``at_least`` (a threshold that must also hold for other errors)."""
    if reference_z is not None and len(reference_z) >= MIN_CALIBRATION_SAMPLE:
        return cusum_threshold_for(reference_z, k, arl, clip, at_least=at_least)
    return max(at_least, cusum_threshold(k, arl))


class CusumState(DetectorState):
    sum: float
    drift_detected: bool


class Cusum(Detector[CusumState]):
    """One-sided (upper) CUSUM on standardised errors: S = max(0, S + z - k), alarm at S > h.

    ``k`` is half the shift (in baseline sd) to detect fastest; ``h`` follows
    from ``false_alarm_every``: one false alarm per that many labels on
    average. With a sample of standardised reference errors, h is computed
    for their actual distribution; without, under normal errors. Errors are
    clipped at ``clip`` sd, so one wild error cannot raise an alarm alone.

    >>> c = Cusum(k=0.5, false_alarm_every=50_000)
    >>> round(c.threshold, 2)
    8.96
    >>> for z in [0.1] * 100 + [2.0] * 5:
    ...     c.update(z)
    >>> c.drift_detected
    False
    >>> c.update(2.0); c.drift_detected
    True
    """

    def __init__(
        self,
        k: float = 0.5,
        false_alarm_every: float = 50_000,
        clip: float = DEFAULT_CLIP,
        reference_z: npt.NDArray[np.float64] | None = None,
        h: float | None = None,
    ):
        if k <= 0 or clip <= k or false_alarm_every <= 1 or (h is not None and h <= 0):
            raise ValueError("k > 0, clip > k, false_alarm_every > 1 and h > 0 (if given) are required")
        self.k = k
        self.false_alarm_every = false_alarm_every
        self.clip = clip
        # h given: calibrated before
        self.threshold = h if h is not None else cusum_threshold_from(reference_z, k, false_alarm_every, clip)
        self._sum = 0.0
        self._detected = False

    def update(self, z: float, prediction_ts: float | None = None) -> None:
        if self._detected:
            self.reset()
        z = min(max(z, -self.clip), self.clip)
        self._sum = max(0.0, self._sum + z - self.k)
        self._detected = self._sum > self.threshold

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def statistic(self) -> float:
        return self._sum

    def reset(self) -> None:
        self._sum, self._detected = 0.0, False

    def state(self) -> CusumState:
        return CusumState(sum=self._sum, drift_detected=self._detected)

    def from_state(self, state: CusumState) -> Cusum:
        self._sum, self._detected = state.sum, state.drift_detected
        return self


class PredictionTimeCusumState(DetectorState):
    first: int | None  # the oldest bucket kept (None before the first label)
    floor: int | None  # buckets before it no longer count (after an alarm)
    drift_detected: bool
    too_late: int
    total: float  # T, the sum over all kept buckets
    prefix: list[float]  # P_v = sum of the buckets before v: the numbers the updates work on, so a restore
    #                      continues bit for bit (suffix sums T - P_v, recomputed, can be off in the last bit)


class PredictionTimeCusum(Detector[PredictionTimeCusumState]):
    """Upper CUSUM in prediction time: each label counts at its prediction's time, however late it comes.

    With label delays that vary, labels arrive in an order that mixes
    predictions made before and after a change, and a CUSUM in arrival order
    keeps being pulled back by late labels of the old regime. Here each
    standardised error ``z`` adds ``z - k`` to the bucket of its prediction
    time (``bucket_seconds`` wide, the newest ``horizon`` buckets kept); the
    statistic is the largest suffix sum, ``W = max(0, max_v sum_{b >= v} c_b)``:
    a CUSUM over prediction time in which late labels land where they
    belong. The maximising bucket estimates when the change began. After an
    alarm it starts again from the newest bucket: labels of predictions made
    before the alarm no longer count. Labels of predictions older than the
    horizon are left out (``too_late`` counts them).

    >>> import random
    >>> rng = random.Random(3)
    >>> labels = sorted((i + rng.uniform(0, 1200), i, rng.gauss(0, 1) + (1.5 if i >= 2000 else 0.0))
    ...                 for i in range(4000))   # one prediction a second, labels 0-20 min late
    >>> pt = PredictionTimeCusum(k=0.5, h=10.0, bucket_seconds=60, horizon=120)
    >>> alarm = None
    >>> for arrived, predicted, z in labels:
    ...     pt.update(z, prediction_ts=float(predicted))
    ...     if pt.drift_detected and alarm is None:
    ...         alarm, started = arrived, pt.change_ts
    >>> 2000 < alarm < 2400, 1900 <= started <= 2100
    (True, True)
    """

    def __init__(
        self,
        k: float = 0.5,
        h: float = 15.0,
        bucket_seconds: float = 60.0,
        horizon: int = 1440,
        clip: float = DEFAULT_CLIP,
    ):
        if k <= 0 or h <= 0 or bucket_seconds <= 0 or horizon < 2 or clip <= k:
            raise ValueError("k > 0, h > 0, bucket_seconds > 0, horizon >= 2 and clip > k are required")
        self.k = k
        self.threshold = h
        self.bucket_seconds = bucket_seconds
        self.horizon = horizon
        self.clip = clip
        self.reset()

    def reset(self, floor: int | None = None) -> None:
        # Kept as prefix sums P_v = sum_{b < v} c_b and the total T, so suffix_v = T - P_v and
        # W = T - min(P): a label for the newest bucket (most of them) is O(1), a late one touches
        # only the buckets after its own.
        self._prefix = np.zeros(self.horizon)  # index 0 = bucket ``_first``
        self._total = 0.0
        self._min, self._argmin = 0.0, 0  # min(P) and its first index
        self._first: int | None = None if floor is None else floor - self.horizon + 1
        self._floor = floor  # buckets before it no longer count (after an alarm)
        self._detected = False
        self.too_late = 0

    def update(self, z: float, prediction_ts: float | None = None) -> None:
        # Called twice per label: locals and no builtin calls on the common path, which is O(1).
        if prediction_ts is None:
            raise TypeError("a prediction-time CUSUM counts each label at its prediction_ts")
        if self._detected:
            self.reset(floor=self._newest)
        bucket = int(prediction_ts // self.bucket_seconds)
        horizon, first = self.horizon, self._first
        if first is None:
            first = self._first = bucket - horizon + 1
        elif bucket >= first + horizon:  # time moved on: drop the oldest buckets
            shift = bucket - (first + horizon - 1)
            self._drop_oldest(shift)
            first = self._first = first + shift
        if bucket < first or (self._floor is not None and bucket < self._floor):
            self.too_late += 1
            return
        index = bucket - first
        clip = self.clip
        step = (clip if z > clip else -clip if z < -clip else z) - self.k
        self._total += step
        if index < horizon - 1:
            tail = self._prefix[index + 1 :]
            tail += step
            if step < 0:
                at = int(tail.argmin())
                if tail[at] < self._min:
                    self._min, self._argmin = float(tail[at]), index + 1 + at
            elif self._argmin > index:  # the minimum rose: it may now lie anywhere
                self._find_min()
        self._detected = self._total - self._min > self.threshold

    def _drop_oldest(self, shift: int) -> None:
        """The buckets' sums ``shift`` buckets on (the caller moves ``_first``)."""
        if shift >= self.horizon:
            self._prefix[:] = 0.0
            self._total = 0.0
        else:
            dropped = self._prefix[shift]
            self._prefix[:-shift] = self._prefix[shift:] - dropped
            self._total -= dropped
            self._prefix[-shift:] = self._total  # empty buckets: every remaining count lies before them
        self._find_min()

    def _find_min(self) -> None:
        self._argmin = int(self._prefix.argmin())
        self._min = float(self._prefix[self._argmin])

    @property
    def _newest(self) -> int:
        if self._first is None:  # no label counted yet, so no alarm to restart after
            raise ValueError("a prediction-time CUSUM without labels has no newest bucket")
        return self._first + self.horizon - 1

    @property
    def statistic(self) -> float:
        return max(0.0, self._total - self._min)

    @property
    def change_ts(self) -> float | None:
        """Start of the bucket where the largest suffix begins (None while the statistic is 0)."""
        if self._first is None or self.statistic <= 0:
            return None
        start = self._first + self._argmin
        # Buckets before the floor hold nothing, so a suffix that takes them all in begins at the floor.
        return (start if self._floor is None else max(start, self._floor)) * self.bucket_seconds

    @property
    def drift_detected(self) -> bool:
        return self._detected

    def state(self) -> PredictionTimeCusumState:
        return PredictionTimeCusumState(
            first=self._first,
            floor=self._floor,
            drift_detected=self._detected,
            too_late=self.too_late,
            total=self._total,
            prefix=self._prefix.tolist(),
        )

    def from_state(self, state: PredictionTimeCusumState) -> PredictionTimeCusum:
        if len(state.prefix) != self.horizon:
            raise ValueError(
                f"a prediction-time CUSUM state of {len(state.prefix)} buckets does not fit a horizon of {self.horizon}"
            )
        self._first, self._floor = state.first, state.floor
        self._detected, self.too_late = state.drift_detected, state.too_late
        self._total, self._prefix = state.total, np.array(state.prefix, dtype=float)
        self._find_min()
        return self


class RollingMeanState(DetectorState):
    count: int
    drift_detected: bool
    value: float | None  # the last evaluated window mean
    values: list[float]  # the ring buffer


class RollingMean(Detector[RollingMeanState]):
    """Mean error over the last ``window`` labels against baseline mean + ``sigmas`` standard errors.

    Evaluated every ``step`` labels once the window is full. The chapter's
    rolling-performance chart, with the threshold on the window mean's own
    spread (sd / sqrt(window)). Errors skewed to the right (0/1 errors at a
    low rate, |error|, log loss) give the window mean a longer upper tail
    than a normal one: with the errors' ``skewness`` the threshold is the
    Cornish-Fisher quantile, sigmas + (sigmas^2 - 1) * skewness / (6 sqrt(window))
    standard errors (for 500 0/1 errors at a 10 % rate, 5.12 for 4.7 where the
    binomial's exact tail says 5.07).

    >>> r = RollingMean(window=100, step=10, sigmas=3.0)
    >>> for z in [0.0] * 100:
    ...     r.update(z)
    >>> r.drift_detected, round(r.threshold, 2)
    (False, 0.3)
    >>> for z in [1.0] * 40:
    ...     r.update(z)
    >>> r.drift_detected, r.value
    (True, 0.4)

    With ``weights="linear"`` the i-th oldest of the window's values weighs
    i (the newest ``window`` times the oldest): the mean moves sooner after a
    change that began inside the window, and lags a ramp by a third of the
    window instead of half. Its standard error is about 1.15 sd / sqrt(window)
    and skewness is discounted by the weights' own third moment. Twenty
    errors one sd up after a hundred at the baseline:

    >>> equal, linear = RollingMean(100, 10, 3.0), RollingMean(100, 10, 3.0, weights="linear")
    >>> for z in [0.0] * 100 + [1.0] * 20:
    ...     equal.update(z)
    ...     linear.update(z)
    >>> equal.drift_detected, round(equal.value, 3), linear.drift_detected, round(linear.value, 3)
    (False, 0.2, True, 0.358)
    >>> round(linear.threshold, 3)
    0.346
    """

    def __init__(
        self,
        window: int = 500,
        step: int = 50,
        sigmas: float = 3.0,
        baseline_labels: int | None = None,
        skewness: float = 0.0,
        weights: Literal["equal", "linear"] = "equal",
    ):
        if window < 2 or not 1 <= step <= window or sigmas <= 0 or not math.isfinite(skewness):
            raise ValueError("window >= 2, 1 <= step <= window, sigmas > 0 and a finite skewness are required")
        if weights not in ("equal", "linear"):
            raise ValueError(f"weights must be 'equal' or 'linear', not {weights!r}")
        self.window = window
        self.step = step
        self.sigmas = sigmas
        self.skewness = skewness
        self.weights = weights
        # The linear weights, oldest first, summing to 1 (None: equal weights).
        self.kernel: npt.NDArray[np.float64] | None = (
            None if weights == "equal" else np.arange(1.0, window + 1) / (window * (window + 1) / 2)
        )
        self.set_baseline_labels(baseline_labels)
        self._values = np.zeros(window)
        self._count = 0
        self._detected = False
        self.evaluated = False  # whether the last update evaluated the window
        self.value: float | None = None

    def set_baseline_labels(self, baseline_labels: int | None) -> None:
        """The standard error of the window mean, and of the baseline mean when that was estimated
        from ``baseline_labels`` labels: an estimated baseline is itself off by about that much."""
        effective_window: float
        if self.kernel is None:
            variance, effective_window = 1 / self.window, self.window
        else:  # the weighted mean's variance, and the window of an equal mean as skewed as it
            variance = float(np.sum(self.kernel**2))
            effective_window = variance**3 / float(np.sum(self.kernel**3)) ** 2
        standard_error = math.sqrt(variance + (1 / baseline_labels if baseline_labels else 0.0))
        self.threshold = skew_sigmas(self.sigmas, effective_window, self.skewness) * standard_error  # in baseline sd
        self.calm_level = standard_error  # one standard error: "back to normal"

    def update(self, z: float, prediction_ts: float | None = None) -> None:
        self._values[self._count % self.window] = z
        self._count += 1
        self._detected = False
        self.evaluated = self._count >= self.window and self._count % self.step == 0
        if self.evaluated:
            self.value = float(self._values.mean()) if self.kernel is None else self._weighted_mean(self.kernel)
            self._detected = self.value > self.threshold

    def _weighted_mean(self, kernel: npt.NDArray[np.float64]) -> float:
        oldest = self._count % self.window  # the ring buffer's oldest value, once full
        return float(
            np.dot(self._values[oldest:], kernel[: self.window - oldest])
            + np.dot(self._values[:oldest], kernel[self.window - oldest :])
        )

    @property
    def statistic(self) -> float:
        """The last evaluated window mean (NaN before the first evaluation)."""
        return math.nan if self.value is None else self.value

    @property
    def full(self) -> bool:
        return self._count >= self.window

    @property
    def drift_detected(self) -> bool:
        return self._detected

    def reset(self) -> None:
        self._values[:] = 0.0
        self._count, self._detected, self.evaluated, self.value = 0, False, False, None

    @property
    def mean(self) -> float | None:
        """Plain mean of the values in the window so far, whatever the weights (None before any)."""
        n = min(self._count, self.window)
        return float(self._values[:n].mean()) if n else None

    def state(self) -> RollingMeanState:
        return RollingMeanState(
            count=self._count, drift_detected=self._detected, value=self.value, values=self._values.tolist()
        )

    def from_state(self, state: RollingMeanState) -> RollingMean:
        if len(state.values) != self.window:
            raise ValueError(
                f"a rolling-mean state of {len(state.values)} values does not fit a window of {self.window}"
            )
        self._count, self._detected, self.value = state.count, state.drift_detected, state.value
        self._values = np.array(state.values, dtype=float)
        return self


MAX_SKEWNESS = 10.0  # 0/1 errors at a 1 % rate; beyond, a few errors in the baseline say little


def skew_sigmas(sigmas: float, window: float, skewness: float) -> float:
    """How many standard errors a mean of ``window`` errors with this ``skewness`` must rise for the tail
    probability of ``sigmas`` under normal errors: the Cornish-Fisher quantile. Left skew would lower it, and
    a sample's skewness is too noisy for that; above ``MAX_SKEWNESS`` it is capped (0/1 errors at 0.5 %,
    window 500: 6.27 where the binomial says 6.66; at 1 % and more it errs on the high side)."""
    return sigmas + (sigmas**2 - 1) * min(max(skewness, 0.0), MAX_SKEWNESS) / (6 * math.sqrt(window))


def sample_skewness(errors: npt.NDArray[np.float64]) -> float:
    """Sample skewness, for ``skew_sigmas``; 0 for errors without spread or beyond float range (standardised
    first, so huge errors do not overflow)."""
    with np.errstate(all="ignore"):
        sd = float(errors.std())
        skewness = float(np.mean(((errors - errors.mean()) / sd) ** 3)) if sd > 0 else 0.0
    return skewness if math.isfinite(skewness) else 0.0
