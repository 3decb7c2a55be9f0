"""Evidence over windows: per feature, moving sums of the newest windows' z, for a drift too gradual for
one window's PSI. Each window's test becomes a standard normal score (``window_z``); the sums of the
newest 1, 2, 4 and 8 windows are compared with one threshold, and the windows that raised an alarm are
forgotten (re-armed) so they do not raise it again. ``CombinedEvidence`` adds the features' sums up across
the features of a model, for a drift that moves all of them a little.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# chi2.sf, norm.cdf and norm.isf exactly, without scipy.stats' ~0.1 ms of argument handling per call
# (per feature and window)
from scipy.special import chdtrc, ndtr, ndtri

from undertow.models.drift.stats import FeatureStats

EVIDENCE_SCALES = (1, 2, 4, 8)  # windows summed: a drift too slow for one window adds up over several
# The four sums share their newest windows, and an alarm forgets the windows that raised it, so together they
# raise about as many false alarms as two independent tests would, not four: simulated over 6,000 reference
# samples, a threshold split over 4 kept 0.34 of the promised rate and one split over 2 keeps 0.68 (on
# bench/drift_rules.py's normal streams, 100 seeds: 0.53 before, 1.0 now). Bonferroni over all four cost each
# scale about 0.17 standard normal scores for nothing.
EFFECTIVE_SCALES = 2


def window_z(stats: FeatureStats, reference_rows: int) -> float:
    """A window's test as a standard normal score, uniform p-values under no drift (``window_pvalue``),
    held within [-3, 8] so one window far out in either direction does not dominate the sums."""
    p = window_pvalue(stats, reference_rows)
    return 0.0 if p is None else pvalue_z(p)


def pvalue_z(p: float) -> float:
    """The standard normal score of a p-value, held within [-3, 8]."""
    return float(min(max(-ndtri(max(p, 1e-300)), -3.0), 8.0))


def window_pvalue(stats: FeatureStats, reference_rows: int) -> float | None:
    """A window's test of one feature as a p-value, uniform under no drift (None: nothing to test). A
    numeric feature has two tests of the window against the reference sample (models/drift/two_sample.py),
    both uniform without drift however much the feature ties: Mann-Whitney's rank sum on mid-ranks, the
    stronger one when the location moves (as in most gradual drifts), and Anderson-Darling with ties broken
    at random for any change of shape (a spread, a mixture's shares: it finds those with about half the data
    KS needs; plain KS on tied data piles its p-values up near 1, which read as evidence against drift).
    Their p-values are combined by the Cauchy combination (ACAT, Liu and Xie 2020), which stays close to
    uniform however the two depend on each other: doubling the smaller one (Bonferroni) would pile up at
    p = 1 and drag the sums over windows down. Without an Anderson-Darling p-value (statistics made
    elsewhere) KS stands in. A categorical feature: the chi-square against the reference shares, deflated
    by 1 + n/reference rows (the shares are estimates too; the plain statistic runs high)."""
    shape = stats.ks_pvalue if stats.ad_pvalue is None else stats.ad_pvalue
    if shape is not None and not math.isnan(shape):
        p = shape
        if stats.rank_z is not None and math.isfinite(stats.rank_z):
            p = cauchy_combination(p, 2 * float(ndtr(-abs(stats.rank_z))))
        return p
    if stats.chi2_dof > 0:
        return float(chdtrc(stats.chi2_dof, stats.chi2_statistic / (1 + stats.n / max(reference_rows, 1))))
    return None


def cauchy_combination(*pvalues: float) -> float:
    """ACAT with equal weights: the mean of tan((1/2 - p) pi) = cot(pi p) is standard Cauchy under the null,
    whatever the dependence between the tests (asymptotically in the tail).

    >>> round(cauchy_combination(0.5, 0.5), 6), round(cauchy_combination(1e-8, 0.9), 9)
    (0.5, 2e-08)
    """
    t = sum(1 / math.tan(math.pi * min(max(p, 1e-300), 1 - 1e-15)) for p in pvalues) / len(pvalues)
    return math.atan2(1.0, t) / math.pi


def evidence_threshold(input_features: int, false_alarm_windows: float) -> float:
    """Each scale's sum, over its spread, is standard normal without drift: the model's false-alarm budget
    is split over its input features (Bonferroni), so it holds whatever the feature count, and over the
    scales as ``EFFECTIVE_SCALES`` tests.

    >>> round(evidence_threshold(4, 250), 3)
    3.291
    """
    return float(-ndtri(1 / (EFFECTIVE_SCALES * max(1, input_features) * false_alarm_windows)))


class EvidenceAccumulator:
    """The newest windows' z of every input feature (newest first, at most the largest scale) and the
    threshold their moving sums are held against.

    >>> evidence = EvidenceAccumulator(3.0)
    >>> [evidence.add("x", 2.5, rho=0.0) for _ in range(3)], evidence.recent["x"]
    ([False, True, False], [2.5])
    """

    def __init__(self, threshold: float, recent: dict[str, list[float]] | None = None):
        self.threshold = threshold
        self.recent: dict[str, list[float]] = {} if recent is None else recent

    def add(self, name: str, z: float, rho: float) -> bool:
        """Adds a window's z; True when a moving sum crosses the threshold (the feature's sums then start
        afresh). Every window is tested against the same reference sample, so the windows' z share its
        sampling error: correlation ``rho`` = n / (n + reference), which the sums' spread must include."""
        recent = ([z] + self.recent.get(name, []))[: EVIDENCE_SCALES[-1]]
        raised = _moving_sum_z(recent, rho) > self.threshold
        self.recent[name] = [] if raised else recent
        return raised


