"""Per-feature drift statistics of one window against a reference profile.

Window columns are float arrays with NaN for missing values; categorical
columns hold bucket codes (``CategoricalEncoder``). Everything the reference
contributes is precomputed once per profile: bin shares with the missing
bucket, the sorted KS sample. A window costs one sort of its own values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2 as chi2_distribution
from scipy.stats import kstwo

from undertow.models.drift.two_sample import SortedReference, anderson_darling_sf, two_sample_tests
from undertow.models.profile import CategoricalProfile, NumericProfile

# Empty bins are floored before the log: 1e-6 (the chapter) makes one empty
# bin worth ~1.4 PSI on its own; 1e-4 keeps single empty bins from dominating.
PSI_FLOOR = 1e-4


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64], floor: float = PSI_FLOOR) -> float:
    """Population stability index of two share vectors.

    >>> round(psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])), 6)
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 3)
    0.879
    """
    e = np.maximum(expected, floor)
    a = np.maximum(actual, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_against_sorted(reference: npt.NDArray[np.float64], window: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value; ``reference`` is already sorted.

    >>> rng = np.random.default_rng(0)
    >>> ref = np.sort(rng.normal(size=5000))
    >>> d, p = ks_against_sorted(ref, rng.normal(size=1000)); d < 0.05 and p > 0.01
    True
    >>> d, p = ks_against_sorted(ref, rng.normal(1.0, size=1000)); d > 0.3 and p < 1e-9
    True
    """
    d, effective, _, _ = two_sample_tests(reference, window)
    # As scipy's ks_2samp(method="asymp"): the one-sample KS distribution at the effective size.
    return (d, float(kstwo.sf(d, effective))) if effective else (math.nan, math.nan)


def chi_square_statistic(
    expected_shares: npt.NDArray[np.float64],
    counts: npt.NDArray[np.float64],
) -> tuple[float, int]:
    """Pearson chi-square of observed counts against expected shares (floored), and its degrees of freedom."""
    n = counts.sum()
    if n == 0:
        return math.nan, 1
    shares = np.maximum(expected_shares, PSI_FLOOR)
    expected = shares / shares.sum() * n
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    dof = max(1, int(np.count_nonzero(expected_shares > 0) + np.count_nonzero(counts[expected_shares == 0]) - 1))
    return statistic, dof


@dataclass(frozen=True)
class FeatureStats:
    n: int
    psi: float
    ks_statistic: float | None
    ks_pvalue: float | None
    chi2_statistic: float
    chi2_pvalue: float
    missing_share: float
    chi2_dof: int = 0
    rank_z: float | None = None  # Mann-Whitney z against the reference, mid-ranks (numeric features)
    # Anderson-Darling against the reference with ties broken at random (numeric features): uniform without
    # drift whatever the ties, and the stronger test of shape (models/drift/two_sample.py).
    ad_pvalue: float | None = None


# A window column's statistics before the p-values: (n, psi, ks statistic, ks effective size, chi-square,
# dof, missing share, rank-sum z, Anderson-Darling statistic); the last three are None for a categorical
# feature.
WindowStatistics: TypeAlias = tuple[int, float, float | None, int, float, int, float, float | None, float | None]


class CategoricalEncoder:
    """Category string -> bucket code: known categories, then other, then unseen."""

    def __init__(self, profile: CategoricalProfile):
        self._codes = {name: i for i, name in enumerate(profile.categories)}
        k = len(profile.categories)
        self._other_names = set(profile.other_categories)
        self.other, self.unseen = k, k + 1

    def encode(self, value: Any) -> float:
        """The bucket code of an event's value (a category, or anything else, as decoded from JSON)."""
        code = self._codes.get(value)
        if code is not None:
            return code
        if value is None:
            return math.nan
        key = value if isinstance(value, str) else str(value)
        if key in self._codes:
            return self._codes[key]
        return self.other if key in self._other_names else self.unseen

    def encode_many(self, values: list[Any]) -> list[float]:
        """``encode`` of each value: the known categories by one dict lookup each in C (a Python call per
        value had been most of a categorical column's encoding), the rest by ``encode``.

        >>> profile = CategoricalProfile(categories=["a", "1"], other_categories=["r"], shares=[0.25] * 4,
        ...                              missing_share=0)
        >>> CategoricalEncoder(profile).encode_many(["a", "1", 1, "r", "new", None, "a"])
        [0, 1, 1, 2, 3, nan, 0]
        """
        codes = list(map(self._codes.get, values))
        if None in codes:  # a null, or a value that is not a known category as it is
            return [self.encode(value) if code is None else code for code, value in zip(codes, values)]
        return cast("list[float]", codes)


