"""Dependence drift: how each pair of numeric inputs moves together in a window, against the reference.

The statistic is the **Gaussian rank correlation** (Boudt, Cornelissen and Croux 2012): Pearson's
correlation of the columns' normal scores Φ⁻¹(rank / (m + 1)), mid-ranks for ties, a missing value scored
0 (the median). Ranks make it blind to the marginals (a shifted or rescaled feature is the per-feature
checks' business, not this one's) and robust to heavy tails, where Pearson's r is neither; unlike
Spearman's it is as efficient as Pearson's at the normal, and its Fisher z is close to normal.

Each pair's window correlation is tested against the reference's with Fisher's z:
``(atanh(r_window) - atanh(r_reference)) / sqrt(v / (n - 3) + v / (N - 3))``, where ``v`` is the pair's
variance of atanh(r) per row (1 for a Gaussian copula) and N the reference rows. ``v`` is estimated on the
reference from the estimator's influence function, rank estimation of the marginals included, because
real copulas are not Gaussian: on a t copula (3 df) it is 1.75 even for uncorrelated features, and between
0.9 and 2 for the pairs of scikit-learn's breast-cancer data; taking 1 there would make a 7-sd threshold
a 5-sd one. The window's statistic is the largest |z| over the P (P - 1) / 2 pairs, held against Šidák's
threshold for the per-window false-alarm budget: exact for independent pairs and conservative for
dependent ones (Šidák's inequality for two-sided normal tests), and nearly exact in the far tail where the
budget sits (the tails of correlated normals are nearly independent), so a simulated max-statistic would
buy little there.

Cost per window of n rows: sorting each column (P n log n) and one matrix product (n P²); for n = 1,000
about 0.3 ms with 10 features and 3 ms with 50 (bench/dependence.py); hence a cap on the features.

>>> rng = np.random.default_rng(7)
>>> reference = rng.normal(size=(5000, 3))
>>> correlations, variances = reference_dependence(reference)
>>> test = DependenceTest(("a", "b", "c"), correlations, variances, reference_rows=5000, false_alarm_windows=1e9)
>>> round(test.threshold, 2), test.pairs
(6.28, 3)
>>> test(rng.normal(size=(1000, 3))).z < test.threshold
True
>>> window = rng.normal(size=(1000, 3))
>>> window[:, 1] = 0.5 * window[:, 0] + np.sqrt(0.75) * window[:, 1]  # same marginals, correlation 0.5
>>> moved = test(window)
>>> moved.z > test.threshold, moved.top[0].features, round(moved.top[0].value, 1)
(True, ('a', 'b'), 0.5)
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import ndtri
from threadpoolctl import ThreadpoolController

Matrix = npt.NDArray[np.float64]

MIN_WINDOW_ROWS = 50  # Fisher's z is normal enough from here; smaller windows are not judged
DEGENERATE = 0.999  # |reference correlation| above which one feature is a monotone function of the other
MIN_VARIANCE = 0.25  # floor of a pair's variance per row (a Gaussian copula's is 1): a noisy estimate never
# makes a pair's z run high
TOP_PAIRS = 3  # pairs an alert names


def normal_scores(rows: Matrix) -> Matrix:
    """Each column's normal scores Φ⁻¹(rank / (m + 1)), mid-ranks for ties, ``m`` the column's values
    present; a missing value (NaN) scores 0. Returned transposed, one row per column: (P, n).

    >>> normal_scores(np.array([[1.0, 5.0], [2.0, np.nan], [3.0, 5.0]])).round(3)
    array([[-0.674,  0.   ,  0.674],
           [ 0.   ,  0.   ,  0.   ]])
    """
    values = np.ascontiguousarray(rows.T, dtype=float)
    ranks, present, counts = _ranks(values)
    return _scores(ranks, present, counts)


def _ranks(values: Matrix) -> tuple[Matrix, npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """Mid-ranks of each row of ``values`` among its values present; which are present; how many."""
    present = ~np.isnan(values)
    order = np.argsort(values, axis=1)  # NaN last
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, _mid_ranks(np.take_along_axis(values, order, axis=1)), axis=1)
    return ranks, present, present.sum(axis=1)


def _scores(ranks: Matrix, present: npt.NDArray[np.bool_], counts: npt.NDArray[np.intp]) -> Matrix:
    n = ranks.shape[1]
    if np.all(counts == n):
        # Mid-ranks are multiples of 1/2: one table of Φ⁻¹ for every column (ndtri per value costs 10x).
        table = ndtri(np.arange(2, 2 * n + 1) / (2.0 * (n + 1)))
        return np.asarray(table[(2 * ranks).astype(np.intp) - 2], dtype=float)
    scores = ndtri(np.where(present, ranks, 1.0) / (counts[:, None] + 1))
    return np.where(present, scores, 0.0)


def _mid_ranks(ordered: Matrix) -> Matrix:
    """1-based mid-ranks of sorted rows (ties share the mean of their positions; NaNs are each their own)."""
    n = ordered.shape[1]
    position = np.broadcast_to(np.arange(n), ordered.shape)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    return np.asarray((first + last) / 2 + 1, dtype=float)


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded libraries once (threadpool_limits does per call: 0.8 ms)


def correlations(scores: Matrix) -> Matrix:
    """The (P, P) correlations of normal scores; NaN for a column without two distinct values."""
    # One BLAS thread: on a busy machine a second one spins (measured: 200 x 1,000 scores 30 ms against 5 ms,
    # as models/drift/detectors.py found for its solves). The same result either way.
    with _blas().limit(limits=1, user_api="blas"):
        gram = scores @ scores.T
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        out: Matrix = gram / np.outer(norms, norms)
    out[(norms == 0)[:, None] | (norms == 0)[None, :]] = np.nan
    return out


def reference_dependence(rows: Matrix) -> tuple[Matrix, Matrix]:
    """The reference's correlations and each pair's variance of atanh(r) per row, both (P, P).

    From the influence function of r = S_ab / sqrt(S_aa S_bb), S the mean products of scores a, b
    (Genest, Ghoudi and Rivest 1995, with mid-ranks for ties): a row k moves S_ab by its own a_k b_k and,
    through the ranks it shifts, by ψ_a(k) = mean over rows l of (δ(x_k, x_l) - F(x_l)) J'(F(x_l)) b_l,
    δ = 1{x_k < x_l} + 1{x_k = x_l} / 2 and F the mid-distribution, and the same for column b. With ties
    S_aa moves too (without, it is fixed by the ranks and its terms cancel), so they are kept: a flag or a
    count's scores depend on its shares. Suffix sums in each column's order make it O(N P²) for N rows.
    Missing values enter no sum; a column present in a share q of the rows has its ψ scaled by 1 / q, as
    its ranks come from those rows only.
    """
    values = np.ascontiguousarray(rows.T, dtype=float)
    ranks, present, counts = _ranks(values)
    scores = _scores(ranks, present, counts)  # (P, N)
    columns, n = scores.shape
    share = np.maximum(counts, 1) / n
    with _blas().limit(limits=1, user_api="blas"):
        mean_products = scores @ scores.T / n  # S
    r = correlations(scores)
    ranked = np.where(present, values, np.inf)  # missing values last, out of every sum
    order = np.argsort(ranked, axis=1, kind="stable")
    ordered = np.take_along_axis(ranked, order, axis=1)
    # Each row's tie group in its column's order: from ``first`` to before ``after``.
    first = np.stack([np.searchsorted(ordered[j], ranked[j], side="left") for j in range(columns)])
    after = np.stack([np.searchsorted(ordered[j], ranked[j], side="right") for j in range(columns)])
    # F(x_l) = (mid-rank - 1/2) / m exactly, so that each ψ has mean 0; J' = 1 / φ(J).
    mid = np.where(present, (ranks - 0.5) / np.maximum(counts, 1)[:, None], 0.0)
    slope = np.where(present, np.sqrt(2 * math.pi) * np.exp(scores**2 / 2), 0.0)
    slope_sorted, mid_sorted = np.take_along_axis(slope, order, axis=1), np.take_along_axis(mid, order, axis=1)

    def psi(weights: Matrix, column: int | slice) -> Matrix:
        """ψ of the ranks of ``column`` (all of them for a slice), ``weights`` J'(F(x_l)) b_l in its order."""
        spread = _mid_suffix(weights, first[column], after[column]) - (mid_sorted[column] * weights).sum(
            axis=-1, keepdims=True
        )
        return np.where(
            present[column], spread / (n * share[column, None] if isinstance(column, slice) else n * share[column]), 0.0
        )

    own = psi(slope_sorted * np.take_along_axis(scores, order, axis=1), slice(None))  # (P, N): on S_jj
    self_influence = scores**2 - np.diag(mean_products)[:, None] + 2 * own  # S_jj's influence, per column
    norms = np.sqrt(np.diag(mean_products))
    variances = np.full((columns, columns), np.nan)
    for i in range(columns):
        partner = np.broadcast_to(scores[i], (columns, n))
        psi_j = psi(slope_sorted * np.take_along_axis(partner, order, axis=1), slice(None))  # j's ranks
        psi_i = psi(slope_sorted[i] * scores[:, order[i]], i)  # i's ranks, against every partner j
        products = scores[i] * scores - mean_products[i][:, None] + psi_i + psi_j
        with np.errstate(invalid="ignore", divide="ignore"):
            influence = products / (norms[i] * norms)[:, None] - r[i][:, None] / 2 * (
                self_influence[i] / mean_products[i, i] + self_influence / np.diag(mean_products)[:, None]
            )
            variances[i] = influence.var(axis=1) / (1 - np.clip(r[i], -DEGENERATE, DEGENERATE) ** 2) ** 2
    np.fill_diagonal(variances, np.nan)
    return r, variances


