"""Turning a reference data file into what the registry stores for a version."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.dataset import read_table
from models.profile import PREDICTION_FEATURE, ProfileError, ReferenceProfile, build_profile
from models.registry import sha256_file


@dataclass(frozen=True)
class Reference:
    profile: ReferenceProfile
    data_sha256: str
    baseline_error: tuple[float, float] | None


def baseline_error(target: list, prediction: list) -> tuple[float, float]:
    """Mean and standard deviation of the error: |y - p| for numbers, 0/1 misclassification otherwise.

    >>> baseline_error([1.0, 2.0, 3.0], [1.5, 2.0, 2.0])
    (0.5, 0.408248290463863)
    >>> baseline_error(["a", "b"], ["a", "a"])
    (0.5, 0.5)
    """
    pairs = [(y, p) for y, p in zip(target, prediction) if y is not None and p is not None]
    if not pairs:
        raise ProfileError("no row has both a target and a prediction")
    if all(isinstance(y, (int, float)) and isinstance(p, (int, float)) for y, p in pairs):
        errors = np.array([abs(float(y) - float(p)) for y, p in pairs])
    else:
        errors = np.array([float(str(y) != str(p)) for y, p in pairs])
    return float(errors.mean()), float(errors.std())


def load_reference(path: str | Path, target: str | None = None, prediction: str | None = None) -> Reference:
    columns = read_table(path)
    for name, role in ((target, "target"), (prediction, "prediction")):
        if name is not None and name not in columns:
            raise ProfileError(f"{role} column {name!r} is not in {path} (columns: {sorted(columns)})")
    features = {k: v for k, v in columns.items() if k not in (target, prediction)}
    if prediction is not None:
        features[PREDICTION_FEATURE] = columns[prediction]
    error = baseline_error(columns[target], columns[prediction]) if target and prediction else None
    return Reference(build_profile(features), sha256_file(Path(path)), error)
