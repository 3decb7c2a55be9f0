"""The detectors one error stream fans out to, built from its baseline's thresholds.

Page-Hinkley and two rolling means in label-arrival order, and two CUSUMs in prediction time (labels counted
at their prediction's time, however late they come), one tuned to a step of 2k and one to a step of k, each
at its own calibrated threshold. The first to fire (in this order) is the one reported.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import (
    Detection,
    Detector,
    PageHinkley,
    PageHinkleyState,
    PredictionTimeCusum,
    PredictionTimeCusumState,
    RollingMean,
    RollingMeanState,
)


class BankState(BaseModel):
    """Each detector's state (``detectors`` in the concept state)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    page_hinkley: PageHinkleyState
    rolling_mean: RollingMeanState
    rolling_mean_long: RollingMeanState
    prediction_time_cusum: PredictionTimeCusumState
    prediction_time_cusum_small: PredictionTimeCusumState
    since: float | None = None  # labels of predictions made before it are not counted (after an episode)


PREDICTION_TIME = ("prediction_time_cusum", "prediction_time_cusum_small")


class DetectorBank:
    def __init__(
        self,
        config: DriftConfig,
        cusum_h: float,
        small_cusum_h: float,
        baseline_labels: int | None,
        skewness: float | None,
        since: float | None = None,
    ):
        c = config
        # A bank started when an episode ended counts only predictions made after the end: the late labels
        # of the episode's predictions, still arriving, would otherwise look like a new change to detectors
        # that start afresh (in bench/concept.py's recovery streams they started an episode anew, which the
        # end rule closed a minute later).
        self.since = since
        # No CUSUM in arrival order: on the benchmark's 150 changes under varying label delays it started
        # no episode before the prediction-time ones, and on long stationary streams it raised a third of
        # the false alarms.
        self.page_hinkley = PageHinkley(c.ph_delta, c.ph_threshold)
        self.rolling_mean = RollingMean(
            c.rolling_window, c.rolling_step, c.rolling_sigmas, baseline_labels, skewness or 0.0
        )
        # Slow, gradual changes: a mean over a longer window notices a smaller shift, and is nearer
        # normal (less skewed by 0/1 or heavy-tailed errors), so a lower threshold keeps its false alarms.
        self.rolling_mean_long = RollingMean(
            c.rolling_long_window,
            c.rolling_step,
            c.rolling_long_sigmas,
            baseline_labels,
            skewness or 0.0,
            weights="linear",
        )
        # At an arrival-order CUSUM's threshold: in prediction time it alarms less often on the same
        # stream, so the promised false-alarm rate holds.
        self.prediction_time_cusum = PredictionTimeCusum(c.cusum_k, cusum_h, c.pt_bucket_seconds, c.pt_horizon_buckets)
        self.prediction_time_cusum_small = PredictionTimeCusum(
            c.cusum_k / 2, small_cusum_h, c.pt_bucket_seconds, c.pt_horizon_buckets
        )
        # By name, in the bank's order (the order in which firing detectors are reported).
        self.detectors: dict[str, Detector[Any]] = {
            "page_hinkley": self.page_hinkley,
            "rolling_mean": self.rolling_mean,
            "rolling_mean_long": self.rolling_mean_long,
            "prediction_time_cusum": self.prediction_time_cusum,
            "prediction_time_cusum_small": self.prediction_time_cusum_small,
        }
        self._all = list(self.detectors.items())  # iterated per label: built once

    @property
    def rolling(self) -> RollingMean:
        """The (short) rolling mean: the recent level, and what ends an episode."""
        return self.rolling_mean

    def update(self, z: float, prediction_ts: float) -> list[str]:
        """One standardised error to every detector; the names of those that fired, in the bank's order."""
        if self.since is not None and prediction_ts < self.since:
            return []
        fired = []
        for name, detector in self._all:
            detector.update(z, prediction_ts)
            if detector.drift_detected:
                fired.append(name)
        return fired

    def result(self, name: str) -> Detection:
        return self.detectors[name].result()

    def change_ts(self, fired: str) -> float | None:
        """When the change began, in prediction time: the estimate of the prediction-time CUSUM that fired,
        else of the one for steps of 2k, else of the one for steps of k (None while all sit at 0)."""
        for name in ((fired,) if fired in PREDICTION_TIME else ()) + PREDICTION_TIME:
            if self.detectors[name].change_ts is not None:
                return self.detectors[name].change_ts
        return None

    def set_baseline_labels(self, labels: int | None) -> None:
        """The rolling means' thresholds for a baseline now resting on ``labels`` labels (None: a validation
        baseline)."""
        for rolling in (self.rolling_mean, self.rolling_mean_long):
            rolling.set_baseline_labels(labels)

    def set_thresholds(self, cusum_h: float, small_cusum_h: float) -> None:
        """New CUSUM thresholds; their sums are kept."""
        self.prediction_time_cusum.threshold = cusum_h
        self.prediction_time_cusum_small.threshold = small_cusum_h

    def state(self) -> BankState:
        return BankState(
            page_hinkley=self.page_hinkley.state(),
            rolling_mean=self.rolling_mean.state(),
            rolling_mean_long=self.rolling_mean_long.state(),
            prediction_time_cusum=self.prediction_time_cusum.state(),
            prediction_time_cusum_small=self.prediction_time_cusum_small.state(),
            since=self.since,
        )

    def from_state(self, state: BankState) -> DetectorBank:
        self.page_hinkley.from_state(state.page_hinkley)
        self.rolling_mean.from_state(state.rolling_mean)
        self.rolling_mean_long.from_state(state.rolling_mean_long)
        self.prediction_time_cusum.from_state(state.prediction_time_cusum)
        self.prediction_time_cusum_small.from_state(state.prediction_time_cusum_small)
        self.since = state.since
        return self
