"""A version's production baseline: collected from its first labels, refined while quiet, and the CUSUM
thresholds calibrated on it (tightened as it refines). Pure arithmetic on errors: no database, no events.

The first ``production_baseline_labels`` errors estimate production's level and spread. If production is
worse than the validation estimate by more than ``deployment_gap_margin`` (relative, and significant at 2
standard errors), that is a deployment gap; one not yet significant is tested again at each refinement (at
2.5 standard errors, for the repeated looks). Errors then enter the detectors in units of the production
baseline, whose CUSUM thresholds are calibrated on those errors, allowing for the baseline being an
estimate, and tightened for the smaller allowance as it refines: at each doubling of its first labels and
once it settles on ``production_refine_labels``. (``production_baseline_labels = 0``: the validation
baseline is used.)
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import MIN_CALIBRATION_SAMPLE, cusum_threshold_from, sample_skewness
from undertow.models.drift.prediction_time_calibration import prediction_time_factor, traffic_from

log = logging.getLogger(__name__)

REFINE_EVERY = 1000  # labels between refinements of a production baseline
TREND_SIGMAS = 2.5  # the newest labels this far above the baseline's: a change, not more of the baseline


class BaselineState(BaseModel):
    """The production baseline as stored (``production`` in the concept state)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    mean: float | None  # None while its labels are collected
    sd: float | None
    errors: list[float] | None  # the labels collected so far; None once the baseline is set
    cusum_h: float | None  # the CUSUM thresholds (k, k/2); None: not calibrated yet
    small_cusum_h: float | None
    labels: int | None  # what the baseline rests on (None: a validation baseline)
    refine: tuple[int, float, float] | None  # count, sum and sum of squares while it refines
    first_labels: tuple[int, float] | None  # count and mean of its first labels, for the trend rule
    gap_pending: bool  # a gap not yet significant, tested again as it refines
    tighten_at: list[tuple[int, float, float]] | None  # [labels, k's, k/2's] thresholds ahead
    skewness: float | None  # of the baseline errors, for the rolling means' thresholds
    # (prediction time, label time) of each label collected ([] for a fresh baseline; None once set, for a
    # validation baseline, and for one collecting since before format 11, whose thresholds are then not
    # lowered for the prediction-time CUSUMs)
    traffic: list[tuple[float, float]] | None
    # how many times less often the prediction-time CUSUMs (k, k/2) alarm than in arrival order on this
    # version's traffic, as measured when the baseline was set (None: not measured, taken as 1)
    pt_factors: tuple[float, float] | None


@dataclass(frozen=True)
class DeploymentGap:
    """Production's baseline above the validation estimate by more than the margin, significantly."""

    production_mean: float
    threshold: float  # the validation mean plus the margin
    validation: tuple[float, float]  # its mean and sd


def floored_sd(mean: float, sd: float) -> float:
    return max(sd, 1e-9, abs(mean) * 1e-6)  # a perfect score must not divide by zero


def reference_z(
    errors: Sequence[float] | npt.NDArray[np.float64], mean: float, sd: float, estimated_from: int | None
) -> npt.NDArray[np.float64]:
    """Reference errors in baseline units, raised by the 2 standard errors an estimated baseline may be off by."""
    z = (np.array(errors) - mean) / sd
    return z + 2.0 / math.sqrt(estimated_from) if estimated_from else z


def threshold_for_all(samples: list[npt.NDArray[np.float64]], k: float, every: float) -> float:
    """A CUSUM threshold that keeps its false-alarm rate for errors distributed like each sample: the
    largest of theirs. From the second sample on, one chain solve where the threshold so far holds."""
    h = 0.0
    for z in samples:
        h = cusum_threshold_from(z, k, every, at_least=h)
    return h


