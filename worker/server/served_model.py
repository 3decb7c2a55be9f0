"""One loaded model version as the endpoint serves it: the model, its request schema, a warm-up.

A ``ServedModel`` is immutable: a promotion builds a new one and the
endpoint swaps one reference, so a request that took the old one finishes
on it and names it in its answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, create_model, model_validator
from threadpoolctl import threadpool_limits

from undertow.errors import NotFound, UndertowError
from undertow.models import registry, training
from undertow.models.label_kinds import LabelKind
from undertow.worker.runtime.events import Integer, Text

MAX_BATCH_ROWS = 1000
_THREAD = threading.local()
# The event contract's own types (a feature value is StrictFloat | Integer | Text there): a value the monitor
# would refuse is refused here, before the model sees it (a 400-digit category once reached it).
_NUMBER = StrictFloat | Integer
_CATEGORY = Text | Integer
# Unpickling a class from the user's own code fails with these when that code is not importable where the
# server runs: "Can't get attribute 'Clip' on <module 'models'>", "No module named 'mymodels'".
_IMPORT_FAILURES = (AttributeError, ImportError)


class NotServable(UndertowError):
    """A version whose artifact would not load or that failed its warm-up prediction; the message says which."""


def request_model(
    model_id: str, version: str, schema: dict[str, str], max_rows: int = MAX_BATCH_ROWS
) -> type[BaseModel]:
    """The ``/predict`` body for this version: ``{"features": row}`` or ``{"instances": [row, ...]}``.

    Every feature of the schema is required (``null`` means missing, which
    the pipeline imputes); unknown features, strings for numbers, non-finite
    numbers, integers beyond a float's range and control characters are
    refused, and the error names the feature. The event's size is checked
    later, on the record itself (``edge.prediction_records``).
    """
    fields: dict[str, Any] = {
        f"f{i}": ((_NUMBER if kind == "numeric" else _CATEGORY) | None, Field(..., alias=name))
        for i, (name, kind) in enumerate(schema.items())
    }
    row = create_model(
        f"Row_{model_id}_{version}".replace("-", "_").replace(".", "_"),
        __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=False),
        **fields,
    )

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        features: row | None = None  # type: ignore[valid-type]
        instances: list[row] | None = Field(default=None, min_length=1, max_length=max_rows)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _one_form(self) -> PredictRequest:
            if (self.features is None) == (self.instances is None):
                raise ValueError('send one row as {"features": {...}} or a batch as {"instances": [{...}, ...]}')
            return self

        def rows(self) -> list[dict]:
            parsed = [self.features] if self.features is not None else self.instances
            return [r.model_dump(by_alias=True) for r in parsed]

    return PredictRequest


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    version: str
    task: str
    schema: dict[str, str]
    model: Any = field(repr=False)
    artifact_sha256: str
    request: type[BaseModel] = field(repr=False)
    threads: int = 1
    # What its labels must look like (``models.label_kinds``): /labels refuses the others as the monitor would.
    label_kind: LabelKind | None = None

    def predict(self, rows: list[dict]) -> tuple[list, list[dict[str, float]] | None]:
        """Predictions as event values and, for classifiers that give probabilities, the scores per class."""
        _limit_openmp(self.threads)
        predictions = training.predict(self.model, rows, self.schema, self.task)
        if self.task != "classification" or not hasattr(self.model, "predict_proba"):
            return predictions, None
        probabilities = self.model.predict_proba(training.to_frame(rows, self.schema))
        classes = [str(c) for c in self.model.classes_]
        return predictions, [{c: min(max(float(p), 0.0), 1.0) for c, p in zip(classes, row)} for row in probabilities]


def _limit_openmp(threads: int) -> None:
    """At most ``threads`` OpenMP threads inside one prediction, set once per calling thread.

    The endpoint runs requests in parallel on its thread pool; OpenMP inside
    each small prediction (HistGradientBoosting's default) then only spins
    against them: measured on 2 cores, single rows at 16.7 ms p50 with 2
    OpenMP threads, 4.9 ms with 1. The limit is per thread (OpenMP's own
    rule), hence a thread-local flag.
    """
    if getattr(_THREAD, "openmp", None) != threads:
        threadpool_limits(limits=threads, user_api="openmp")
        _THREAD.openmp = threads


def load_served(row: registry.ModelVersion, max_rows: int = MAX_BATCH_ROWS, threads: int = 1) -> ServedModel:
    """Load a version (its SHA-256 checked against the registry first) and answer one prediction with it.

    The warm-up row is the first of the version's own test set where it has
    one, else a row of missing values: a model that cannot answer it is not
    served. Every failure is an ``UndertowError`` whose one-line message
    names the version, the cause and what to do: ``undertow serve`` prints
    it as it exits at start-up, the follower logs it on a later swap.
    """
    # Columns such as __prediction__ are profiled for drift, not fed to the model.
    schema = {name: kind for name, kind in json.loads(row.feature_schema or "{}").items() if not name.startswith("__")}
    if not schema:
        raise registry.RegistryError(f"model {row.model_id} version {row.version} has no feature schema")
    model = _load_model(row)
    # Versions registered from elsewhere may not say their task: a model with classes_ classifies.
    task = row.task or ("classification" if hasattr(model, "classes_") else "regression")
    served = ServedModel(
        row.model_id,
        row.version,
        task,
        schema,
        model,
        row.artifact_sha256,
        request_model(row.model_id, row.version, schema, max_rows),
        threads,
        LabelKind.of(row),
    )
    _warm_up(served, row)
    return served


def _warm_up(served: ServedModel, row: registry.ModelVersion) -> None:
    test_set = json.loads(row.test_set) if row.test_set else None
    schema = served.schema
    warm_row = test_set["features"][0] if test_set and test_set.get("features") else {name: None for name in schema}
    try:
        served.predict([{name: warm_row.get(name) for name in schema}])
    except Exception as exc:  # whatever the model raises, it would raise on every request
        raise NotServable(
            f"model {row.model_id!r} version {row.version} failed its warm-up prediction "
            f"({_first_line(exc)}); it would fail requests too"
        ) from exc


def _load_model(row: registry.ModelVersion):
    if not row.artifact_path:
        # Registered from a reference alone (monitoring only): nothing to predict with.
        raise NotFound(
            f"model {row.model_id!r} version {row.version} has no artifact: register it with --artifact to serve it"
        )
    try:
        return registry.load_artifact(row)
    except UndertowError:
        raise  # missing file, SHA-256 mismatch: already one line that says so
    except Exception as exc:  # unpickling runs arbitrary code: any error means "cannot load"
        hint = (
            "; the module that defined the model's classes when it was saved must be importable, with those "
            "classes, where `undertow serve` runs (on PYTHONPATH, or installed in its environment)"
            if isinstance(exc, _IMPORT_FAILURES)
            else ""
        )
        raise NotServable(
            f"model {row.model_id!r} version {row.version}: the artifact {row.artifact_path} cannot "
            f"be loaded ({_first_line(exc)}){hint}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, short: the message is printed on one line."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__
