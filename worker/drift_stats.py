"""Per-feature drift statistics of one window against a reference profile.

Window columns are float arrays with NaN for missing values; categorical
columns hold bucket codes (``CategoricalEncoder``). Everything the reference
contributes is precomputed once per profile: bin shares with the missing
bucket, the sorted KS sample. A window costs one sort of its own values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2 as chi2_distribution
from scipy.stats import kstwo

from models.profile import CategoricalProfile, NumericProfile

# Empty bins are floored before the log: 1e-6 (the chapter) makes one empty
# bin worth ~1.4 PSI on its own; 1e-4 keeps single empty bins from dominating.
PSI_FLOOR = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two share vectors.

    >>> round(psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])), 6)
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 3)
    0.879
    """
    e = np.maximum(expected, floor)
    a = np.maximum(actual, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_against_sorted(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value; ``reference`` is already sorted.

    >>> rng = np.random.default_rng(0)
    >>> ref = np.sort(rng.normal(size=5000))
    >>> d, p = ks_against_sorted(ref, rng.normal(size=1000)); d < 0.05 and p > 0.01
    True
    >>> d, p = ks_against_sorted(ref, rng.normal(1.0, size=1000)); d > 0.3 and p < 1e-9
    True
    """
    w = np.sort(window)
    n, m = w.size, reference.size
    if n == 0 or m == 0:
        return math.nan, math.nan
    below_or_at = np.searchsorted(reference, w, side="right") / m
    below = np.searchsorted(reference, w, side="left") / m
    steps = np.arange(1, n + 1) / n
    d = float(max(np.max(steps - below_or_at), np.max(below - (steps - 1 / n)), 0.0))
    # As scipy's ks_2samp(method="asymp"): the one-sample KS distribution at the effective size.
    effective = round(m * n / (m + n))
    return d, float(kstwo.sf(d, effective))


def chi_square(expected_shares: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Pearson chi-square of observed counts against expected shares (floored)."""
    n = counts.sum()
    if n == 0:
        return math.nan, math.nan
    shares = np.maximum(expected_shares, PSI_FLOOR)
    expected = shares / shares.sum() * n
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    dof = max(1, int(np.count_nonzero(expected_shares > 0) + np.count_nonzero(counts[expected_shares == 0]) - 1))
    return statistic, float(chi2_distribution.sf(statistic, dof))


@dataclass(frozen=True)
class FeatureStats:
    n: int
    psi: float
    ks_statistic: float | None
    ks_pvalue: float | None
    chi2_statistic: float
    chi2_pvalue: float
    missing_share: float


class CategoricalEncoder:
    """Category string -> bucket code: known categories, then other, then unseen."""

    def __init__(self, profile: CategoricalProfile):
        self._codes = {name: i for i, name in enumerate(profile.categories)}
        k = len(profile.categories)
        self._other_names = set(profile.other_categories)
        self.other, self.unseen = k, k + 1

    def encode(self, value) -> float:
        code = self._codes.get(value)
        if code is not None:
            return code
        if value is None:
            return math.nan
        key = value if isinstance(value, str) else str(value)
        if key in self._codes:
            return self._codes[key]
        return self.other if key in self._other_names else self.unseen


class FeatureEvaluator:
    """Computes FeatureStats for one feature's window column."""

    def __init__(self, profile: NumericProfile | CategoricalProfile):
        self.profile = profile
        present = 1 - profile.missing_share
        # Expected shares of the bins plus a trailing missing bucket.
        self.expected = np.append(np.array(profile.shares) * present, profile.missing_share)
        if isinstance(profile, NumericProfile):
            self._edges = np.array(profile.edges)
            self._ks_sample = np.array(profile.ks_sample)
            self.encoder = None
        else:
            self.encoder = CategoricalEncoder(profile)

    def evaluate(self, column: np.ndarray) -> FeatureStats:
        missing = np.isnan(column)
        present = column[~missing]
        bins = self.expected.size - 1
        if self.encoder is None:
            counts = np.bincount(np.searchsorted(self._edges, present, side="left"), minlength=bins)
            ks_statistic, ks_pvalue = ks_against_sorted(self._ks_sample, present)
        else:
            counts = np.bincount(present.astype(np.int64), minlength=bins)
            ks_statistic = ks_pvalue = None
        counts = np.append(counts, missing.sum()).astype(float)
        n = column.size
        chi2_statistic, chi2_pvalue = chi_square(self.expected, counts)
        return FeatureStats(n=n, psi=psi(self.expected, counts / n), ks_statistic=ks_statistic,
                            ks_pvalue=ks_pvalue, chi2_statistic=chi2_statistic, chi2_pvalue=chi2_pvalue,
                            missing_share=float(missing.mean()))