class ProductionBaseline:
    """Level and spread the detectors measure errors against, and the CUSUM thresholds calibrated on it."""

    def __init__(
        self,
        config: DriftConfig,
        validation: tuple[float, float] | None,
        validation_sample: list[float] | None,
        state: BaselineState | None,
        describe: str = "",
    ):
        self.config, self.validation, self.validation_sample, self.describe = (
            config,
            validation,
            validation_sample,
            describe,
        )
        if state is None:
            state = self._fresh()
        self.collected = None if state.errors is None else list(state.errors)
        self.labels = state.labels
        self.refine = state.refine  # count, sum and sum of squares while it refines
        self.first_labels = state.first_labels
        self.gap_pending = state.gap_pending
        self.tighten_at = None if state.tighten_at is None else list(state.tighten_at)  # [labels, h, small h]
        self.cusum_h, self.small_cusum_h, self.skewness = state.cusum_h, state.small_cusum_h, state.skewness
        self.traffic = None if state.traffic is None else list(state.traffic)
        self.pt_factors = state.pt_factors
        if state.mean is None:
            self.mean, self.sd = validation or (0.0, 1.0)  # placeholders until the baseline is set
        elif state.sd is None:
            raise ValueError(f"{describe}: a production baseline with a mean needs its sd")
        else:
            self.mean, self.sd = state.mean, floored_sd(state.mean, state.sd)

    def _fresh(self) -> BaselineState:
        """A validation baseline where ``production_baseline_labels`` is 0 (with the skewness of its sample),
        else one that collects."""
        sample = self.validation_sample
        validation = self.validation if self.config.production_baseline_labels == 0 else None  # None: collect
        skewness = (
            sample_skewness(np.array(sample))
            if validation is not None and sample and len(sample) >= MIN_CALIBRATION_SAMPLE
            else None
        )
        return BaselineState(
            mean=None if validation is None else validation[0],
            sd=None if validation is None else validation[1],
            errors=[] if validation is None else None,
            cusum_h=None,
            small_cusum_h=None,
            labels=None,
            refine=None,
            first_labels=None,
            gap_pending=False,
            tighten_at=None,
            skewness=skewness,
            traffic=[] if validation is None else None,
            pt_factors=None,
        )

    @property
    def collecting(self) -> bool:
        return self.collected is not None

    def calibrate(self, reference_errors: list[float] | None) -> None:
        """The CUSUM thresholds, where not calibrated yet: on ``reference_errors`` in this baseline's units
        (an estimated baseline is off by about one standard error: calibrated as if the errors sat 2 standard
        errors above it, the promised false-alarm rate then holds for about 39 baselines in 40), else for
        normal errors."""
        c = self.config
        z = None if not reference_errors else reference_z(reference_errors, self.mean, self.sd, self.labels)
        if self.cusum_h is None:
            self.cusum_h = cusum_threshold_from(z, c.cusum_k, c.cusum_false_alarm_every)
        if self.small_cusum_h is None:
            self.small_cusum_h = cusum_threshold_from(z, c.cusum_k / 2, c.cusum_false_alarm_every)

    def collect(self, error: float, prediction_ts: float | None = None, label_ts: float | None = None) -> bool:
        """One more of the first labels (with its prediction's and its own event time, where known: the
        traffic the prediction-time CUSUMs' thresholds are calibrated for); True when it completes the
        baseline (its thresholds then set)."""
        collected = self.collected
        if collected is None:
            raise ValueError(f"{self.describe}: the production baseline is set already")
        collected.append(error)
        if self.traffic is not None and prediction_ts is not None and label_ts is not None:
            self.traffic.append((prediction_ts, label_ts))
        if len(collected) < self.config.production_baseline_labels:
            return False
        errors = np.array(collected)
        self.collected, self.labels = None, errors.size
        self.pt_factors = self._measure_factors(errors)
        self.traffic = None
        mean, sd = float(errors.mean()), float(errors.std())
        if self.config.production_refine_labels > errors.size:
            self.refine = (int(errors.size), float(errors.sum()), float((errors**2).sum()))
            self.first_labels = (int(errors.size), mean)
        # Calibrate on the (larger) validation sample standardised by its own level, and on the production
        # errors: a thousand errors say little about the tail, which sets a CUSUM's false-alarm rate.
        self.mean, self.sd = mean, floored_sd(mean, sd)
        self.skewness = sample_skewness(errors)
        self.cusum_h, self.small_cusum_h = self._thresholds(errors, errors.size)
        if self.refine is not None:
            self.tighten_at = [(labels, *self._thresholds(errors, labels)) for labels in self._milestones(errors.size)]
        log.info(
            "%s: production baseline from %d labels: %.4g (sd %.4g); validation %s",
            self.describe,
            errors.size,
            mean,
            sd,
            "unknown" if self.validation is None else f"{self.validation[0]:.4g}",
        )
        return True

    def first_gap_test(self) -> DeploymentGap | None:
        """The deployment gap on the labels just collected; one not significant yet waits for refinements."""
        if self.labels is None:
            raise ValueError(f"{self.describe}: no production baseline collected yet")
        gap = self._deployment_gap(self.labels, 2.0)
        self.gap_pending = gap is None and self.validation is not None and self.refine is not None
        return gap

    def calibrated_thresholds(self) -> tuple[float, float]:
        """The CUSUM thresholds (k, k/2), once ``calibrate`` has set them."""
        if self.cusum_h is None or self.small_cusum_h is None:
            raise ValueError(f"{self.describe}: the CUSUM thresholds are not calibrated yet")
        return self.cusum_h, self.small_cusum_h

    def _measure_factors(self, errors: npt.NDArray[np.float64]) -> tuple[float, float] | None:
        """How many times less often the prediction-time CUSUMs (k, k/2) alarm than in arrival order on this
        version's traffic (``prediction_time_calibration``): measured on its first errors around their own
        level (with the allowance for a baseline of that many labels), seeded from them and their times, so
        a replay measures the same. None without the traffic (state from before format 11)."""
        traffic = None if not self.traffic else traffic_from(self.traffic)
        if traffic is None:
            return None
        mean = float(errors.mean())
        z = reference_z(errors, mean, floored_sd(mean, float(errors.std())), errors.size)
        seed = zlib.crc32(np.array(self.traffic, dtype=float).tobytes(), zlib.crc32(errors.tobytes()))
        c = self.config
        factor = prediction_time_factor(z, c.cusum_k, traffic, c.pt_bucket_seconds, seed)
        # The k/2 CUSUM sums about twice as many labels before it alarms, so its suffixes span more buckets
        # and neither the bucket edges nor late labels change it as much: its factor is never the larger.
        # On 256 traffics (2 bucket widths, 4 error shapes, 8 delay distributions, 4 rates) it was at most
        # the k CUSUM's, and 1 wherever that was 1; its simulation is then skipped.
        small = (
            1.0 if factor == 1.0 else prediction_time_factor(z, c.cusum_k / 2, traffic, c.pt_bucket_seconds, seed + 1)
        )
        factors = (factor, small)
        log.info(
            "%s: prediction-time CUSUMs alarm %.3g and %.3g times less often than in arrival order on this "
            "traffic (%.3g labels/s)",
            self.describe,
            *factors,
            traffic.rate,
        )
        return factors[0], factors[1]

    def _thresholds(self, errors: npt.NDArray[np.float64], labels: int) -> tuple[float, float]:
        """The CUSUM thresholds (k, k/2) for a production baseline resting on ``labels`` labels: the larger
        of those for its first ``errors`` and, where there is one, for the validation sample, each
        standardised by its own level and spread (the shape of the errors; where the baseline may lie is
        the allowance's business: two standard errors, 0.063 baseline sd on 1,000 labels, 0.02 on 10,000).

        Not the validation sample's where the errors take two values (0/1) and the thresholds are set for
        the version's traffic: there the first errors say their whole distribution but for the rate, and
        a rate lower than estimated only lowers the errors in baseline units, a higher one is the
        allowance's; the validation sample, at its own rate (a classifier's 10 % against production's
        11.5 %, more skewed), would set the threshold for errors this stream does not have (1.5 higher
        on the benchmark's classifier). State from before keeps its rule."""
        mean = float(errors.mean())
        samples = [reference_z(errors, mean, floored_sd(mean, float(errors.std())), labels)]
        if (
            self.validation is not None
            and self.validation_sample
            and len(self.validation_sample) >= MIN_CALIBRATION_SAMPLE
            and (self.pt_factors is None or np.unique(errors).size > 2)
        ):
            samples.insert(0, reference_z(self.validation_sample, *self.validation, labels))
        # In prediction time the same h alarms ``pt_factors`` times less often: the run length the
        # arrival-order chain is solved for is that many times shorter.
        every = self.config.cusum_false_alarm_every
        factor, small_factor = self.pt_factors or (1.0, 1.0)
        return (
            threshold_for_all(samples, self.config.cusum_k, every / factor),
            threshold_for_all(samples, self.config.cusum_k / 2, every / small_factor),
        )

    def _settles_on(self, labels: int) -> int:
        """How many labels a baseline set on ``labels`` rests on when it settles: refinements come every
        ``REFINE_EVERY`` labels, and the first at or past ``production_refine_labels`` is the last."""
        return REFINE_EVERY * math.ceil(max(self.config.production_refine_labels, labels + 1) / REFINE_EVERY)

    def _milestones(self, labels: int) -> list[int]:
        """The label counts at which the CUSUM thresholds of a refining baseline set on ``labels`` tighten:
        the refinement at or past each doubling of ``labels``, and the one it settles on. The allowance
        for an estimated baseline shrinks with the square root of its labels, so a change that comes
        while the baseline still refines is met by thresholds that have kept up."""
        settles, doubled, points = self._settles_on(labels), 2 * labels, set[int]()
        while doubled < settles:
            points.add(REFINE_EVERY * math.ceil(doubled / REFINE_EVERY))
            doubled *= 2
        return [*sorted(points - {settles}), settles]

    def _deployment_gap(self, labels: int, sigmas: float) -> DeploymentGap | None:
        """A gap if the production baseline exceeds the validation estimate by more than the margin (a
        practical difference) and by ``sigmas`` standard errors of the difference (not chance; the standard
        error counts the validation estimate's own, from its sample, beside the production baseline's)."""
        if self.validation is None:
            return None
        validation_mean, validation_sd = self.validation
        gap = self.mean - validation_mean
        variance = self.sd**2 / labels
        if self.validation_sample:
            variance += validation_sd**2 / len(self.validation_sample)
        if gap > self.config.deployment_gap_margin * abs(validation_mean) and gap > sigmas * math.sqrt(variance):
            return DeploymentGap(self.mean, validation_mean * (1 + self.config.deployment_gap_margin), self.validation)
        return None

    def refine_with(self, error: float) -> tuple[bool, DeploymentGap | None]:
        """One more label while quiet: (whether this refinement moved the baseline, a gap it revealed)."""
        if self.refine is None:
            raise ValueError(f"{self.describe}: the production baseline is not refining")
        n, total, squares = self.refine
        n, total, squares = n + 1, total + error, squares + error * error
        self.refine = (n, total, squares)
        if n % REFINE_EVERY:
            return False, None
        if self.labels is None:
            raise ValueError(f"{self.describe}: a refining production baseline rests on its labels")
        # The labels since the last refinement against the first ones (state without first labels: against
        # all before them). A deployment's level is there from its first label; if the newest are clearly
        # higher, a change is under way, and taking it in would report it as a gap and hide it from the
        # detectors. The baseline then stays as it was and stops refining.
        before, mean_before = self.labels, self.mean
        newest = n - before  # at least one: n has grown past the labels the baseline rests on
        first_n, first_mean = self.first_labels or (before, mean_before)
        if (total - mean_before * before) / newest - first_mean > TREND_SIGMAS * self.sd * math.sqrt(
            1 / newest + 1 / first_n
        ):
            self.refine, self.gap_pending, self.tighten_at = None, False, None
            log.info(
                "%s: the newest %d labels of the production baseline are above its first %d: a change, not "
                "the deployment's level; the baseline stays at %.4g",
                self.describe,
                newest,
                first_n,
                self.mean,
            )
            return False, None
        self.mean = total / n
        self.sd = floored_sd(self.mean, math.sqrt(max(squares / n - self.mean**2, 0.0)))
        self.labels = n
        gap = None
        if self.gap_pending:
            # Tested again at every refinement: 2.5 standard errors allow for the repeated looks.
            gap = self._deployment_gap(n, 2.5)
            self.gap_pending = gap is None
        if self.tighten_at and self.tighten_at[0][0] <= n:
            self._tighten(n, self.tighten_at)
        if n >= self.config.production_refine_labels:
            # Settled: counts past it (none, as calibrated) are never reached.
            self.refine, self.gap_pending, self.tighten_at = None, False, None
            log.info(
                "%s: production baseline settled on %d labels: error %.4g (sd %.4g)",
                self.describe,
                n,
                self.mean,
                self.sd,
            )
        return True, gap

    def _tighten(self, labels: int, tighten_at: list[tuple[int, float, float]]) -> None:
        """The thresholds for the baseline's ``labels``: the allowance for an estimated baseline shrinks with
        the square root of its labels, and with it the threshold a small shift must reach. Never a looser
        one: calibrations on different allowances need not be monotonic to the last digit."""
        due = [t for t in tighten_at if t[0] <= labels]
        self.tighten_at = tighten_at[len(due) :] or None
        cusum_h, small_cusum_h = self.calibrated_thresholds()
        self.cusum_h, self.small_cusum_h = min(cusum_h, due[-1][1]), min(small_cusum_h, due[-1][2])

    def state(self) -> BaselineState:
        collecting = self.collected is not None
        return BaselineState(
            mean=None if collecting else self.mean,
            sd=None if collecting else self.sd,
            errors=self.collected,
            cusum_h=self.cusum_h,
            small_cusum_h=self.small_cusum_h,
            labels=self.labels,
            refine=self.refine,
            first_labels=self.first_labels,
            gap_pending=self.gap_pending,
            tighten_at=None if self.tighten_at is None else list(self.tighten_at),
            skewness=self.skewness,
            traffic=None if self.traffic is None else list(self.traffic),
            pt_factors=self.pt_factors,
        )
