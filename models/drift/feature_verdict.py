"""One feature's verdict on one window: its statistics, its bands by the upper and the lower thresholds
(the hysteresis of ``episodes``), and the rule that decided."""

from __future__ import annotations

from dataclasses import dataclass

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.episodes import MODERATE, STABLE, severity
from undertow.models.drift.stats import FeatureStats
from undertow.models.profile import PREDICTION_FEATURE


@dataclass(frozen=True)
class FeatureVerdict:
    name: str
    stats: FeatureStats
    upper: str  # the band by the upper thresholds: the window's severity
    lower: str  # the band by the lower thresholds: whether an open episode calms down
    rule: str  # "window" (this window's PSI) or "cumulative" (evidence summed over windows)

    @property
    def is_input(self) -> bool:
        return self.name != PREDICTION_FEATURE


def judge(name: str, stats: FeatureStats, config: DriftConfig, small: bool, evidence_raised: bool) -> FeatureVerdict:
    """The verdict of a window (``small``: too few rows to judge, stable). Evidence over windows lifts a
    feature the window's PSI finds stable to moderate.

    >>> s = FeatureStats(1000, 0.3, 0.2, 1e-9, 50.0, 1e-8, 0.0)
    >>> v = judge("x", s, DriftConfig(), small=False, evidence_raised=False); v.upper, v.lower, v.rule
    ('significant', 'significant', 'window')
    >>> calm = FeatureStats(1000, 0.01, 0.01, 0.5, 1.0, 0.5, 0.0)
    >>> judge("x", calm, DriftConfig(), small=False, evidence_raised=True).rule
    'cumulative'
    """
    if small:
        return FeatureVerdict(name, stats, STABLE, STABLE, "window")
    c = config
    thresholds = (
        (c.prediction_psi_moderate, c.prediction_psi_significant)
        if name == PREDICTION_FEATURE
        else (c.psi_moderate, c.psi_significant)
    )
    upper = severity(stats, c, *thresholds)
    lower = severity(stats, c, *thresholds, scale=c.psi_exit_ratio)
    if evidence_raised and upper == STABLE:
        return FeatureVerdict(name, stats, MODERATE, lower, "cumulative")
    return FeatureVerdict(name, stats, upper, lower, "window")
