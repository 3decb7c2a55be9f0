"""Which inputs explain a change of the error: the error per bin of each input, after the change against
before it.

A concept drift confined to part of one input's range (the target moved for large houses only) raises the
error in that input's bins there and nowhere else; on any other input the rise is spread over every bin in
proportion. So each input is scored by how unevenly the rise falls over its bins:

* ``z``: the heterogeneity of the per-bin rises (Cochran's Q over the bins with enough pairs on both sides,
  as a standard normal score): evidence that the rise depends on the input at all;
* ``share``: the part of the whole rise that lies in the bins where it is significantly larger than in the
  rest (Bonferroni over the bins), above the rest's rise: 1 when the rise is confined to those bins, 0 when
  it is even. The bins are named (``bins``) with their error before and after.

Inputs rank by share, then by z; one with neither (no bin stands out, z below that of p = 0.01) is left
out, so a change even over every input explains nothing. A fall of the error (an ``improved`` episode) is
explained the same way, with the signs turned. The bins are the reference profile's (its PSI bins for numbers,
its categories), so no new state is kept: the pairs are read when an alert is raised.

>>> rng = np.random.default_rng(0)
>>> n = 4000
>>> before = {"x": rng.uniform(0, 1, n), "z": rng.uniform(0, 1, n)}
>>> after = {"x": rng.uniform(0, 1, n), "z": rng.uniform(0, 1, n)}
>>> errors_before = rng.exponential(1.0, n)
>>> errors_after = rng.exponential(1.0, n) + np.where(after["x"] > 0.8, 2.0, 0.0)  # only for large x
>>> bins = {"x": NumericBins([0.2, 0.4, 0.6, 0.8]), "z": NumericBins([0.2, 0.4, 0.6, 0.8])}
>>> found = explain_change(before, errors_before, after, errors_after, bins)
>>> [(e.feature, round(e.share, 2), [b.label for b in e.bins]) for e in found]
[('x', 1.0, ['> 0.8'])]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

MIN_BIN_PAIRS = 20  # pairs before the change for a bin's mean error to be compared
# After it, fewer do: an alert fires on the first few pairs of a large change, and their bin's variance is
# taken as at least the one before (a few pairs' own spread could be anything).
MIN_BIN_PAIRS_AFTER = 3
MAX_EXPLAINED = 10  # inputs listed
MAX_BINS_NAMED = 3
SIGNIFICANCE = 0.01  # per input, Bonferroni over its bins
EVIDENCE_Z = float(stats.norm.isf(SIGNIFICANCE))  # heterogeneity below it, and no bin stands out: not listed


@dataclass(frozen=True)
class NumericBins:
    edges: list[float]  # inner edges: bins (-inf, e0], (e0, e1], ..., (e_last, inf)

    def index(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Bin of each value; -1 for missing."""
        numbers = np.asarray(values, dtype=float)
        found = np.searchsorted(np.asarray(self.edges, dtype=float), numbers, side="left")
        return np.where(np.isnan(numbers), -1, found)

    def label(self, index: int) -> str:
        if not self.edges:
            return "all"
        if index == 0:
            return f"<= {self.edges[0]:.4g}"
        if index == len(self.edges):
            return f"> {self.edges[-1]:.4g}"
        return f"({self.edges[index - 1]:.4g}, {self.edges[index]:.4g}]"

    @property
    def count(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True)
