"""Building a model version from labelled rows: fit on the training part, judge on the held-out part,
and everything the registry keeps with it (reference profile, baseline error, test set, metrics)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt

from undertow.models import training
from undertow.models.profile import PREDICTION_FEATURE, ReferenceProfile, build_profile
from undertow.models.reference import error_sample

# The version's own test set is kept in the registry; larger holdouts are thinned evenly.
TEST_SET_MAX_ROWS = 5000


@dataclass(frozen=True)
class BuiltVersion:
    model: object
    task: training.Task
    schema: dict[str, str]
    profile: ReferenceProfile
    baseline_error: tuple[float, float]
    error_sample: list[float]
    test_set: dict[str, Any]
    holdout_errors: npt.NDArray[np.float64]
    metrics: dict[str, Any]
    durations: dict[str, float] = field(default_factory=dict)


def build_version(
    pipeline: object,
    rows: list[dict[str, Any]],
    targets: list[Any],
    schema: dict[str, str],
    task: training.Task,
    split: training.Split,
) -> BuiltVersion:
    train_rows = [rows[i] for i in split.train]
    train_targets = [targets[i] for i in split.train]
    held_rows = [rows[i] for i in split.holdout]
    held_targets = [targets[i] for i in split.holdout]
    fitted = training.fit(pipeline, train_rows, train_targets, schema, task)
    held_predictions = training.predict(fitted.model, held_rows, schema, task)
    held_errors = training.row_errors(held_predictions, held_targets)
    columns = {name: [row.get(name) for row in train_rows] for name in schema}
    columns[PREDICTION_FEATURE] = training.predict(fitted.model, train_rows, schema, task)
    keep = np.unique(np.linspace(0, len(held_rows) - 1, min(len(held_rows), TEST_SET_MAX_ROWS)).astype(int))
    return BuiltVersion(
        model=fitted.model,
        task=task,
        schema=schema,
        profile=build_profile(columns),
        baseline_error=(float(held_errors.mean()), float(held_errors.std())),
        error_sample=error_sample(held_errors),
        test_set={"features": [held_rows[i] for i in keep], "targets": [held_targets[i] for i in keep]},
        holdout_errors=held_errors,
        metrics=_metrics(task, held_predictions, held_targets, held_errors),
        durations={"fit_seconds": fitted.seconds},
    )


def _metrics(task: str, predictions: list[Any], targets: list[Any], errors: npt.NDArray[np.float64]) -> dict[str, Any]:
    if task == "classification":
        return {"accuracy": float(1 - errors.mean()), "holdout_rows": len(targets)}
    y = np.array(targets, dtype=float)
    residual = y - np.array(predictions, dtype=float)
    spread = float(((y - y.mean()) ** 2).sum())
    return {
        "mae": float(errors.mean()),
        "rmse": float(np.sqrt((residual**2).mean())),
        "r2": float(1 - (residual**2).sum() / spread) if spread else None,
        "holdout_rows": len(targets),
    }


def test_set_errors(
    model: object, version_test_set: dict[str, Any], schema: dict[str, str], task: training.Task
) -> npt.NDArray[np.float64]:
    """Errors of ``model`` on a version's stored test set."""
    predictions = training.predict(model, version_test_set["features"], schema, task)
    return training.row_errors(predictions, version_test_set["targets"])


def dump_model(model: object, directory: Path | None = None) -> Path:
    """The fitted pipeline as ``model.joblib`` in a new temporary folder (the registry copies it into its store)."""
    path = Path(tempfile.mkdtemp(prefix="undertow-model-", dir=directory)) / "model.joblib"
    joblib.dump(model, path, compress=3)
    return path


def rows_from_table(
    columns: dict[str, list[Any]],
    target: str,
    time_column: str | None = None,
) -> tuple[list[dict[str, Any]], list[Any], list[float] | None]:
    """Feature rows, targets and (with a time column) their times; rows without a target are dropped."""
    for name, role in ((target, "target"), (time_column, "time")):
        if name is not None and name not in columns:
            raise training.TrainingError(
                f"{role} column {name!r} is not in the data (columns: {', '.join(sorted(columns))})"
            )
    names = [name for name in columns if name not in (target, time_column)]
    if not names:
        raise training.TrainingError("the data has no feature columns besides the target")
    keep = [i for i, y in enumerate(columns[target]) if y is not None]
    rows = [{name: columns[name][i] for name in names} for i in keep]
    targets = [columns[target][i] for i in keep]
    times = epoch_seconds([columns[time_column][i] for i in keep], time_column) if time_column else None
    return rows, targets, times


def epoch_seconds(values: list[Any], column: str) -> list[float]:
    """A time column as seconds since the epoch: numbers as they are, RFC 3339 strings parsed."""
    from datetime import datetime

    out = []
    for value in values:
        if isinstance(value, (int, float)):
            out.append(float(value))
            continue
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise training.TrainingError(
                f"time column {column!r}: {value!r} is neither a number nor an RFC 3339 time"
            ) from None
        out.append((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    return out