class FeatureEvaluator:
    """Computes FeatureStats for one feature's window column."""

    def __init__(self, profile: NumericProfile | CategoricalProfile):
        self.profile = profile
        present = 1 - profile.missing_share
        # Expected shares of the bins plus a trailing missing bucket.
        self.expected = np.append(np.array(profile.shares) * present, profile.missing_share)
        # What PSI and chi-square take from the reference, computed here once rather than in every window.
        self._psi_expected = np.maximum(self.expected, PSI_FLOOR)
        self._chi2_shares = self._psi_expected / self._psi_expected.sum()
        self._chi2_kept, self._chi2_empty = int(np.count_nonzero(self.expected > 0)), self.expected == 0
        if isinstance(profile, NumericProfile):
            self._edges = np.array(profile.edges)
            self._ks_sample = SortedReference(np.array(profile.ks_sample))
            self.encoder = None
        else:
            self.encoder = CategoricalEncoder(profile)

    def statistics(self, column: npt.NDArray[np.float64]) -> WindowStatistics:
        """(n, psi, ks statistic, ks effective size, chi-square, dof, missing share, rank-sum z,
        Anderson-Darling statistic); p-values come later."""
        missing = np.isnan(column)
        n_missing = int(np.count_nonzero(missing))
        present = column[~missing] if n_missing else column
        bins = self.expected.size - 1
        ks_d: float | None
        rank_z: float | None
        ad: float | None
        if self.encoder is None:
            binned = np.bincount(np.searchsorted(self._edges, present, side="left"), minlength=bins)
            ks_d, ks_n, rank_z, ad = two_sample_tests(self._ks_sample, present)
        else:
            binned = np.bincount(present.astype(np.int64), minlength=bins)
            ks_d, ks_n, rank_z, ad = None, 0, None, None
        counts = np.append(binned, n_missing).astype(float)
        chi2_statistic, dof = self._chi_square(counts)
        return (
            column.size,
            psi(self._psi_expected, counts / column.size),  # flooring it again changes nothing
            ks_d,
            ks_n,
            chi2_statistic,
            dof,
            n_missing / column.size if column.size else math.nan,
            rank_z,
            ad,
        )

    def _chi_square(self, counts: npt.NDArray[np.float64]) -> tuple[float, int]:
        """``chi_square_statistic(self.expected, counts)``, with the reference's part precomputed."""
        n = counts.sum()
        if n == 0:
            return math.nan, 1
        expected = self._chi2_shares * n
        statistic = float(np.sum((counts - expected) ** 2 / expected))
        return statistic, max(1, int(self._chi2_kept + np.count_nonzero(counts[self._chi2_empty]) - 1))

    def evaluate(self, column: npt.NDArray[np.float64]) -> FeatureStats:
        return evaluate_window([self], column.reshape(-1, 1))[0]


_KS_SF: dict[tuple[float, int], float] = {}
KS_SF_CACHED = 65_536


def ks_sf(statistics: list[tuple[float, int]]) -> list[float]:
    """``kstwo.sf(d, n)`` of each (d, n), computed once per distinct pair.

    scipy evaluates the exact distribution in Python, 70 us to 0.7 ms per
    value: a third of a window's statistics. A window of n values against a
    reference of m takes d from the multiples of 1 / lcm(n, m), so windows of
    one size repeat a few hundred values, and the cache answers them with
    scipy's own numbers. It is cleared when full, which bounds it.

    >>> ks_sf([(0.03, 833), (0.05, 833)]) == [float(p) for p in kstwo.sf([0.03, 0.05], [833, 833])]
    True
    """
    values = [_KS_SF.get(key) for key in statistics]
    missing = list(dict.fromkeys(key for key, value in zip(statistics, values) if value is None))
    if not missing:
        return cast("list[float]", values)  # every pair was cached
    computed = dict(zip(missing, map(float, kstwo.sf([d for d, _ in missing], [n for _, n in missing]))))
    if len(_KS_SF) + len(computed) > KS_SF_CACHED:
        _KS_SF.clear()
    _KS_SF.update(computed)  # other threads may read meanwhile: this call's answers come from ``computed``
    return [computed[key] if value is None else value for key, value in zip(statistics, values)]


def evaluate_window(evaluators: list[FeatureEvaluator], rows: npt.NDArray[np.float64]) -> list[FeatureStats]:
    """FeatureStats of every column; the p-values in vectorised calls.

    scipy's distribution methods cost ~0.1 ms per call whatever the size, so
    one call per window instead of one per feature.
    """
    stats = [evaluator.statistics(rows[:, i]) for i, evaluator in enumerate(evaluators)]
    # numeric and not empty: (column, (ks statistic, effective size), Anderson-Darling statistic)
    tested = [(i, (s[2], s[3]), s[8]) for i, s in enumerate(stats) if s[2] is not None and s[8] is not None and s[3]]
    ks_p = dict(zip([i for i, _, _ in tested], ks_sf([key for _, key, _ in tested])))
    ad_p = dict(zip([i for i, _, _ in tested], anderson_darling_sf([a2 for _, _, a2 in tested]).tolist()))
    chi2_p = chi2_distribution.sf([s[4] for s in stats], [s[5] for s in stats])
    return [
        FeatureStats(
            n=n,
            psi=value,
            ks_statistic=d if i in ks_p or d is None else math.nan,
            ks_pvalue=float(ks_p[i]) if i in ks_p else (None if d is None else math.nan),
            chi2_statistic=chi2,
            chi2_pvalue=float(chi2_p[i]),
            missing_share=missing,
            chi2_dof=dof,
            rank_z=rank_z,
            ad_pvalue=ad_p.get(i),
        )
        for i, (n, value, d, _, chi2, dof, missing, rank_z, _) in enumerate(stats)
    ]
