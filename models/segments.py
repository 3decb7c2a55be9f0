"""Drift per segment: the segments of a model version, fixed from its reference at registration.

``models register --segment-by region[,channel]`` names categorical inputs. The
combinations of their values with the most reference rows (the top ``top``, 20 by
default, each with at least ``MIN_SEGMENT_ROWS``) are the segments; every other
combination, a value never seen in the reference and a missing value fall in one
more, ``__other__``. Each segment has a reference profile of its own rows (and its
own error baseline where the reference has targets and predictions): a segment is
judged against what it looked like, not against the average, or a segment that
differs from the average would always look drifted.

The set is fixed for the version, so the monitor keeps at most ``top + 1``
monitors and state rows per version however many values production sends; a
segment that appears later is watched in ``__other__`` until a version
registered with it as a segment replaces this one.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from undertow.models.drift import errors as drift_errors
from undertow.models.profile import (
    PREDICTION_FEATURE,
    CategoricalProfile,
    NumericProfile,
    ProfileError,
    ReferenceProfile,
    profile_categorical,
    profile_dependence,
    profile_multivariate,
    profile_numeric,
)

log = logging.getLogger(__name__)

OTHER = "__other__"  # the segment of every value outside the top ones (unseen and missing too)
DEFAULT_TOP = 20
MAX_TOP = 200
MIN_SEGMENT_ROWS = 200  # reference rows a segment needs for a profile of its own (as the PCA check does)
MAX_KEY_LENGTH = 500  # storage.tables.SEGMENT_KEY_LENGTH


class SegmentError(ProfileError):
    """A --segment-by that cannot be segmented on (a missing or numeric column)."""


class Segment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str = Field(description="'region=north,channel=web', or __other__; the state rows' key")
    values: dict[str, str] = Field(description="column -> value; __other__ in every column for the other segment")
    rows: int = Field(description="reference rows of the segment")
    # None: fewer than MIN_SEGMENT_ROWS reference rows (only the other segment can be so): not monitored.
    profile: ReferenceProfile | None
    baseline_error: tuple[float, float] | None = None  # mean and sd of the error on its reference rows
    error_sample: list[float] | None = None  # sorted, at most ERROR_SAMPLE_SIZE


class Segmentation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    by: list[str]
    top: int
    segments: list[Segment]  # the top ones, most reference rows first, then OTHER

    def lookup(self) -> dict[tuple[str, ...], str]:
        """Values (in ``by`` order, as strings) -> segment key, for the top segments."""
        return {tuple(s.values[c] for c in self.by): s.key for s in self.segments if s.key != OTHER}

    def key_of(self, features: dict[str, Any], lookup: dict[tuple[str, ...], str] | None = None) -> str:
        """The segment of one prediction's features.

        >>> s = Segmentation(by=["region"], top=1, segments=[
        ...     Segment(key="region=north", values={"region": "north"}, rows=300, profile=None),
        ...     Segment(key=OTHER, values={"region": OTHER}, rows=0, profile=None)])
        >>> s.key_of({"region": "north"}), s.key_of({"region": "atlantis"}), s.key_of({})
        ('region=north', '__other__', '__other__')
        """
        table = self.lookup() if lookup is None else lookup
        return table.get(tuple(value_text(features.get(c)) for c in self.by), OTHER)


def value_text(value: Any) -> str:
    """A categorical value as segments compare it (as profiles do: its string); missing is ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def segment_key(values: dict[str, str]) -> str:
    return ",".join(f"{column}={value}" for column, value in values.items())


def check_segment_by(by: list[str], profile: ReferenceProfile) -> None:
    """Refuse, in one line, columns that are not categorical inputs of the reference."""
    categorical = sorted(
        n for n, f in profile.features.items() if isinstance(f, CategoricalProfile) and n != PREDICTION_FEATURE
    )
    choices = f"categorical inputs: {', '.join(categorical) or 'none'}"
    if not by or any(not c for c in by):
        raise SegmentError(f"--segment-by: name one column or more, comma-separated ({choices})")
    if len(set(by)) != len(by):
        raise SegmentError(f"--segment-by: a column is named twice ({','.join(by)})")
    for column in by:
        feature = profile.features.get(column)
        if feature is None or column == PREDICTION_FEATURE:
            raise SegmentError(f"--segment-by: {column!r} is not an input of the reference ({choices})")
        if isinstance(feature, NumericProfile):
            raise SegmentError(f"--segment-by: {column!r} is numeric; segments need categorical inputs ({choices})")


