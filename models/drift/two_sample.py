"""Two-sample tests of a window's values against a numeric feature's sorted reference sample: KS, the
Mann-Whitney rank sum and Anderson-Darling, from the same ``searchsorted`` counts, and ties handled.

Real features tie (a binary flag, integer counts, a value most rows share). With ties the plain KS
statistic can only jump where the reference has values, so its asymptotic p-values pile up near 1, and
the rank sum's no-ties variance is too large: both read as strong evidence of no drift, which the
evidence over windows sums, so a drift on tied data starts from below. Here the rank sum uses mid-ranks
with the variance that ties leave, and Anderson-Darling is computed with the ties broken at random (a
window value's place among the reference values equal to it is uniform, drawn reproducibly), which makes
the data continuous to the test and its p-value uniform without drift. The plain KS statistic stays as
reported (it is what scipy's ``ks_2samp`` gives).
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from undertow.models.drift import ad_tail_table


class SortedReference:
    """A numeric feature's sorted reference sample with what its ties need, computed once per profile:
    its distinct values, the tie term of the rank sum's variance (sum of t^3 - t over its groups of equal
    values), and a key per value that breaks its ties at random (group g's values at g + a uniform
    fraction, fixed seed: the same on every replay).

    >>> r = SortedReference(np.array([0.0, 0.0, 1.0, 1.0, 1.0, 2.0]))
    >>> r.distinct.tolist(), r.tie_term, bool(np.all(np.diff(r.keys) > 0)), r.keys.astype(int).tolist()
    ([0.0, 1.0, 2.0], 30.0, True, [0, 0, 1, 1, 1, 2])
    """

    def __init__(self, values: npt.NDArray[np.float64]):
        self.values = values
        self.distinct, group, counts = np.unique(values, return_inverse=True, return_counts=True)
        self.tie_term = float(np.sum(counts.astype(float) ** 3 - counts))
        self.keys = np.sort(group + np.random.default_rng(0).random(values.size))


def two_sample_tests(
    reference: npt.NDArray[np.float64] | SortedReference, window: npt.NDArray[np.float64]
) -> tuple[float, int, float, float]:
    """KS statistic against the sorted ``reference``, its effective size, the Mann-Whitney rank-sum z of
    the window (NaN if either is empty) and the Anderson-Darling statistic with ties broken at random.

    The rank sum counts the reference values below each window value (ties as half): for a shift of
    location it is the most powerful of the three (KS's asymptotic efficiency against it is about 0.64 on
    normal data). KS and Anderson-Darling see any change of shape; Anderson-Darling weighs the tails by
    their spread, so it sees a change of spread or a mixture's shares long before KS does (on the real
    features of bench/real_streams.py, 0.5 to 1 standard normal score more at the same shift).

    >>> from scipy.stats import mannwhitneyu, norm
    >>> rng = np.random.default_rng(1)
    >>> ref, window = np.sort(rng.normal(size=5000)), rng.normal(0.2, size=1000)
    >>> d, effective, z, a2 = two_sample_tests(ref, window)
    >>> round(z, 3), effective
    (7.114, 833)
    >>> p = mannwhitneyu(window, ref, method="asymptotic", use_continuity=False).pvalue
    >>> round(float(norm.isf(p / 2)), 3)
    7.114
    >>> round(a2, 2)  # far beyond 3.857, the 1 % point of its distribution without drift
    26.06
    >>> ref, window = np.sort(rng.integers(0, 3, 5000).astype(float)), rng.integers(0, 3, 1000).astype(float)
    >>> z = two_sample_tests(ref, window)[2]
    >>> p = mannwhitneyu(window, ref, method="asymptotic", use_continuity=False).pvalue  # tie-corrected
    >>> round(abs(z), 6) == round(float(norm.isf(p / 2)), 6)
    True
    """
    ref = reference if isinstance(reference, SortedReference) else SortedReference(reference)
    w = np.sort(window)
    n, m = w.size, ref.values.size
    if n == 0 or m == 0:
        return math.nan, 0, math.nan, math.nan
    below_or_at = np.searchsorted(ref.values, w, side="right")
    below = np.searchsorted(ref.values, w, side="left")
    steps = np.arange(1, n + 1) / n
    d = float(max(np.max(steps - below_or_at / m), np.max(below / m - (steps - 1 / n)), 0.0))
    # U = pairs (window value above reference value) + half the ties; its null variance with the ties of
    # both samples together (mid-ranks).
    u = (float(below_or_at.sum()) + float(below.sum())) / 2
    big_n = n + m
    variance = n * m / 12 * ((big_n + 1) - _tie_term(ref, w, below_or_at - below) / (big_n * (big_n - 1)))
    rank_z = (u - n * m / 2) / math.sqrt(variance) if variance > 0 else 0.0
    equal = below_or_at > below  # window values the reference also has
    placed = _ties_broken(ref, w, equal) if equal.any() else below
    return d, round(m * n / big_n), rank_z, _anderson_darling(placed, n, m)


def _tie_term(ref: SortedReference, w: npt.NDArray[np.float64], at: npt.NDArray[np.int64]) -> float:
    """Sum of t^3 - t over the groups of equal values of reference and window together: the reference's
    own, with the groups the window joins (or forms) replaced. ``at``: reference values equal to each."""
    new = np.flatnonzero(w[1:] != w[:-1]) + 1  # where a run of equal window values starts, but the first
    if new.size == w.size - 1 and not at.any():  # no window value repeats or joins a reference group
        return ref.tie_term
    starts = np.concatenate(([0], new))
    c = np.diff(np.concatenate((starts, [w.size]))).astype(float)
    r = at[starts].astype(float)
    t = r + c
    return ref.tie_term + float(np.sum(t**3 - t - (r**3 - r)))


def _ties_broken(
    ref: SortedReference, w: npt.NDArray[np.float64], equal: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Reference values below each window value (sorted anew) once every window value equal to reference
    values is placed at random among them: a uniform key in its value's group, seeded by the window's own
    values, so a replay gives the same statistic and windows do not share their draws. A value the
    reference lacks keeps its group number, before the next group's keys."""
    group = np.searchsorted(ref.distinct, w, side="left").astype(float)
    jitter = np.random.default_rng(zlib.crc32(w.tobytes())).random(w.size)
    return np.searchsorted(ref.keys, np.sort(np.where(equal, group + jitter, group)), side="left")