class CategoryBins:
    categories: list[str]  # the rest is one bin, "other"

    def index(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        lookup = {category: i for i, category in enumerate(self.categories)}
        other = len(self.categories)
        return np.array([-1 if v is None else lookup.get(str(v), other) for v in values], dtype=np.int64)

    def label(self, index: int) -> str:
        return self.categories[index] if index < len(self.categories) else "other"

    @property
    def count(self) -> int:
        return len(self.categories) + 1


Bins = NumericBins | CategoryBins


@dataclass(frozen=True)
class BinChange:
    label: str
    error_before: float
    error_after: float
    share_of_pairs: float  # of the pairs after the change


@dataclass(frozen=True)
class Explanation:
    feature: str
    share: float
    z: float
    bins: list[BinChange]


@dataclass(frozen=True)
class _BinStats:
    rise: npt.NDArray[np.float64]  # per bin: mean error after minus before (signed toward the change)
    variance: npt.NDArray[np.float64]  # of that difference
    weight: npt.NDArray[np.float64]  # share of the pairs after the change
    before: npt.NDArray[np.float64]
    after: npt.NDArray[np.float64]
    kept: npt.NDArray[np.int64]  # bin indexes with enough pairs on both sides


def explain_change(
    before: dict[str, npt.NDArray[Any]],
    errors_before: npt.NDArray[Any],
    after: dict[str, npt.NDArray[Any]],
    errors_after: npt.NDArray[Any],
    bins: dict[str, Bins],
) -> list[Explanation]:
    """The inputs of ``bins`` ranked by how much of the error's change they account for (module docstring).

    ``before``/``after``: each input's values per pair, aligned with the errors.
    """
    e0, e1 = np.asarray(errors_before, dtype=float), np.asarray(errors_after, dtype=float)
    if e0.size < MIN_BIN_PAIRS or e1.size < MIN_BIN_PAIRS_AFTER:
        return []
    direction = 1.0 if e1.mean() >= e0.mean() else -1.0
    found = []
    for name, binning in bins.items():
        if name not in before or name not in after:
            continue
        per_bin = _bin_stats(binning.index(before[name]), e0, binning.index(after[name]), e1, binning.count)
        if per_bin is not None:
            found.append(_explain(name, binning, per_bin, direction))
    # An input along which the change is even explains none of it: left out, so a change even over every
    # input (a new labelling rule, a shift for everyone) is explained by nothing.
    found = [e for e in found if e.share > 0 or e.z > EVIDENCE_Z]
    found.sort(key=lambda e: (-e.share, -e.z, e.feature))
    return found[:MAX_EXPLAINED]


def _bin_stats(
    i0: npt.NDArray[Any], e0: npt.NDArray[Any], i1: npt.NDArray[Any], e1: npt.NDArray[Any], count: int
) -> _BinStats | None:
    n0, n1 = np.bincount(i0[i0 >= 0], minlength=count), np.bincount(i1[i1 >= 0], minlength=count)
    kept = np.flatnonzero((n0 >= MIN_BIN_PAIRS) & (n1 >= MIN_BIN_PAIRS_AFTER))
    if kept.size < 2:
        return None
    means, spreads = [], []
    for index, errors, n in ((i0, e0, n0), (i1, e1, n1)):
        present = index >= 0
        sums = np.bincount(index[present], weights=errors[present], minlength=count)
        squares = np.bincount(index[present], weights=errors[present] ** 2, minlength=count)
        mean = sums / np.maximum(n, 1)
        # Pairs' errors of a bin may all be equal (0/1 errors in a perfect bin): a floor keeps the test finite.
        spreads.append(np.maximum((squares - n * mean**2) / np.maximum(n - 1, 1), 1e-12)[kept])
        means.append(mean[kept])
    variance = spreads[0] / n0[kept] + np.maximum(spreads[1], spreads[0]) / n1[kept]
    return _BinStats(
        rise=means[1] - means[0],
        variance=variance,
        weight=n1[kept] / max(int(n1.sum()), 1),
        before=means[0],
        after=means[1],
        kept=kept,
    )


def _explain(name: str, binning: Bins, s: _BinStats, direction: float) -> Explanation:
    rise = direction * s.rise
    precision = 1.0 / s.variance
    pooled = float(np.sum(precision * rise) / np.sum(precision))
    q = float(np.sum(precision * (rise - pooled) ** 2))
    z = float(stats.norm.isf(max(stats.chi2.sf(q, rise.size - 1), 1e-300)))
    # Bins whose rise stands out from the rest's, each tested against the pooled rise of the others.
    critical = float(stats.norm.isf(SIGNIFICANCE / rise.size))
    outstanding = np.zeros(rise.size, dtype=bool)
    for b in range(rise.size):
        others = np.arange(rise.size) != b
        rest = float(np.sum(precision[others] * rise[others]) / np.sum(precision[others]))
        spread = math.sqrt(s.variance[b] + 1.0 / float(np.sum(precision[others])))
        outstanding[b] = (rise[b] - rest) / spread > critical
    total = float(np.sum(s.weight * rise))
    share = 0.0
    if outstanding.any() and total > 0 and not outstanding.all():
        rest = float(np.sum(s.weight[~outstanding] * rise[~outstanding]) / np.sum(s.weight[~outstanding]))
        share = min(max(float(np.sum(s.weight[outstanding] * (rise[outstanding] - rest))) / total, 0.0), 1.0)
    order = [b for b in np.argsort(-(s.weight * rise)) if outstanding[b]][:MAX_BINS_NAMED]
    named = [
        BinChange(
            label=binning.label(int(s.kept[b])),
            error_before=float(s.before[b]),
            error_after=float(s.after[b]),
            share_of_pairs=float(s.weight[b]),
        )
        for b in order
    ]
    return Explanation(feature=name, share=share, z=z if math.isfinite(z) else 40.0, bins=named)