def _moving_sum_z(recent: list[float], rho: float) -> float:
    """The largest of the moving sums of the newest 1, 2, 4 and 8 windows' z (newest first), each over its
    spread (``EvidenceAccumulator.add``)."""
    return max(sum(recent[:m]) / math.sqrt(m + m * (m - 1) * rho) for m in EVIDENCE_SCALES if m <= len(recent))


class CombinedVerdict(NamedTuple):
    """The window-level evidence of one window: its p-value as a standard normal score, the score it must
    exceed, and each input's share of it (the largest first)."""

    z: float
    threshold: float
    shares: list[tuple[str, float]]

    @property
    def raised(self) -> bool:
        return self.z > self.threshold


class CombinedEvidence:
    """Evidence across the input features of a model and over windows, for a drift that moves every feature a
    little and none enough for its own sums (a change of the population's mix, say).

    Each feature keeps its own moving sums here (``recent``, as ``EvidenceAccumulator`` does, apart from the
    per-feature ones so those alert as they did); the largest of them, over its spread, is a p-value per
    feature (doubled: the sums count as ``EFFECTIVE_SCALES`` tests), and the features' p-values are combined
    by their harmonic mean (Wilson 2019), the tail form of the Cauchy combination: both are valid under any
    dependence between the features, and are the mean of 1/p, so several features with moderate evidence
    add up. The Cauchy form itself is not usable here: a feature whose sums lean against drift has p near 1,
    and cot(pi p) then drags the mean towards minus infinity. The harmonic mean is never larger than the
    Bonferroni bound, k times the smallest p: the combination raises at least whenever a feature's own sums
    would at the same budget, and then more often only where several features lean the same way. The
    threshold is the model's whole budget, one false alarm per ``false_alarm_windows`` windows; an alarm
    forgets every feature's windows here.

    >>> combined = CombinedEvidence(250)
    >>> quiet = [combined.add({"a": 0.5, "b": -1.0, "c": 0.3}, rho=0.0).raised for _ in range(4)]
    >>> combined, alone = CombinedEvidence(250), EvidenceAccumulator(evidence_threshold(3, 250))
    >>> leaning = [combined.add({"a": 2.2, "b": 2.2, "c": 2.0}, rho=0.0) for _ in range(3)]
    >>> quiet, [v.raised for v in leaning], [name for name, _ in leaning[1].shares]
    ([False, False, False, False], [False, True, False], ['a', 'b', 'c'])
    >>> [alone.add("a", 2.2, rho=0.0) for _ in range(3)]  # its own sums: 3.11 after two windows, below 3.21
    [False, False, False]
    """

    def __init__(self, false_alarm_windows: float, recent: dict[str, list[float]] | None = None):
        self.threshold = float(-ndtri(1 / false_alarm_windows))
        self.recent: dict[str, list[float]] = {} if recent is None else recent

    def add(self, zs: dict[str, float], rho: float) -> CombinedVerdict:
        """Adds a window's z of each input feature (correlation ``rho`` between windows, as in
        ``EvidenceAccumulator.add``); the combined evidence, and whether it crossed (then every feature's sums
        here start afresh)."""
        inverse = {}
        for name, z in zs.items():
            recent = ([z] + self.recent.get(name, []))[: EVIDENCE_SCALES[-1]]
            self.recent[name] = recent
            p = min(1.0, EFFECTIVE_SCALES * float(ndtr(-_moving_sum_z(recent, rho))))
            inverse[name] = 1 / max(p, 1e-300)
        if not inverse:
            return CombinedVerdict(0.0, self.threshold, [])
        total = sum(inverse.values())
        verdict = CombinedVerdict(
            pvalue_z(len(inverse) / total),
            self.threshold,
            sorted(((name, w / total) for name, w in inverse.items()), key=lambda item: -item[1]),
        )
        if verdict.raised:
            self.recent = {name: [] for name in self.recent}
        return verdict