def _anderson_darling(below: npt.NDArray[np.int64], n: int, m: int) -> float:
    """The two-sample Anderson-Darling statistic (Pettitt 1976) of a window whose i-th smallest value has
    ``below[i]`` reference values under it (continuous: no ties across the samples):
    sum over the pooled order j = 1 .. N - 1 of (N M_j - n j)^2 / (j (N - j)), over m n, M_j the window
    values among the first j. M_j is constant between window values, so the sum runs over the n + 1 runs
    with prefix sums of 1, j and j^2 over j (N - j): O(n), not O(N).

    >>> below = np.array([0, 0, 3, 5])  # pooled order: w w r r r w r r w r
    >>> j, window_so_far = np.arange(1, 10), np.array([1, 2, 2, 2, 2, 3, 3, 3, 4])
    >>> direct = np.sum((10 * window_so_far - 4 * j) ** 2 / (j * (10 - j))) / 24
    >>> round(_anderson_darling(below, 4, 6), 12) == round(float(direct), 12)
    True
    """
    big_n = n + m
    w0, w1, w2 = _ad_prefix_sums(big_n)
    # The i-th window value sits at pooled index places[i] (0-based), so M_j = k for j in
    # (places[k - 1], places[k]]: run k's sums are prefix[places[k]] - prefix[places[k - 1]], with
    # places[-1] = 0 and places[n] = N - 1 (j runs 1 .. N - 1).
    places = below + np.arange(n)
    lo = np.concatenate(([0], places))
    hi = np.concatenate((places, [big_n - 1]))
    k = np.arange(n + 1, dtype=float)
    s0, s1, s2 = w0[hi] - w0[lo], w1[hi] - w1[lo], w2[hi] - w2[lo]
    total = (big_n * k) ** 2 * s0 - 2 * big_n * n * k * s1 + n**2 * s2
    return float(total.sum() / (m * n))


