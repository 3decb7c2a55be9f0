"""The one definition of a prediction's error, for the baseline at registration and for live labels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

ABSOLUTE_ERROR, MISCLASSIFICATION = "absolute_error", "misclassification"
_NUMBERS = (int, float)


def prediction_error(prediction: Any, label: Any, classes: bool = False) -> tuple[float, str]:
    """|label - prediction| for numbers, 0/1 misclassification for class labels (each an event's value:
    a number or a class label, as decoded from JSON).

    ``classes``: the version is a classifier (its task), so numbers are class
    labels too: 0/1 labels of a model trained elsewhere are classes, not
    values to subtract.

    >>> prediction_error(2.0, 2.5), prediction_error("cat", "dog"), prediction_error(1, 1)
    ((0.5, 'absolute_error'), (1.0, 'misclassification'), (0.0, 'absolute_error'))
    >>> prediction_error(1, 0, classes=True), prediction_error("1", 1.0, classes=True)
    ((1.0, 'misclassification'), (0.0, 'misclassification'))
    """
    if classes:
        return float(class_text(prediction) != class_text(label)), MISCLASSIFICATION
    if prediction.__class__ in _NUMBERS and label.__class__ in _NUMBERS:
        return abs(float(label) - float(prediction)), ABSOLUTE_ERROR
    return float(str(prediction) != str(label)), MISCLASSIFICATION


def class_text(value: Any) -> str:
    """A class label as text, the way ``scores`` are keyed: 1, 1.0 and "1" are one class."""
    if value.__class__ is float and value.is_integer():
        return str(int(value))
    return str(value)


def errors(targets: list[Any], predictions: list[Any], classes: bool = False) -> npt.NDArray[np.float64]:
    """Per-row errors of a table; rows missing the target or the prediction are skipped.

    >>> errors([1.0, None, "a"], [1.5, 2.0, "b"]).tolist()
    [0.5, 1.0]
    """
    return np.array(
        [prediction_error(p, y, classes)[0] for y, p in zip(targets, predictions) if y is not None and p is not None],
        dtype=float,
    )


def score_loss(scores: dict[str, float] | None, label: Any) -> float | None:
    """Log loss of the probability given to the true class, where scores were sent."""
    if not scores:
        return None
    return -math.log(max(float(scores.get(class_text(label), 0.0)), 1e-15))


ERROR_SAMPLE_SIZE = 5000


def error_sample(values: npt.NDArray[np.float64]) -> list[float]:
    """A version's errors as kept for calibration: sorted, at most ``ERROR_SAMPLE_SIZE`` (evenly spaced
    quantiles of more).

    >>> error_sample(np.array([3.0, 1.0, 2.0]))
    [1.0, 2.0, 3.0]
    """
    ordered = np.sort(values)
    if ordered.size > ERROR_SAMPLE_SIZE:
        ordered = np.quantile(ordered, (np.arange(ERROR_SAMPLE_SIZE) + 0.5) / ERROR_SAMPLE_SIZE)
    sample: list[float] = ordered.tolist()
    return sample