def _mid_suffix(weights: Matrix, first: npt.NDArray[np.intp], after: npt.NDArray[np.intp]) -> Matrix:
    """Per row of ``weights`` (in sorted order), Σ over l of w_l (1{l after the group} + 1{l in it} / 2) for each
    row's tie group [first, after): the halves of the sums from ``first`` and from ``after``."""
    suffix = np.zeros(weights.shape[:-1] + (weights.shape[-1] + 1,))
    suffix[..., :-1] = np.cumsum(weights[..., ::-1], axis=-1)[..., ::-1]
    starts = np.broadcast_to(first, weights.shape)
    ends = np.broadcast_to(after, weights.shape)
    return np.asarray(
        (np.take_along_axis(suffix, starts, axis=-1) + np.take_along_axis(suffix, ends, axis=-1)) / 2, dtype=float
    )


def pair_threshold(pairs: int, false_alarm_windows: float) -> float:
    """The |z| one pair must exceed so that, over ``pairs`` pairs, a stationary window raises an alarm at most
    once per ``false_alarm_windows`` (Šidák, two-sided).

    >>> round(pair_threshold(45, 1e9), 2), round(pair_threshold(1225, 1e9), 2), round(pair_threshold(1, 1e9), 2)
    (6.69, 7.16, 6.11)
    """
    per_pair = -math.expm1(math.log1p(-1 / false_alarm_windows) / max(pairs, 1))
    return float(-ndtri(per_pair / 2))


