"""``explained_by`` on a concept alert: the version's labelled pairs after the change against those before it
(or its held-out rows), per bin of each input (``models.drift.explain``).

Read from the pairs joined up to the one that fired, so a replay with other batch boundaries explains the
alert the same way; nothing is stored besides the alert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.errors import prediction_error
from undertow.models.drift.explain import Bins, CategoryBins, NumericBins, explain_change
from undertow.models.profile import PREDICTION_FEATURE, NumericProfile, ReferenceProfile
from undertow.storage.pair_samples import pairs_of_version
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.output_events import ConceptDriftAlert, ExplainedBin, Explanation

SAMPLE_PAIRS = 5000  # newest pairs read on each side of the change
MIN_PRODUCTION_PAIRS = 200  # before the change; fewer, and the held-out rows are the "before"
MIN_PAIRS_AFTER = 50
LOG_LOSS = "log_loss"


def explain_alert(
    session: Session, alert: ConceptDriftAlert, seq: int, within: Callable[[dict], bool] | None = None
) -> ConceptDriftAlert:
    """The alert with ``explained_by`` (and what it was compared with) filled in; an ``ended`` alert as it is.

    ``within``: the pairs (and held-out rows) of a segment only, told by their features."""
    data = alert.data
    if data.episode == "ended":
        return alert
    row = registry.find_version(session, data.model_id, data.model_version)
    if row is None:
        return alert
    profile = ReferenceProfile.model_validate_json(row.profile)
    before, after, against = _pairs_around(session, data, seq, DriftConfig.model_validate_json(row.drift_config))
    loss = data.metric == LOG_LOSS
    kept = within or (lambda features: True)
    before_rows = [(f, score if loss else error) for _, text, error, score in before if kept(f := json.loads(text))]
    if len(before_rows) < MIN_PRODUCTION_PAIRS and not loss:
        held_out = _held_out(row.test_set, row.task == "classification")
        before_rows, against = [(f, e) for f, e in held_out if kept(f)], "validation"
    after_rows = [(f, score if loss else error) for _, text, error, score in after if kept(f := json.loads(text))]
    found = _explain(before_rows, after_rows, _bins(profile))
    if not found:
        return alert
    update = {"explained_by": found, "explained_against": against}
    return alert.model_copy(update={"data": data.model_copy(update=update)})


def _pairs_around(session: Session, data, seq: int, config: DriftConfig) -> tuple[list, list, str]:
    """(pairs before the change, pairs after it, what "before" is): split at ``change_started_at``; without
    one (a rolling mean fired: it says its newest window of labels is higher) the detector's window of
    pairs is "after"; a deployment gap has only its production pairs and the held-out rows."""
    key = (data.model_id, data.model_version)
    change = None if data.change_started_at is None else cloudevents.epoch(data.change_started_at)
    if change is None and data.episode != "deployment_gap":
        window = config.rolling_long_window if data.detector == "rolling_mean_long" else config.rolling_window
        after = pairs_of_version(session, *key, up_to_seq=seq, limit=min(window, SAMPLE_PAIRS))
    else:
        after = pairs_of_version(session, *key, up_to_seq=seq, predicted_from=change, limit=SAMPLE_PAIRS)
    if len(after) < MIN_PAIRS_AFTER:
        # A large change fires on its first few pairs, and the estimate of its start may fall after the
        # first of them: the newest pairs then stand for "after", a few from before the change among them.
        after = pairs_of_version(session, *key, up_to_seq=seq, limit=MIN_PAIRS_AFTER)
    if data.episode == "deployment_gap" or not after:
        return [], after, "validation"
    before_seq = min(row[0] for row in after) - 1
    before = pairs_of_version(session, *key, up_to_seq=before_seq, predicted_before=change, limit=SAMPLE_PAIRS)
    return before, after, "production"


def _bins(profile: ReferenceProfile) -> dict[str, Bins]:
    return {
        name: NumericBins(feature.edges) if isinstance(feature, NumericProfile) else CategoryBins(feature.categories)
        for name, feature in profile.features.items()
        if name != PREDICTION_FEATURE
    }


def _held_out(test_set: str | None, classes: bool) -> list[tuple[dict, float | None]]:
    """The version's held-out rows with their errors, as the pairs before a change."""
    if not test_set:
        return []
    rows = json.loads(test_set)
    return [
        (features, prediction_error(prediction, target, classes)[0])
        for features, target, prediction in zip(rows["features"], rows["targets"], rows["predictions"])
        if target is not None and prediction is not None
    ]


def _explain(
    before: list[tuple[dict, float | None]], after: list[tuple[dict, float | None]], bins: dict[str, Bins]
) -> list[Explanation]:
    before = [(f, e) for f, e in before if e is not None]
    after = [(f, e) for f, e in after if e is not None]
    found = explain_change(
        _columns(before, bins),
        np.array([e for _, e in before], dtype=float),
        _columns(after, bins),
        np.array([e for _, e in after], dtype=float),
        bins,
    )
    return [
        Explanation(
            feature=e.feature,
            share=round(e.share, 4),
            z=round(e.z, 2),
            bins=[
                ExplainedBin(
                    range=b.label,
                    error_before=round(b.error_before, 6),
                    error_after=round(b.error_after, 6),
                    share_of_pairs=round(b.share_of_pairs, 4),
                )
                for b in e.bins
            ],
        )
        for e in found
    ]


def _columns(rows: list[tuple[dict, Any]], bins: dict[str, Bins]) -> dict[str, np.ndarray]:
    """Each input's values over the rows: numbers as floats (missing or not a number: NaN), categories as
    they came."""
    columns: dict[str, np.ndarray] = {}
    for name, binning in bins.items():
        values = [features.get(name) for features, _ in rows]
        if isinstance(binning, NumericBins):
            columns[name] = np.array([_number(v) for v in values], dtype=float)
        else:
            columns[name] = np.array(values, dtype=object)
    return columns


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)
