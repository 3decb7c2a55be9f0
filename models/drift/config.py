"""The drift rules of one model version: windows, severity bands, detectors, retraining.

One definition serves the registry (stored as JSON with the version), the
monitor and the command line, whose ``models register`` flags are generated
from these fields: name, type, default and the description as help.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftConfig(BaseModel):
    """Window and alert rules of one model version (defaults chosen in bench/detection.py)."""

    # NaN and infinity refused as such ("should be a finite number"), not by a bound they fail by accident.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    window_size: int = Field(default=1000, ge=50, le=1_000_000, description="predictions per window")
    hop: int | None = Field(
        default=None, ge=1, description="evaluate the last window-size predictions every HOP (hopping windows)"
    )
    window_seconds: float | None = Field(
        default=None, gt=0, description="tumbling event-time windows of this many seconds instead"
    )
    max_window_rows: int = Field(default=100_000, ge=100, description="cap of an event-time window's sample")
    min_window_rows: int = Field(default=100, ge=10, description="event-time windows smaller than this are not judged")
    psi_moderate: float = Field(default=0.1, gt=0, description="PSI from which a feature drifts moderately")
    psi_significant: float = Field(default=0.25, gt=0, description="PSI from which drift is significant")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="p-value below which a shift is not noise")
    dataset_share: float = Field(default=0.5, gt=0, le=1, description="share of drifted inputs for dataset drift")
    end_after: int = Field(
        default=2,
        ge=1,
        description="windows in a row below the lower threshold that bring a drift down a band (or end it)",
    )
    psi_exit_ratio: float = Field(
        default=0.8, gt=0, le=1, description="lower threshold of each band, as a share of the upper one (hysteresis)"
    )
    prediction_psi_moderate: float = Field(
        default=0.1, gt=0, description="PSI from which the model's output drifts moderately"
    )
    prediction_psi_significant: float = Field(
        default=0.25, gt=0, description="PSI from which the output's drift is significant"
    )
    evidence_false_alarm_windows: float = Field(
        default=250,
        gt=10,
        description="evidence over windows "
        "(moving sums of the windows' z): at most one false alarm per "
        "this many windows of a model, over all its input features",
    )
    multivariate_sigmas: float = Field(
        default=6.0,
        gt=0,
        description="standard errors of the PCA reconstruction error above the reference that flag a window",
    )
    # The multivariate check's 6 standard errors (one-sided) would promise one false alarm per 1e9 windows:
    # the dependence check takes the same budget. Why, in docs/data-drift.md ("Dependence drift").
    dependence_false_alarm_windows: float = Field(
        default=1e9,
        gt=10,
        description="dependence check (each pair of numeric inputs' rank correlation against the "
        "reference): at most one false alarm per this many stationary windows, all pairs together",
    )
    dependence_moderate: float = Field(
        default=0.1,
        gt=0,
        le=2,
        description="change of a pair's correlation (absolute, beyond noise) from which dependence drifts moderately",
    )
    dependence_significant: float = Field(
        default=0.3, gt=0, le=2, description="change of a pair's correlation from which dependence drift is significant"
    )
    dependence_max_features: int = Field(
        default=50,
        ge=0,
        le=100,
        description="numeric inputs whose pairs the dependence check tests (the profile's order: most distinct "
        "values first; cost per window grows with the square); 0 turns the check off",
    )
    estimate_margin: float = Field(
        default=0.05,
        ge=0,
        description="drop of the estimated accuracy (absolute) below the validation accuracy worth an alert",
    )
    strict_schema: bool = Field(
        default=False,
        description="dead-letter predictions whose features do not match "
        "the version's schema (a feature missing or extra, a string for a number) "
        "instead of counting them and monitoring what they have",
    )
    # Concept drift on the error stream, in units of the baseline error's sd.
    ph_delta: float = Field(default=0.25, ge=0, description="Page-Hinkley tolerance, in baseline error sd")
    ph_threshold: float = Field(default=50.0, gt=0, description="Page-Hinkley alarm level, in baseline error sd")
    cusum_k: float = Field(default=0.5, gt=0, description="CUSUM reference value, in baseline error sd")
    cusum_false_alarm_every: float = Field(
        default=10_000_000, gt=10, description="CUSUM threshold for one false alarm per this many labels"
    )
    rolling_window: int = Field(default=500, ge=10, description="labels in the rolling mean error")
    rolling_step: int = Field(default=50, ge=1, description="labels between rolling evaluations")
    # 4.7: why, in docs/benchmarks.md ("Why the defaults").
    rolling_sigmas: float = Field(default=4.7, gt=0, description="standard errors above the baseline mean")
    rolling_long_window: int = Field(
        default=2000, ge=10, description="labels in the long rolling mean error (slow, gradual changes)"
    )
    # 4.4 (the long mean weighs its labels linearly by age): why, in docs/benchmarks.md ("Why the defaults").
    rolling_long_sigmas: float = Field(
        default=4.4,
        gt=0,
        description="standard errors above the baseline mean for the long rolling mean (weighted by age)",
    )
    production_baseline_labels: int = Field(
        default=1000,
        ge=0,
        description="first labels of a version that set its production baseline (0: use the validation estimate)",
    )
    # 30,000: why, in docs/benchmarks.md ("Why the defaults").
    production_refine_labels: int = Field(
        default=30_000, ge=0, description="labels the production baseline keeps learning from while no episode is open"
    )
    deployment_gap_margin: float = Field(
        default=0.05, ge=0, description="relative excess of production over validation error worth one alert"
    )
    # 20 s and 2,160 (12 h): why, in docs/benchmarks.md ("The abrupt delay"; 60 s and 720 before).
    pt_bucket_seconds: float = Field(
        default=20.0, gt=0, description="prediction-time bucket of the prediction-time CUSUM"
    )
    pt_horizon_buckets: int = Field(
        default=2160, ge=2, le=100_000, description="buckets it keeps: labels of older predictions are left out"
    )
    # Retraining.
    retrain_on_data_drift: bool = Field(default=True, description="significant dataset drift asks for retraining too")
    retrain_cooldown_seconds: float = Field(
        default=86_400, ge=0, description="event time between retrain requests of a model"
    )
    retrain_data_policy: Literal["rolling", "all"] = Field(
        default="rolling", description="labelled pairs the trainer uses"
    )
    retrain_window_pairs: int = Field(default=50_000, ge=100, description="labelled pairs of the rolling policy")

    @model_validator(mode="after")
    def _consistent(self) -> DriftConfig:
        if self.psi_significant < self.psi_moderate:
            raise ValueError("psi_significant must be at least psi_moderate")
        if self.prediction_psi_significant < self.prediction_psi_moderate:
            raise ValueError("prediction_psi_significant must be at least prediction_psi_moderate")
        if self.dependence_significant < self.dependence_moderate:
            raise ValueError("dependence_significant must be at least dependence_moderate")
        if self.dependence_max_features == 1:
            raise ValueError("dependence_max_features must be 0 (off) or at least 2 (one pair)")
        if self.hop is not None and self.hop > self.window_size:
            raise ValueError("hop must not exceed window_size")
        if self.rolling_step > self.rolling_window:
            raise ValueError("rolling_step must not exceed rolling_window")
        if self.hop is not None and self.window_seconds is not None:
            raise ValueError("choose count windows (hop) or event-time windows (window_seconds), not both")
        return self
