"""Reference profiles: what a model's training data looked like, per feature.

Built once per model version from the reference data and stored as plain
JSON numbers (never pickles):

- numeric: inner quantile edges (outer bins open), the reference share of
  every bin, the missing share, and a sorted sample of at most
  ``KS_SAMPLE_SIZE`` values (evenly spaced quantiles when the data is larger),
  so a window's KS statistic needs no re-sorting of the reference;
- categorical: the shares of the most frequent categories, an "other" bucket
  for the rest of the training categories, and a zero-share "unseen" bucket
  for categories never seen in training;
- multivariate (two numeric inputs or more): a PCA of the standardised
  numeric inputs keeping 65 % of the variance (NannyML's default), and the
  mean and spread of a row's reconstruction error on held-out reference rows:
  a change in how the features move together shows up there even when every
  marginal stays put;
- dependence (two numeric inputs or more): each pair's rank correlation and
  the variance of its Fisher z per row, for the per-pair test of
  ``models.drift.dependence``, on at most ``DEPENDENCE_FEATURES`` inputs.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from undertow.errors import UndertowError
from undertow.models.drift.dependence import reference_dependence

KS_SAMPLE_SIZE = 5000
DEFAULT_BINS = 10
MAX_CATEGORIES = 50
MAX_OTHER_CATEGORIES = 10_000
PREDICTION_FEATURE = "__prediction__"


class ProfileError(UndertowError):
    """Reference data that cannot be profiled (empty, all missing, ...)."""


class NumericProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["numeric"] = "numeric"
    edges: list[float]  # inner edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    shares: list[float]  # len(edges) + 1, of non-missing values
    missing_share: float
    ks_sample: list[float]  # sorted


class CategoricalProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["categorical"] = "categorical"
    categories: list[str]  # buckets 0..k-1
    shares: list[float]  # len(categories) + 2: ..., other, unseen (of non-missing values)
    missing_share: float
    # Training categories beyond the kept ones (bucket "other"), so that a
    # category never seen in training is told apart from a rare known one.
    other_categories: list[str] = []


class MultivariateProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    features: list[str]
    means: list[float]
    scales: list[float]
    components: list[list[float]]  # kept principal axes, rows of unit length
    error_mean: float  # per-row reconstruction error on held-out reference rows
    error_sd: float

    def row_errors(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Euclidean reconstruction error of each row (columns in ``features`` order; NaN = the mean)."""
        z = (rows - np.array(self.means)) / np.array(self.scales)
        z = np.where(np.isnan(z), 0.0, z)
        axes = np.array(self.components)
        errors: npt.NDArray[np.float64] = np.linalg.norm(z - (z @ axes.T) @ axes, axis=1)
        return errors


class DependenceProfile(BaseModel):
    """The reference's pairs of numeric inputs: upper triangles, row-major, of ``features`` (in the order the
    cap takes them: most distinct values first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    features: list[str]
    rows: int  # reference rows they were measured on
    correlations: list[float | None]  # Gaussian rank correlation; None: a pair that cannot be tested
    variances: list[float | None]  # of atanh(correlation), per row

    def first(self, count: int) -> tuple[list[str], list[float], list[float]]:
        """The first ``count`` features and their pairs' correlations and variances (NaN for None)."""
        k = min(count, len(self.features))
        upper = np.triu_indices(len(self.features), k=1)
        keep = (upper[0] < k) & (upper[1] < k)
        values = [
            np.array([np.nan if x is None else x for x in v], dtype=float)[keep]
            for v in (self.correlations, self.variances)
        ]
        return self.features[:k], values[0].tolist(), values[1].tolist()


class ReferenceProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rows: int
    features: dict[str, NumericProfile | CategoricalProfile]
    multivariate: MultivariateProfile | None = None
    dependence: DependenceProfile | None = None
    # Each input's share of the model's permutation importance (``models.importance``), when the version
    # came with an artifact and held-out rows.
    importance: dict[str, float] | None = None


MULTIVARIATE_VARIANCE = 0.65
MULTIVARIATE_MIN_ROWS = 200


