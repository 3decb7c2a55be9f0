"""A joined prediction and label as a ``labelled_pairs`` row and its error: built once per pair, on the hot
path of the concept stage."""

from __future__ import annotations

from typing import NamedTuple

from pydantic_core import to_json

from undertow.models.drift.errors import prediction_error, score_loss
from undertow.worker.monitor.join_buffer import Waiting


class Pair(NamedTuple):
    """A ``labelled_pairs`` row (its columns in order), then the metric of its error for the detectors.

    A tuple, not a dict: a batch's pairs go to the insert as they are, where dicts cost as much to build
    and to take apart again as the insert itself.
    """

    model_id: str
    seq: int
    event_id: str
    version: str | None
    prediction_ts: float
    label_ts: float
    features: str
    prediction: str  # JSON scalar
    label: str  # JSON scalar
    error: float
    score_loss: float | None  # the log loss of the true class, where scores were sent
    metric: str


def build_pair(model_id: str, seq: int, event_id: str, prediction: Waiting, label: Waiting, classes: bool) -> Pair:
    p, target = prediction.fields, label.fields["label"]
    error, metric = prediction_error(p["prediction"], target, classes)
    return Pair(
        model_id,
        seq,
        event_id,
        prediction.version,
        prediction.ts,
        label.ts,
        _to_json(p["features"]),
        _json_scalar(p["prediction"]),
        _json_scalar(target),
        error,
        score_loss(p.get("scores"), target),
        metric,
    )


def _json_scalar(value) -> str:
    """A prediction or label as JSON. Numbers print as JSON already (events hold no NaN or infinities):
    repr is 4 times faster than the encoder, which strings still need for their escapes."""
    if value.__class__ is float or value.__class__ is int:
        return repr(value)
    return _to_json(value)


def _to_json(value) -> str:
    """pydantic-core's encoder: 4 times faster than json.dumps on floats (half a TypeAdapter's cost, with
    the same bytes). Infinity and NaN as json.dumps writes them, for detector state; events hold none."""
    return to_json(value, inf_nan_mode="constants").decode()