def build_segmentation(
    columns: dict[str, list[Any]],
    by: list[str],
    profile: ReferenceProfile,
    top: int = DEFAULT_TOP,
    target: str | None = None,
    prediction: str | None = None,
    classes: bool = False,
) -> Segmentation:
    """The segments of a reference (its columns as read, target and prediction among them) and their profiles;
    ``profile``: the whole reference's, whose feature kinds the segments' profiles keep."""
    check_segment_by(by, profile)
    if not 1 <= top <= MAX_TOP:
        raise SegmentError(f"--segments-top: between 1 and {MAX_TOP}, not {top}")
    n = len(next(iter(columns.values())))
    labels = [tuple(value_text(columns[c][i]) for c in by) for i in range(n)]
    counts = Counter(values for values in labels if "" not in values)
    chosen: list[tuple[str, ...]] = []
    for values, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        key = segment_key(dict(zip(by, values)))
        if len(chosen) < top and count >= MIN_SEGMENT_ROWS and len(key) <= MAX_KEY_LENGTH:
            chosen.append(values)
    index = {values: i for i, values in enumerate(chosen)}
    members: list[list[int]] = [[] for _ in range(len(chosen) + 1)]  # the last: other
    for i, values in enumerate(labels):
        members[index.get(values, len(chosen))].append(i)
    segments = [
        _segment(dict(zip(by, values)), rows, columns, by, profile, target, prediction, classes)
        for values, rows in zip(chosen, members)
    ]
    segments.append(_segment(None, members[-1], columns, by, profile, target, prediction, classes))
    return Segmentation(by=by, top=top, segments=segments)


def _segment(
    values: dict[str, str] | None,
    rows: list[int],
    columns: dict[str, list[Any]],
    by: list[str],
    profile: ReferenceProfile,
    target: str | None,
    prediction: str | None,
    classes: bool,
) -> Segment:
    key = OTHER if values is None else segment_key(values)
    shown = {c: OTHER for c in by} if values is None else values
    if len(rows) < MIN_SEGMENT_ROWS:
        return Segment(key=key, values=shown, rows=len(rows), profile=None)
    subset = {name: [column[i] for i in rows] for name, column in columns.items()}
    # The segment columns define a top segment (constant in it): their mix is the whole stream's business.
    features = {n: v for n, v in subset.items() if n not in (target, prediction, *by)}
    if prediction is not None:
        features[PREDICTION_FEATURE] = subset[prediction]
    baseline, sample = None, None
    if target is not None and prediction is not None:
        errors = drift_errors.errors(subset[target], subset[prediction], classes)
        if errors.size:
            baseline, sample = (float(errors.mean()), float(errors.std())), drift_errors.error_sample(errors)
    return Segment(
        key=key,
        values=shown,
        rows=len(rows),
        profile=_profile(features, profile),
        baseline_error=baseline,
        error_sample=sample,
    )


def _profile(features: dict[str, list[Any]], whole: ReferenceProfile) -> ReferenceProfile:
    """A segment's profile, each feature of the kind the whole reference gave it; a feature without a value
    in the segment's rows is left out (nothing to judge it against)."""
    profiled: dict[str, NumericProfile | CategoricalProfile] = {}
    for name, values in features.items():
        if name not in whole.features:
            continue
        try:
            numeric = isinstance(whole.features[name], NumericProfile)
            profiled[name] = profile_numeric(values) if numeric else profile_categorical(values)
        except (ProfileError, TypeError, ValueError):
            continue
    kept = {name: features[name] for name in profiled}
    return ReferenceProfile(
        rows=len(next(iter(features.values()))),
        features=profiled,
        multivariate=profile_multivariate(kept),
        dependence=profile_dependence(kept),
    )


def segmentation_like(
    previous: Segmentation,
    test_set: dict[str, Any],
    predictions: list[Any],
    profile: ReferenceProfile,
    classes: bool,
) -> Segmentation | None:
    """A retrained version's segments, by the columns and top count of the version it replaces, fixed from
    its own held-out rows (as a registered version's are from its reference); None, logged, if its inputs no
    longer allow them (a segment column gone or numeric now): it is then watched as a whole only."""
    inputs = [name for name in profile.features if name != PREDICTION_FEATURE]
    columns: dict[str, list[Any]] = {name: [row.get(name) for row in test_set["features"]] for name in inputs}
    columns[_TARGET], columns[_PREDICTION] = list(test_set["targets"]), list(predictions)
    try:
        return build_segmentation(columns, previous.by, profile, previous.top, _TARGET, _PREDICTION, classes)
    except SegmentError as exc:
        log.warning("the retrained version is not segmented by %s: %s", ",".join(previous.by), exc)
        return None


_TARGET, _PREDICTION = "__segment_target__", "__segment_prediction__"


def load_segmentation(stored: str | None) -> Segmentation | None:
    """A version's segmentation as ``model_versions.segments`` stores it (None: not segmented)."""
    return None if not stored else Segmentation.model_validate_json(stored)
