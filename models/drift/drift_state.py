"""The stored state of a model version's data-drift monitor (``drift_state.episodes``) as a typed,
numbered format: the episodes, the window checks' episodes with their last value, the evidence over windows,
and the layout of the window buffer (whether it holds a confidence column).

The JSON keeps the flat layout it always had (``feature -> [level, calm, peak]``, the reserved entries
below), which the status command and the metrics read. Formats, dated with ``git log -p`` on
worker/monitor/data_drift.py and models/drift/episodes.py:

1. before 495cebe (29 Nov 2026): ``[level, calm]`` per feature and ``__dataset__``; no evidence; the buffer
   holds the feature columns only;
2. 495cebe: the hysteresis' peak (``[level, calm, peak]``), ``__multivariate__`` and ``__performance__`` with
   their last value, ``__evidence__`` one CUSUM number per feature, a confidence column in the buffer of a
   scored classifier;
3. 1ec774c: ``__evidence__`` the newest windows' z per feature (the moving sums);
4. af3b1f3 (6 Dec 2026): the buffer's layout written down (``__confidence_column__``), no longer measured;
5. 075f733: ``__dependence__``, the dependence check's episode with its last largest |z| (a release
   of format 4 would read it as a feature's episode and fail on its fourth entry; the format number makes it
   say "upgrade Undertow" instead);
6. this release: ``__dataset_evidence__``, the evidence across features (``CombinedEvidence``): its own
   newest windows' z per input feature (a release of format 5 would read it as a feature's episode).

Rows written before formats were numbered (``state_format`` NULL) go through ``legacy_blob``, the one place
that looks at a state's shape; the row is saved with its number at its next update.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from undertow.models.drift.episodes import Episode
from undertow.models.state_format import StateCodec

DATASET = "__dataset__"
MULTIVARIATE = "__multivariate__"
PERFORMANCE = "__performance__"
DEPENDENCE = "__dependence__"
EVIDENCE = "__evidence__"  # per feature, the newest windows' z
DATASET_EVIDENCE = "__dataset_evidence__"  # the same, kept apart for the evidence across features
CONFIDENCE_COLUMN = "__confidence_column__"  # the buffer's last column is the model's confidence
CHECKS = (MULTIVARIATE, PERFORMANCE, DEPENDENCE)


class CheckEpisode(NamedTuple):
    """The episode of a window-level check and the value of its last window (z, estimated accuracy)."""

    level: str
    calm: int
    peak: str
    value: float

    @property
    def episode(self) -> Episode:
        return Episode(self.level, self.calm, self.peak)


class DataDriftState(BaseModel):
    """Format 6. Built by the monitor with ``model_construct`` (its parts are already typed); validated when
    read back."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    episodes: dict[str, Episode] = {}  # input features, __prediction__, __dataset__
    checks: dict[str, CheckEpisode] = {}  # __multivariate__, __performance__, __dependence__
    evidence: dict[str, list[float]] = {}
    dataset_evidence: dict[str, list[float]] = {}
    confidence_column: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_stored(cls, stored: dict[str, Any]) -> dict[str, Any]:
        entries = dict(stored)
        evidence, confidence_column = entries.pop(EVIDENCE), entries.pop(CONFIDENCE_COLUMN)
        dataset_evidence = entries.pop(DATASET_EVIDENCE)
        checks = {name: entries.pop(name) for name in CHECKS if name in entries}
        return {
            "episodes": entries,
            "checks": checks,
            "evidence": evidence,
            "dataset_evidence": dataset_evidence,
            "confidence_column": confidence_column,
        }

    @model_serializer
    def _to_stored(self) -> dict[str, Any]:
        # The checks in one order, however the monitor came by them (a state upgraded from format 4 gets its
        # dependence episode last): the same state is always the same bytes.
        checks = {name: self.checks[name] for name in CHECKS if name in self.checks}
        return {
            **self.episodes,
            **checks,
            EVIDENCE: self.evidence,
            DATASET_EVIDENCE: self.dataset_evidence,
            CONFIDENCE_COLUMN: self.confidence_column,
        }


class StoredDriftState(Protocol):
    """The columns of a ``drift_state`` row read here."""

    @property
    def episodes(self) -> str: ...
    @property
    def buffer(self) -> bytes | None: ...
    @property
    def buffer_ts(self) -> bytes | None: ...
    @property
    def state_format(self) -> int | None: ...


def _peaks(old: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: an episode's peak is its level (the hysteresis came later); no evidence yet."""
    reserved = {EVIDENCE, CONFIDENCE_COLUMN}
    return {
        **{
            name: [level, calm, level]
            for name, (level, calm) in ((name, state) for name, state in old.items() if name not in reserved)
        },
        EVIDENCE: {},
        CONFIDENCE_COLUMN: old[CONFIDENCE_COLUMN],
    }


def _moving_sums(old: dict[str, Any]) -> dict[str, Any]:
    """2 -> 3: the CUSUM numbers have no windows to sum: the moving sums start afresh."""
    return {**old, EVIDENCE: {name: [] for name in old[EVIDENCE]}}


def _layout_written(old: dict[str, Any]) -> dict[str, Any]:
    """3 -> 4: nothing to convert: format 4 writes down the buffer layout that ``legacy_blob`` measured."""
    return old


def _dependence(old: dict[str, Any]) -> dict[str, Any]:
    """4 -> 5: no dependence check yet: its episode starts calm at the next window."""
    return old


def _dataset_evidence(old: dict[str, Any]) -> dict[str, Any]:
    """5 -> 6: no evidence across features yet: its sums start at the next window."""
    return {**old, DATASET_EVIDENCE: {}}


CODEC = StateCodec(
    "drift_state",
    DataDriftState,
    current=6,
    upgrades={1: _peaks, 2: _moving_sums, 3: _layout_written, 4: _dependence, 5: _dataset_evidence},
)


def legacy_blob(row: StoredDriftState, feature_columns: int) -> tuple[str, int]:
    """The blob and format number of a row written before formats were numbered (``state_format`` NULL).

    The only place that looks at a state's shape, once per row from before numbering: format 1 has no
    ``__evidence__`` (or its ``[level, calm]`` entries were saved by newer code before its next window
    closed, beside an empty one); format 2 has CUSUM numbers as evidence; the rest are format 3. Whether
    the buffer holds a confidence column is read from its width (``feature_columns`` + 1), as the code of
    those formats did: a window stored before the column existed kept its width, whatever the format.
    """
    stored = json.loads(row.episodes or "{}")
    evidence = stored.get(EVIDENCE)
    if evidence is None or any(isinstance(state, list) and len(state) == 2 for state in stored.values()):
        number = 1
    elif any(not isinstance(z, list) for z in evidence.values()):
        number = 2
    else:
        number = 3
    width = len(row.buffer or b"") // len(row.buffer_ts) if row.buffer_ts else feature_columns
    return json.dumps({**stored, CONFIDENCE_COLUMN: width == feature_columns + 1}), number


def load_state(row: StoredDriftState | None, feature_columns: int) -> DataDriftState:
    """A version's stored state (``row``: its ``drift_state`` row or None) in the current format."""
    if row is None:
        return DataDriftState.model_construct(
            episodes={}, checks={}, evidence={}, dataset_evidence={}, confidence_column=False
        )
    if row.state_format is None:
        return CODEC.load(*legacy_blob(row, feature_columns))
    return CODEC.load(row.episodes, row.state_format)
