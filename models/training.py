"""Training a model version: the default recipe, time-ordered splits, fitting a clone.

The recipe is the chapter's: one scikit-learn ``Pipeline`` (numeric columns
imputed and scaled, categorical ones one-hot encoded, then gradient
boosting), so preprocessing is fitted on training rows only and travels
with the model as one artifact. Rows are plain dicts of feature values, as
the events carry them; :func:`to_frame` gives the columns a pipeline sees,
the same at training and at serving.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from undertow.errors import UndertowError
from undertow.models.drift.errors import prediction_error

Task = Literal["regression", "classification"]
MISSING_CATEGORY = "__missing__"
RANDOM_STATE = 42


class TrainingError(UndertowError):
    """Data that cannot train a model as asked (too few rows, one class, no features)."""


def to_frame(rows: list[dict[str, Any]], schema: Mapping[str, str]) -> pd.DataFrame:
    """Rows as the pipeline's columns, in the schema's order: numbers as floats (NaN = missing),
    categories as strings (missing as ``__missing__``, a number in a categorical column as its text)."""
    columns = {}
    for name, kind in schema.items():
        values = [row.get(name) for row in rows]
        if kind == "numeric":
            columns[name] = np.array(
                [v if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in values], dtype=float
            )
        else:
            columns[name] = np.array([MISSING_CATEGORY if v is None else str(v) for v in values], dtype=object)
    return pd.DataFrame(columns, columns=list(schema))


def default_pipeline(schema: Mapping[str, str], task: Task) -> Pipeline:
    """Scaling of numeric columns, one-hot encoding of categorical ones, gradient boosting.

    Histogram gradient boosting rather than the chapter's
    ``GradientBoostingRegressor``: the same method, an order of magnitude
    faster on the 10k-100k rows a retrain sees.
    """
    numeric = [name for name, kind in schema.items() if kind == "numeric"]
    categorical = [name for name, kind in schema.items() if kind != "numeric"]
    if not numeric and not categorical:
        raise TrainingError("no features to train on")
    prepare = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            ),
            (
                "categorical",
                OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=50, sparse_output=False),
                categorical,
            ),
        ]
    )
    estimator = (
        HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, random_state=RANDOM_STATE)
        if task == "regression"
        else HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=RANDOM_STATE)
    )
    return Pipeline([("prepare", prepare), ("model", estimator)])


def infer_task(targets: list[Any]) -> Task:
    """Regression for numbers with more than a handful of distinct values, classification otherwise."""
    numbers = [t for t in targets if isinstance(t, (int, float)) and not isinstance(t, bool)]
    if len(numbers) == len(targets) and len(set(numbers)) > 20:
        return "regression"
    return "classification"


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices, oldest first
    holdout: np.ndarray  # the newest rows
    gap: int  # rows left out between them


def split_by_time(
    times: list[float] | np.ndarray, holdout_fraction: float, gap_fraction: float = 0.0, min_holdout: int = 1
) -> Split:
    """Train on the older rows, hold out the newest, with a gap between them.

    >>> s = split_by_time([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], holdout_fraction=0.3, gap_fraction=0.1)
    >>> s.train.tolist(), s.holdout.tolist(), s.gap
    ([1, 3, 4, 2, 0, 5], [7, 8, 9], 1)
    """
    order = np.argsort(np.asarray(times, dtype=float), kind="stable")
    n = order.size
    holdout = max(int(round(n * holdout_fraction)), min_holdout)
    gap = int(round(n * gap_fraction))
    if n - holdout - gap < 2:
        raise TrainingError(f"{n} rows cannot give {holdout} held-out rows, a gap of {gap} and a training part")
    return Split(order[: n - holdout - gap], order[n - holdout :], gap)


def split_at_random(n: int, holdout_fraction: float, seed: int = RANDOM_STATE) -> Split:
    order = np.random.default_rng(seed).permutation(n)
    holdout = max(int(round(n * holdout_fraction)), 1)
    if n - holdout < 2:
        raise TrainingError(f"{n} rows are too few to hold {holdout} out")
    return Split(np.sort(order[holdout:]), np.sort(order[:holdout]), 0)


@dataclass(frozen=True)
class Fitted:
    model: object
    seconds: float


def fit(pipeline: Any, rows: list[dict[str, Any]], targets: list[Any], schema: Mapping[str, str], task: Task) -> Fitted:
    """Fit a fresh clone of ``pipeline`` (never the object passed in)."""
    if task == "classification" and len({str(t) for t in targets}) < 2:
        raise TrainingError("the training rows hold a single class")
    model = clone(pipeline)
    y = np.array(targets, dtype=float) if task == "regression" else np.array([str(t) for t in targets], dtype=object)
    started = time.perf_counter()
    model.fit(to_frame(rows, schema), y)
    return Fitted(model, time.perf_counter() - started)


def predict(model: Any, rows: list[dict[str, Any]], schema: Mapping[str, str], task: Task) -> list[Any]:
    """Predictions as event values: floats for regression, class labels as strings for classification."""
    if not rows:
        return []
    out = model.predict(to_frame(rows, schema))
    return [float(v) for v in out] if task == "regression" else [str(v) for v in out]


def row_errors(predictions: list[Any], targets: list[Any]) -> npt.NDArray[np.float64]:
    """Per-row errors by the one definition (``models.drift.errors``)."""
    return np.array([prediction_error(p, _target(t))[0] for p, t in zip(predictions, targets)], dtype=float)


def _target(value: Any) -> Any:
    # Classification predictions come back as strings; compare class labels as text.
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
