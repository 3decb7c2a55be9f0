"""Turning a reference data file into what the registry stores for a version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.models.dataset import read_table
from undertow.models.drift import errors as drift_errors
from undertow.models.drift.errors import ERROR_SAMPLE_SIZE as ERROR_SAMPLE_SIZE  # re-exported
from undertow.models.drift.errors import error_sample as error_sample  # re-exported: bench/ and tests use it
from undertow.models.profile import (
    PREDICTION_FEATURE,
    ProfileError,
    ReferenceProfile,
    build_profile,
)
from undertow.models.registry import sha256_file

log = logging.getLogger(__name__)

# A classifier this good on its reference was most likely scored on the rows it learned from.
IN_SAMPLE_SUSPECT_ERROR = 0.01
TEST_SET_MAX_ROWS = 5000


@dataclass(frozen=True)
class Reference:
    profile: ReferenceProfile
    data_sha256: str
    baseline_error: tuple[float, float] | None
    error_sample: list[float] | None = None  # sorted, at most ERROR_SAMPLE_SIZE
    # Rows with their targets (and the model's predictions): the version's test set for the gate.
    test_set: dict[str, Any] | None = None


def errors(target: list[Any], prediction: list[Any], classes: bool = False) -> npt.NDArray[np.float64]:
    """Per-row error (``models.drift.errors``); rows missing either are skipped."""
    values = drift_errors.errors(target, prediction, classes)
    if values.size == 0:
        raise ProfileError("no row has both a target and a prediction")
    return values


def baseline_error(target: list[Any], prediction: list[Any]) -> tuple[float, float]:
    """Mean and standard deviation of the error.

    >>> baseline_error([1.0, 2.0, 3.0], [1.5, 2.0, 2.0])
    (0.5, 0.408248290463863)
    >>> baseline_error(["a", "b"], ["a", "a"])
    (0.5, 0.5)
    """
    values = errors(target, prediction)
    return float(values.mean()), float(values.std())


def load_reference(
    path: str | Path, target: str | None = None, prediction: str | None = None, task: str | None = None
) -> Reference:
    """The reference profile; with a target and the model's predictions also its error baseline, scored by
    ``task`` (a classifier's numeric labels are classes)."""
    columns = read_table(path)
    for name, role in ((target, "target"), (prediction, "prediction")):
        if name is not None and name not in columns:
            raise ProfileError(f"{role} column {name!r} is not in {path} (columns: {', '.join(sorted(columns))})")
    features = {k: v for k, v in columns.items() if k not in (target, prediction)}
    if prediction is not None:
        features[PREDICTION_FEATURE] = columns[prediction]
    if not (target and prediction):
        return Reference(build_profile(features), sha256_file(Path(path)), None)
    values = errors(columns[target], columns[prediction], classes=task == "classification")
    if task == "classification" and values.size and values.mean() < IN_SAMPLE_SUSPECT_ERROR:
        log.warning(
            "the predictions in %s miss %.2f %% of the targets: if these are the rows the model was trained "
            "on, its baseline error and validation accuracy are in-sample, and production will look like "
            "drift at once; register held-out rows (a validation set, or out-of-fold predictions)",
            path,
            100 * values.mean(),
        )
    return Reference(
        build_profile(features),
        sha256_file(Path(path)),
        (float(values.mean()), float(values.std())),
        error_sample(values),
        _test_set(columns, target, prediction),
    )


def _test_set(columns: dict[str, list[Any]], target: str, prediction: str) -> dict[str, Any]:
    names = [name for name in columns if name not in (target, prediction)]
    keep = [i for i, (y, p) in enumerate(zip(columns[target], columns[prediction])) if y is not None and p is not None]
    keep = [keep[i] for i in np.unique(np.linspace(0, len(keep) - 1, min(len(keep), TEST_SET_MAX_ROWS)).astype(int))]
    return {
        "features": [{name: columns[name][i] for name in names} for i in keep],
        "targets": [columns[target][i] for i in keep],
        "predictions": [columns[prediction][i] for i in keep],
    }