@dataclass(frozen=True)
class PairChange:
    """One pair's correlation in the reference and in the window, and the change's z."""

    features: tuple[str, str]
    reference: float
    value: float
    z: float


@dataclass(frozen=True)
class DependenceResult:
    """A window's test: the largest |z| over the pairs, the pairs that moved most, and every pair's |z| and
    change of correlation (for the bands)."""

    n: int
    z: float
    top: list[PairChange]
    abs_z: Matrix
    abs_change: Matrix

    def largest_change(self, threshold: float) -> float:
        """The largest change of correlation among the pairs whose |z| exceeds ``threshold`` (0 if none): the
        effect size decides the band, the test only vetoes noise."""
        return float(self.abs_change[self.abs_z > threshold].max(initial=0.0))


class DependenceTest:
    """The reference's pairs (upper triangle, row-major, of ``features``) and the threshold of their max |z|.

    ``correlations`` and ``variances`` are (P, P) or their upper triangles; pairs whose reference correlation
    is undefined or degenerate (|r| > 0.999: one feature a monotone function of the other) are not tested.
    """

    def __init__(
        self,
        features: tuple[str, ...] | list[str],
        correlations: Matrix | list[float],
        variances: Matrix | list[float],
        reference_rows: int,
        false_alarm_windows: float,
    ):
        self.features = tuple(features)
        upper = np.triu_indices(len(self.features), k=1)
        r, v = np.asarray(correlations, dtype=float), np.asarray(variances, dtype=float)
        r, v = (r[upper], v[upper]) if r.ndim == 2 else (r, v)
        tested = np.isfinite(r) & np.isfinite(v) & (np.abs(r) <= DEGENERATE)
        self._rows, self._columns = upper[0][tested], upper[1][tested]
        self.names = [(self.features[i], self.features[j]) for i, j in zip(self._rows, self._columns)]
        self.reference = r[tested]
        self._reference_z = np.arctanh(self.reference)
        self.variance = np.maximum(v[tested], MIN_VARIANCE)
        self.reference_rows = reference_rows
        self.pairs = int(tested.sum())
        self.threshold = pair_threshold(self.pairs, false_alarm_windows)

    def at_budget(self, false_alarm_windows: float, variance: float | None = None) -> DependenceTest:
        """The same pairs at another budget; ``variance``: every pair's taken as this instead (1: a plain Fisher
        z, as Gaussian theory has it). For comparisons (bench/dependence.py)."""
        other = copy.copy(self)
        other.threshold = pair_threshold(self.pairs, false_alarm_windows)
        if variance is not None:
            other.variance = np.full(self.pairs, variance)
        return other

    def __call__(self, rows: Matrix) -> DependenceResult:
        """The window's test; ``rows`` has the features' columns in order (NaN = missing)."""
        n = rows.shape[0]
        r = correlations(normal_scores(rows))[self._rows, self._columns]
        r = np.clip(np.where(np.isnan(r), self.reference, r), -1 + 1e-12, 1 - 1e-12)  # a constant column: no change
        spread = np.sqrt(self.variance * (1 / max(n - 3, 1) + 1 / max(self.reference_rows - 3, 1)))
        z = (np.arctanh(r) - self._reference_z) / spread
        abs_z = np.abs(z)
        top = np.argsort(-abs_z, kind="stable")[:TOP_PAIRS]
        return DependenceResult(
            n=n,
            z=float(abs_z.max()) if self.pairs else 0.0,
            top=[
                PairChange(
                    self.names[k],
                    float(self.reference[k]),
                    float(r[k]),
                    float(z[k]),
                )
                for k in top
            ],
            abs_z=abs_z,
            abs_change=np.abs(r - self.reference),
        )