def profile_multivariate(columns: dict[str, list[Any]]) -> MultivariateProfile | None:
    """PCA of the numeric inputs fitted on half the rows, its error measured on the other half.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=2000)
    >>> p = profile_multivariate(
    ...     {"a": list(x), "b": list(x + rng.normal(0, 0.3, 2000)), "c": list(rng.normal(size=2000))}
    ... )
    >>> len(p.components), 0 < p.error_mean < 1
    (1, True)
    """
    names = [n for n, v in columns.items() if n != PREDICTION_FEATURE and _numeric(v)]
    if len(names) < 2:
        return None
    data = np.array([[np.nan if _is_missing(v) else float(v) for v in columns[n]] for n in names], dtype=float).T
    if data.shape[0] < MULTIVARIATE_MIN_ROWS:
        return None
    means, scales = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    z = np.where(np.isnan(data), 0.0, (data - means) / scales)
    fit, held = z[0::2], z[1::2]
    _, singular, axes = np.linalg.svd(fit - fit.mean(axis=0), full_matrices=False)
    explained = np.cumsum(singular**2) / np.sum(singular**2)
    keep = min(int(np.searchsorted(explained, MULTIVARIATE_VARIANCE) + 1), len(names) - 1)
    axes = axes[:keep]
    errors = np.linalg.norm(held - (held @ axes.T) @ axes, axis=1)
    return MultivariateProfile(
        features=names,
        means=means.tolist(),
        scales=scales.tolist(),
        components=axes.tolist(),
        error_mean=float(errors.mean()),
        error_sd=float(errors.std()),
    )


DEPENDENCE_FEATURES = 100  # inputs whose pairs the profile keeps (4,950 pairs); the monitor tests a prefix
DEPENDENCE_ROWS = 5000  # reference rows they are measured on (evenly spaced), as many as the KS sample: with
# windows of 1,000 the reference's sampling error adds 10 % to a pair's standard error
DISTINCT_ENOUGH = 100  # distinct values from which a feature counts as continuous when the cap chooses


def profile_dependence(
    columns: dict[str, list[Any]], max_features: int = DEPENDENCE_FEATURES
) -> DependenceProfile | None:
    """Each pair's rank correlation and its variance, for the numeric inputs with most distinct values.

    Features with at least ``DISTINCT_ENOUGH`` distinct values come first, in the reference's column order,
    then the rest by distinct values: ties (a flag, a count) carry less about dependence.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=1000)
    >>> p = profile_dependence({"a": list(x), "b": list(x + rng.normal(size=1000)), "flag": [1.0, 0.0] * 500})
    >>> p.features, round(p.correlations[0], 2), p.rows
    (['a', 'b', 'flag'], 0.71, 1000)
    """
    numeric = {n: _floats(v) for n, v in columns.items() if n != PREDICTION_FEATURE and _numeric(v)}
    distinct = {n: np.unique(v[~np.isnan(v)]).size for n, v in numeric.items()}
    names = sorted((n for n in numeric if distinct[n] >= 2), key=lambda n: -min(distinct[n], DISTINCT_ENOUGH))
    names = names[:max_features]
    rows = len(next(iter(columns.values()))) if columns else 0
    if len(names) < 2 or rows < MULTIVARIATE_MIN_ROWS:
        return None
    keep = np.unique(np.linspace(0, rows - 1, min(rows, DEPENDENCE_ROWS)).astype(int))
    data = np.column_stack([numeric[n][keep] for n in names])
    r, v = reference_dependence(data)
    upper = np.triu_indices(len(names), k=1)
    return DependenceProfile(
        features=names,
        rows=int(keep.size),
        correlations=[None if not math.isfinite(x) else round(float(x), 6) for x in r[upper]],
        variances=[None if not math.isfinite(x) else round(float(x), 6) for x in v[upper]],
    )


