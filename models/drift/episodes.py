"""Severity bands and drift episodes of one feature: the rules that decide when an alert is sent."""
from __future__ import annotations

import math

from models.drift.config import DriftConfig
from models.drift.stats import FeatureStats

STABLE, MODERATE, SIGNIFICANT = "stable", "moderate", "significant"


def severity(stats: FeatureStats, config: DriftConfig) -> str:
    """Effect size (PSI) decides the band; a p-value only vetoes noise.

    >>> s = FeatureStats(1000, 0.3, 0.2, 1e-9, 50.0, 1e-8, 0.0)
    >>> severity(s, DriftConfig()), severity(FeatureStats(1000, 0.3, 0.2, 0.2, 5.0, 0.3, 0.0), DriftConfig())
    ('significant', 'stable')
    """
    pvalues = [p for p in (stats.ks_pvalue, stats.chi2_pvalue) if p is not None and not math.isnan(p)]
    if not pvalues or min(pvalues) >= config.alpha:
        return STABLE
    if stats.psi >= config.psi_significant:
        return SIGNIFICANT
    if stats.psi >= config.psi_moderate:
        return MODERATE
    return STABLE


def next_episode(state: list, new_severity: str, end_after: int) -> tuple[list, str | None]:
    """Episode bookkeeping of one feature: [severity, stable windows in a row].

    Returns the new state and "started", "changed", "ended" or None (no alert).

    >>> s, t = next_episode([STABLE, 0], SIGNIFICANT, 2); t
    'started'
    >>> s, t = next_episode(s, SIGNIFICANT, 2); t is None
    True
    >>> s, t = next_episode(s, STABLE, 2); t is None   # one calm window does not end it
    True
    >>> s, t = next_episode(s, STABLE, 2); t, s
    ('ended', ['stable', 0])
    """
    current, calm = state
    if current == STABLE:
        return ([new_severity, 0], "started") if new_severity != STABLE else ([STABLE, 0], None)
    if new_severity == STABLE:
        calm += 1
        return ([STABLE, 0], "ended") if calm >= end_after else ([current, calm], None)
    if new_severity != current:
        return [new_severity, 0], "changed"
    return [current, 0], None
