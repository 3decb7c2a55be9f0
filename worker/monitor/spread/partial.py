"""A partial: what one source partition's monitor made of a spread model's events in one batch.

The partition-local work (validation, duplicates, the join, encoding each
prediction's features against the reference, each pair's error) is done
where the events are; what the merge needs travels on the internal merge
topic, keyed by model id:

- the counts (predictions, labels, duplicates, first and last event time);
- per version, the encoded rows of its predictions with their event times (the
  numbers the data-drift windows are built from: about 8 bytes per input,
  against 200-400 bytes of event JSON);
- per version and error metric, the joined pairs' errors, log losses and times
  (what the error streams' detectors read);
- the partition's watermarks (its newest prediction time and label time), which the merge waits on.

Arrays travel as base64 of little-endian binary, never pickled. The format
number travels out of band, in the record header ``undertow-partial-format``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from undertow.errors import InvalidEvent

FORMAT = 1
FORMAT_HEADER = "undertow-partial-format"
PAIR_ARRAYS = ("seq", "prediction_ts", "label_ts", "error", "score_loss")


def pack(array: npt.ArrayLike, dtype: str = "<f8") -> str:
    """An array as base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def unpack(data: str, dtype: str = "<f8") -> npt.NDArray:
    return np.frombuffer(base64.b64decode(data, validate=True), dtype=dtype)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RowsPart(Frozen):
    """A version's predictions on the partition: encoded rows (``width`` columns) and event times."""

    version: str
    width: int = Field(ge=1)
    rows: str
    ts: str

    @classmethod
    def of(cls, version: str, values: npt.NDArray[np.float64], ts: npt.NDArray[np.float64]) -> RowsPart:
        return cls(version=version, width=values.shape[1], rows=pack(values), ts=pack(ts))

    def arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        ts = unpack(self.ts)
        return unpack(self.rows).reshape(len(ts), self.width), ts


class PairsPart(Frozen):
    """A version's joined pairs of one error metric: their ``labelled_pairs`` seq, times, error, log loss
    (NaN where no scores came)."""

    version: str
    metric: str
    seq: str
    prediction_ts: str
    label_ts: str
    error: str
    score_loss: str

    @classmethod
    def of(cls, version: str, metric: str, arrays: Mapping[str, Any]) -> PairsPart:
        """From ``arrays`` as ``arrays()`` gives them (score_loss NaN where none)."""
        packed = {name: pack(arrays[name], "<i8" if name == "seq" else "<f8") for name in PAIR_ARRAYS}
        return cls(version=version, metric=metric, **packed)

    def arrays(self) -> dict[str, npt.NDArray]:
        return {
            "seq": unpack(self.seq, "<i8"),
            "prediction_ts": unpack(self.prediction_ts),
            "label_ts": unpack(self.label_ts),
            "error": unpack(self.error),
            "score_loss": unpack(self.score_loss),
        }


class Partial(Frozen):
    model_id: str
    partition: int = Field(ge=0)
    partitions: int = Field(ge=1)  # of the source topic: the merge waits for each
    seq: int = Field(ge=0)  # per (model, partition), from 0: the merge applies each once
    watermark_ts: float | None  # the newest prediction time on the partition
    label_watermark_ts: float | None = None  # the newest label time
    predictions: int = 0
    labels: int = 0
    duplicates: int = 0
    min_ts: float | None = None
    max_ts: float | None = None
    rows: list[RowsPart] = []
    pairs: list[PairsPart] = []


def encode(partial: Partial) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record value and headers of a partial."""
    return partial.model_dump_json().encode(), [(FORMAT_HEADER, str(FORMAT).encode())]


def decode(value: bytes | None, headers) -> Partial:
    """A merge-topic record's partial, or InvalidEvent saying why not (a format this version cannot read)."""
    found = dict(headers or []).get(FORMAT_HEADER)
    if found != str(FORMAT).encode():
        raise InvalidEvent(
            f"partial format {found!r} is not {FORMAT}: written by another Undertow version; upgrade every monitor"
        )
    try:
        partial = Partial.model_validate_json(value or b"")
        for rows in partial.rows:
            values, ts = rows.arrays()
        for pairs in partial.pairs:
            if len({len(a) for a in pairs.arrays().values()}) != 1:
                raise ValueError(f"the arrays of the pairs of {pairs.version} differ in length")
    except (ValueError, binascii.Error) as exc:
        raise InvalidEvent(f"invalid partial: {str(exc).splitlines()[0]}") from exc
    return partial