def dependence_from_rows(
    rows: list[dict[str, Any]], profile: ReferenceProfile, max_features: int = DEPENDENCE_FEATURES
) -> DependenceProfile | None:
    """The dependence profile of a version registered before profiles kept one, from rows of its reference
    stored with it (its test set: feature dicts), on (at most ``max_features`` of) the numeric inputs of its
    profile.

    >>> rng = np.random.default_rng(1)
    >>> x = rng.normal(size=(400, 2))
    >>> rows = [{"a": float(a), "b": float(a + b), "c": "k"} for a, b in x]
    >>> p = build_profile({"a": list(x[:, 0]), "b": list(x.sum(axis=1)), "c": ["k"] * 400})
    >>> d = dependence_from_rows(rows, p.model_copy(update={"dependence": None}))
    >>> d.features, round(d.correlations[0], 2), d.correlations == p.dependence.correlations
    (['a', 'b'], 0.68, True)
    """
    names = [
        name
        for name, feature in profile.features.items()
        if isinstance(feature, NumericProfile) and name != PREDICTION_FEATURE
    ]
    return profile_dependence({name: [row.get(name) for row in rows] for name in names}, max_features)


def _floats(values: list[Any]) -> npt.NDArray[np.float64]:
    """A numeric column as floats, missing values NaN."""
    try:
        return np.array(values, dtype=float)  # None becomes NaN
    except (TypeError, ValueError):  # an empty string: missing too
        return np.array([np.nan if _is_missing(v) else v for v in values], dtype=float)


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def profile_numeric(values: list[Any], bins: int = DEFAULT_BINS) -> NumericProfile:
    present = np.array([float(v) for v in values if not _is_missing(v)], dtype=float)
    if present.size == 0:
        raise ProfileError("numeric column has no values")
    # Quantile edges; duplicates collapse (a feature with few distinct values
    # gets fewer, wider bins rather than empty ones).
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
    ordered = np.sort(present)
    if ordered.size > KS_SAMPLE_SIZE:
        ordered = np.quantile(ordered, (np.arange(KS_SAMPLE_SIZE) + 0.5) / KS_SAMPLE_SIZE)
    return NumericProfile(
        edges=edges.tolist(),
        shares=(counts / present.size).tolist(),
        missing_share=1 - present.size / len(values),
        ks_sample=ordered.tolist(),
    )


def profile_categorical(values: list[Any], max_categories: int = MAX_CATEGORIES) -> CategoricalProfile:
    present = [str(v) for v in values if not _is_missing(v)]
    if not present:
        raise ProfileError("categorical column has no values")
    names, counts = np.unique(np.array(present, dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    kept = [str(names[i]) for i in order]
    kept_counts = [int(counts[i]) for i in order]
    other = len(present) - sum(kept_counts)
    shares = [c / len(present) for c in kept_counts] + [other / len(present), 0.0]
    rest = [str(names[i]) for i in np.argsort(-counts, kind="stable")[max_categories:]]
    return CategoricalProfile(
        categories=kept,
        shares=shares,
        missing_share=1 - len(present) / len(values),
        other_categories=rest[:MAX_OTHER_CATEGORIES],
    )


def _numeric(values: list[Any]) -> bool:
    for v in values:
        if _is_missing(v):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
    return True


def feature_kinds(columns: dict[str, list[Any]]) -> dict[str, str]:
    """Each column's kind as profiles give it: ``numeric`` or ``categorical``.

    >>> feature_kinds({"x": [1.0, None, 2], "c": ["a", 1.0]})
    {'x': 'numeric', 'c': 'categorical'}
    """
    return {name: "numeric" if _numeric(values) else "categorical" for name, values in columns.items()}


def build_profile(columns: dict[str, list[Any]]) -> ReferenceProfile:
    """Profile every column; numbers are numeric, anything else categorical.

    >>> p = build_profile({"x": [float(i) for i in range(100)], "c": ["a"] * 70 + ["b"] * 30})
    >>> len(p.features["x"].shares), p.features["c"].categories, p.features["c"].shares
    (10, ['a', 'b'], [0.7, 0.3, 0.0, 0.0])
    """
    if not columns:
        raise ProfileError("reference data has no columns")
    rows = {len(v) for v in columns.values()}
    if len(rows) != 1 or rows == {0}:
        raise ProfileError("reference columns are empty or of different lengths")
    features: dict[str, NumericProfile | CategoricalProfile] = {}
    for name, values in columns.items():
        try:
            features[name] = profile_numeric(values) if _numeric(values) else profile_categorical(values)
        except ProfileError as exc:
            raise ProfileError(f"column {name!r}: {exc}") from None
    return ReferenceProfile(
        rows=rows.pop(),
        features=features,
        multivariate=profile_multivariate(columns),
        dependence=profile_dependence(columns),
    )
