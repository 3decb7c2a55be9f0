"""The concept monitor's stored state (``concept_state.detectors``), its format number
(``concept_state.state_format``), and the upgrades from every older format.

Formats, dated from ``git log -p`` of worker/monitor/concept.py and models/drift/detectors.py (1-8 were
written before formats were numbered: their rows have ``state_format`` NULL):

1. before 97fbaef (2026-11-28): the detectors alone, ``{name: [numbers]}``: page_hinkley, cusum, rolling_mean.
2. 97fbaef (2026-11-28): ``{"detectors", "production", "episode"}`` (and ``"log_loss"``, a nested row, from
   cdf1e69); prediction-time CUSUMs as their suffix sums.
3. 68fdf18 (2026-11-29): prediction-time CUSUMs as their total and prefix sums.
4. 9eb3365 (2026-11-29): the k/2 prediction-time CUSUM, its threshold ``small_cusum_h``, ``gap_pending``.
5. ad3f48c (2026-11-29): ``first_labels`` (3d3642a's ``calibration_errors``, kept for nine minutes, is read
   as this format, which never used it).
6. eb77700 (2026-11-30): ``settled_thresholds``.
7. a727c2b (2026-11-30): no arrival-order ``cusum``; ``skewness``.
8. 6c67401 (2026-11-30): ``tighten_at`` instead of ``settled_thresholds``. The last unnumbered format.
9. 3dd655e (2026-12-06): typed (``ConceptState``): each detector's state a model of named fields, the
   log-loss stream a nested ``LogLossState`` instead of a row with its blob as a JSON string.
10. 2d9e3f1 (2026-12-06): the episode's phases: ``episode`` holds the detectors re-based on the episode's
    level (``bank``), a fall awaiting its level (``fall``), and format 9's escalation state as ``legacy``
    while an episode opened by it is open (it keeps its rule until it ends).
11. this release: the production baseline's ``traffic`` (each collected label's prediction and label time,
    while it collects) and ``pt_factors`` (how much less often the prediction-time CUSUMs alarm on it).

Each upgrade takes format n to n + 1. Some need what the monitor knows besides the blob (the validation
baseline and its sample, the configuration): ``concept_codec(context)`` closes them over it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from undertow.errors import UndertowError
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import MIN_CALIBRATION_SAMPLE, cusum_threshold, cusum_threshold_from
from undertow.models.drift.error_stream import StreamCounts, StreamState
from undertow.models.drift.production_baseline import reference_z
from undertow.models.state_format import StateCodec

CURRENT_FORMAT = 11


class LogLossState(StreamState):
    """The log-loss stream: its state and its counters (the row's columns count the main stream)."""

    counts: StreamCounts


class ConceptState(StreamState):
    """The main stream's state, and the log-loss stream's where a classifier sends scores."""

    log_loss: LogLossState | None = None


@dataclass(frozen=True)
class Context:
    """What upgrades of a version's state need besides the blob."""

    config: DriftConfig
    validation: tuple[float, float] | None  # mean and (floored) sd
    validation_sample: list[float] | None

    def for_log_loss(self, log_loss_config: DriftConfig) -> Context:
        return Context(log_loss_config, None, None)


def concept_codec(context: Context, log_loss_context: Context) -> StateCodec[ConceptState]:
    """The codec of a version's concept state (``log_loss_context``: the same for its log-loss stream)."""

    def stepwise(step: Callable[[dict[str, Any], Context], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def upgrade(blob: dict[str, Any]) -> dict[str, Any]:
            step(blob, context)
            if blob.get("log_loss") is not None:  # formats 2-8 nest the log-loss stream as a row
                inner = json.loads(blob["log_loss"]["detectors"])
                step(inner, log_loss_context)
                blob["log_loss"] = {**blob["log_loss"], "detectors": json.dumps(inner)}
            return blob

        return upgrade

    return StateCodec(
        "concept",
        ConceptState,
        current=CURRENT_FORMAT,
        upgrades={
            1: lambda blob: _from_1(blob, context),
            **{
                n: stepwise(step)
                for n, step in ((2, _from_2), (3, _from_3), (4, _from_4), (5, _from_5), (6, _from_6), (7, _from_7))
            },
            8: _from_8,
            9: _from_9,
            10: _from_10,
        },
    )


def legacy_format(blob: str, horizon: int) -> int:
    """The format of a row written before formats were numbered (``state_format`` NULL), from its shape.

    The only place that looks at a blob's shape, and only for such rows: the row is saved with its number
    at its next update. Each test is the newest format's own mark, so the first that holds names it.
    ``horizon``: the version's ``pt_horizon_buckets`` (formats 2 and 3 differ only in how many numbers
    a prediction-time CUSUM stored).
    """
    data = json.loads(blob)
    if "detectors" not in data:
        return 1
    production = data["production"]
    for key, number in (
        ("tighten_at", 8),
        ("skewness", 7),
        ("settled_thresholds", 6),
        ("first_labels", 5),
        ("small_cusum_h", 4),
    ):
        if key in production:
            return number
    return 2 if len(data["detectors"]["prediction_time_cusum"]) == 4 + horizon else 3


# Upgrades, each format n to n + 1 (the detector states positional lists until format 9).


def _fresh_prediction_time_cusum(config: DriftConfig) -> list[float]:
    return [math.nan, math.nan, 0.0, 0.0, 0.0, *([0.0] * config.pt_horizon_buckets)]


def _from_1(blob: dict[str, Any], context: Context) -> dict[str, Any]:
    """The validation baseline, as then; detectors not there yet start afresh (suffix sums of nothing)."""
    c = context.config
    if context.validation is None:  # format 1 was written only for versions with a baseline error
        raise UndertowError("concept state of format 1 needs the version's validation baseline")
    mean, sd = context.validation
    detectors = {
        **blob,
        "rolling_mean_long": [0, 0.0, math.nan, *([0.0] * c.rolling_long_window)],
        "prediction_time_cusum": [math.nan, math.nan, 0.0, 0.0, *([0.0] * c.pt_horizon_buckets)],
    }
    return {
        "detectors": detectors,
        "production": {"mean": mean, "sd": sd, "errors": None, "cusum_h": None, "labels": None, "refine": None},
        "episode": {"level_z": [], "level": None, "level_from": None, "escalation": None, "escalation_pt": None},
    }


def _prefix_sums(state: list[float]) -> list[float]:
    suffix = np.array(state[4:], dtype=float)  # W_v = T - P_v, W_0 being the total
    total = float(suffix[0])
    return [*state[:4], total, *(total - suffix).tolist()]


def _from_2(blob: dict[str, Any], context: Context) -> None:
    blob["detectors"]["prediction_time_cusum"] = _prefix_sums(blob["detectors"]["prediction_time_cusum"])
    if blob["episode"]["escalation_pt"] is not None:
        blob["episode"]["escalation_pt"] = _prefix_sums(blob["episode"]["escalation_pt"])


def _from_3(blob: dict[str, Any], context: Context) -> None:
    production = blob["production"]
    blob["detectors"]["prediction_time_cusum_small"] = _fresh_prediction_time_cusum(context.config)
    production["gap_pending"] = False
    production["small_cusum_h"] = (
        None
        if production["cusum_h"] is None
        else _small_threshold(production["cusum_h"], production["labels"], context)
    )


def _small_threshold(cusum_h: float, baseline_labels: int | None, context: Context) -> float:
    """The k/2 CUSUM's threshold for state from before it (the production errors are gone).

    The calibrated k threshold scaled as the normal-theory thresholds of the two reference values are,
    and at least the calibration on the validation sample against its own level, with the same
    allowance for an estimated baseline (0/1 errors need more than the normal ratio gives; calibrating
    against the production level instead would set it too low when production is worse).
    """
    k, every = context.config.cusum_k, context.config.cusum_false_alarm_every
    scaled = cusum_h * cusum_threshold(k / 2, every) / cusum_threshold(k, every)
    sample = context.validation_sample
    if context.validation is None or not sample or len(sample) < MIN_CALIBRATION_SAMPLE:
        return scaled
    return max(scaled, cusum_threshold_from(reference_z(sample, *context.validation, baseline_labels), k / 2, every))


def _from_4(blob: dict[str, Any], context: Context) -> None:
    blob["production"]["first_labels"] = None  # the trend rule then compares with all labels before


def _from_5(blob: dict[str, Any], context: Context) -> None:
    blob["production"].pop("calibration_errors", None)
    blob["production"]["settled_thresholds"] = None


def _from_6(blob: dict[str, Any], context: Context) -> None:
    blob["detectors"].pop("cusum")  # the arrival-order CUSUM, gone
    blob["production"]["skewness"] = None  # the rolling means keep thresholds for normal errors


def _from_7(blob: dict[str, Any], context: Context) -> None:
    settled = blob["production"].pop("settled_thresholds")
    blob["production"]["tighten_at"] = (
        None if settled is None else [[context.config.production_refine_labels, *settled]]
    )


def _from_8(blob: dict[str, Any]) -> dict[str, Any]:
    """Positional detector states to named fields; the nested log-loss row to a typed stream."""
    typed = _typed_stream(blob)
    loss = blob.get("log_loss")
    if loss is not None:
        counts = {key: loss[key] for key in StreamCounts.model_fields}
        typed["log_loss"] = {**_typed_stream(json.loads(loss["detectors"])), "counts": counts}
    return typed


def _typed_stream(blob: dict[str, Any]) -> dict[str, Any]:
    episode = blob["episode"]
    typed_detectors = {
        name: (
            _page_hinkley
            if name == "page_hinkley"
            else _rolling_mean
            if name.startswith("rolling_mean")
            else _prediction_time_cusum
        )(numbers)
        for name, numbers in blob["detectors"].items()
    }
    return {
        "detectors": typed_detectors,
        "production": blob["production"],
        "episode": {
            **episode,
            "escalation": None if episode["escalation"] is None else _cusum(episode["escalation"]),
            "escalation_pt": (
                None if episode["escalation_pt"] is None else _prediction_time_cusum(episode["escalation_pt"])
            ),
        },
    }


def _page_hinkley(numbers: list[float]) -> dict[str, Any]:
    n, mean, sum_increase, sum_decrease, min_increase, max_decrease, detected = numbers
    return {
        "n": n,
        "mean": mean,
        "sum_increase": sum_increase,
        "sum_decrease": sum_decrease,
        "min_increase": min_increase,
        "max_decrease": max_decrease,
        "drift_detected": bool(detected),
    }


def _cusum(numbers: list[float]) -> dict[str, Any]:
    return {"sum": numbers[0], "drift_detected": bool(numbers[1])}


def _rolling_mean(numbers: list[float]) -> dict[str, Any]:
    return {
        "count": int(numbers[0]),
        "drift_detected": bool(numbers[1]),
        "value": None if math.isnan(numbers[2]) else numbers[2],
        "values": numbers[3:],
    }


def _prediction_time_cusum(numbers: list[float]) -> dict[str, Any]:
    first, floor, detected, too_late, total, *prefix = numbers
    return {
        "first": None if math.isnan(first) else int(first),
        "floor": None if math.isnan(floor) else int(floor),
        "drift_detected": bool(detected),
        "too_late": int(too_late),
        "total": total,
        "prefix": prefix,
    }


def _from_9(blob: dict[str, Any]) -> dict[str, Any]:
    """Format 9's episode (a level and its escalation CUSUMs) as the legacy escalation of an open episode."""
    blob["episode"] = _episode_from_9(blob["episode"])
    if blob.get("log_loss") is not None:
        blob["log_loss"]["episode"] = _episode_from_9(blob["log_loss"]["episode"])
    return blob


def _episode_from_9(old: dict[str, Any]) -> dict[str, Any]:
    """An episode that has measured (part of) its level goes on under its rule (``legacy``). Outside an
    episode, or one started before a label of its level came, nothing of the old rule is under way: the
    next level is measured under today's (the row's ``in_episode`` column is not in the blob)."""
    opened = old["level"] is not None or bool(old["level_z"])
    return {
        "level_z": [],
        "level_from": old["level_from"],
        "bank": None,
        "fall": None,
        "legacy": old if opened else None,
    }


def _from_10(blob: dict[str, Any]) -> dict[str, Any]:
    """No traffic was recorded: a baseline still collecting sets arrival-order thresholds when it completes,
    as format 10's did, and one set already keeps its thresholds."""
    for stream in (blob, blob.get("log_loss")):
        if stream is not None:
            stream["production"] = {**stream["production"], "traffic": None, "pt_factors": None}
    return blob