@functools.lru_cache(maxsize=16)
def _ad_prefix_sums(big_n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Prefix sums over j = 1 .. N - 1 of 1, j and j^2 over j (N - j), with a leading 0 (windows of one size
    share them; a few sizes at a time)."""
    j = np.arange(1, big_n, dtype=float)
    weight = 1.0 / (j * (big_n - j))
    return tuple(np.concatenate(([0.0], np.cumsum(weight * j**p))) for p in (0, 1, 2))  # type: ignore[return-value]


def anderson_darling_sf(statistic: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """P(A > statistic) under the limiting distribution of Anderson-Darling, which the two-sample statistic
    follows without drift (within 0.5 % of simulation at windows of 1,000 against 5,000). Up to 3:
    Marsaglia and Marsaglia's (2004) approximation (absolute error below 2e-6); beyond, the saddlepoint
    approximation of the tail (relative error a few per cent, 0.01 of a standard normal score).

    >>> [round(float(p), 4) for p in anderson_darling_sf([1.0, 2.492, 3.857, 6.0])]
    [0.3573, 0.05, 0.0104, 0.001]
    """
    x = np.asarray(statistic, dtype=float)
    body = np.where(x < 2, _marsaglia_low(np.maximum(x, 1e-3)), _marsaglia_high(np.minimum(x, 3.0)))
    grid, log_sf = _saddlepoint_tail()
    tail = np.exp(np.interp(x, grid, log_sf))  # past the grid's end (p below 1e-43) its last value
    return np.where(np.isnan(x), np.nan, np.where(x < 3, body, tail))


def _marsaglia_low(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cdf = (
        np.exp(-1.2337141 / z)
        / np.sqrt(z)
        * (2.00012 + (0.247105 - (0.0649821 - (0.0347962 - (0.011672 - 0.00168691 * z) * z) * z) * z) * z)
    )
    return 1.0 - cdf


def _marsaglia_high(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    poly = 1.0776 - (2.30695 - (0.43424 - (0.082433 - (0.008056 - 0.0003146 * z) * z) * z) * z) * z
    return -np.expm1(-np.exp(poly))


# The limit is sum_j lambda_j X_j with X_j independent chi-square(1), lambda_j = 1 / (j (j + 1)). Terms past
# _TERMS add about s / (_TERMS + 1) to the cumulant generating function K(s) (they are nearly linear in s).
_TERMS = 2000


@functools.cache
def _saddlepoint_tail() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """log P(A > x) on a grid from 3 to 100: ``computed_saddlepoint_tail``'s table as written out in
    ``ad_tail_table`` (computing it took a process 0.2-0.45 s of CPU at its first window)."""
    return ad_tail_table.table()


def computed_saddlepoint_tail() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """log P(A > x) on a grid from 3 to 100 by the Lugannani-Rice formula."""
    lam = 1.0 / (np.arange(1, _TERMS + 1) * np.arange(2, _TERMS + 2))
    rest = 1.0 / (_TERMS + 1)
    x = np.arange(*ad_tail_table.GRID)
    # Solve K'(s) = x for s in (0, 1/2 lambda_1 = 1). K' is convex and increasing, so Newton's steps from
    # the right of the root approach it from the right: start where the first term alone reaches x.
    s = 1.0 - 0.5 / x
    for _ in range(50):
        denominator = 1.0 - 2.0 * np.outer(s, lam)
        first = (lam / denominator).sum(axis=1) + rest
        second = (2 * lam**2 / denominator**2).sum(axis=1)
        s = s - (first - x) / second
    denominator = 1.0 - 2.0 * np.outer(s, lam)
    k = -0.5 * np.log(denominator).sum(axis=1) + s * rest
    second = (2 * lam**2 / denominator**2).sum(axis=1)
    w = np.sqrt(2 * (s * x - k))
    u = s * np.sqrt(second)
    sf = ndtr(-w) + np.exp(-(w**2) / 2) / math.sqrt(2 * math.pi) * (1 / u - 1 / w)
    return x, np.log(sf)
