"""Severity bands and drift episodes of one feature: the rules that decide when an alert is sent.

The rule (hysteresis): a window's band is read with the upper thresholds
(``psi_moderate``, ``psi_significant``; PSI decides, a p-value at or above
``alpha`` vetoes noise). An episode **starts** when a stable feature enters
a band, and **escalates** when it reaches a band above its peak so far
(moderate to significant, once). The level only comes down after
``end_after`` windows in a row below the *lower* threshold of its band
(``psi_exit_ratio`` times it), silently; the episode **ends** once that
brings it back to stable. A drift hovering around a threshold therefore
costs a subscriber at most two alerts (started, escalated) until it ends.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.stats import FeatureStats

STABLE, MODERATE, SIGNIFICANT = "stable", "moderate", "significant"
_RANK = {STABLE: 0, MODERATE: 1, SIGNIFICANT: 2}


def severity(
    stats: FeatureStats,
    config: DriftConfig,
    moderate: float | None = None,
    significant: float | None = None,
    scale: float = 1.0,
) -> str:
    """Effect size (PSI) decides the band; a p-value only vetoes noise. Thresholds default to the config's
    (times ``scale``: the lower thresholds of the hysteresis).

    >>> s = FeatureStats(1000, 0.3, 0.2, 1e-9, 50.0, 1e-8, 0.0)
    >>> severity(s, DriftConfig()), severity(FeatureStats(1000, 0.3, 0.2, 0.2, 5.0, 0.3, 0.0), DriftConfig())
    ('significant', 'stable')
    """
    pvalues = [p for p in (stats.ks_pvalue, stats.chi2_pvalue) if p is not None and not math.isnan(p)]
    if not pvalues or min(pvalues) >= config.alpha:
        return STABLE
    moderate = (config.psi_moderate if moderate is None else moderate) * scale
    significant = (config.psi_significant if significant is None else significant) * scale
    if stats.psi >= significant:
        return SIGNIFICANT
    if stats.psi >= moderate:
        return MODERATE
    return STABLE


class Episode(NamedTuple):
    """One feature's (or check's) episode: its level, the calm windows in a row below the level's lower
    threshold, and the highest level of the episode so far."""

    level: str
    calm: int
    peak: str


CALM = Episode(STABLE, 0, STABLE)  # no episode open


def next_episode(state: Episode, upper: str, lower: str, end_after: int) -> tuple[Episode, str | None]:
    """Episode bookkeeping of one feature.

    ``upper`` is the window's band by the upper thresholds, ``lower`` by the
    lower ones. Returns the new state and "started", "escalated", "ended" or
    None (no alert).

    >>> s, t = next_episode(CALM, MODERATE, MODERATE, 2); t
    'started'
    >>> s, t = next_episode(s, SIGNIFICANT, SIGNIFICANT, 2); t
    'escalated'
    >>> s, t = next_episode(s, MODERATE, SIGNIFICANT, 2); t, tuple(s)   # under 0.25, above 0.2: still significant
    (None, ('significant', 0, 'significant'))
    >>> s, t = next_episode(s, MODERATE, MODERATE, 2); s, t = next_episode(s, MODERATE, MODERATE, 2); t, tuple(s)
    (None, ('moderate', 0, 'significant'))
    >>> s, t = next_episode(s, SIGNIFICANT, SIGNIFICANT, 2); t   # back up: not above its peak, no alert
    >>> s, t = next_episode(s, STABLE, STABLE, 2); s, t = next_episode(s, STABLE, STABLE, 2); t, tuple(s)
    ('ended', ('stable', 0, 'stable'))
    """
    level, calm, peak = state
    if level == STABLE:
        return (Episode(upper, 0, upper), "started") if upper != STABLE else (CALM, None)
    if _RANK[upper] > _RANK[level]:
        escalated = _RANK[upper] > _RANK[peak]
        return Episode(upper, 0, upper if escalated else peak), "escalated" if escalated else None
    if _RANK[lower] < _RANK[level]:
        calm += 1
        if calm < end_after:
            return Episode(level, calm, peak), None
        if lower == STABLE:
            return CALM, "ended"
        return Episode(lower, 0, peak), None
    return Episode(level, 0, peak), None
