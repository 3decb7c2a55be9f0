"""One spread model's merge: which partials it applied, each partition's watermark, what it holds back.

Pure bookkeeping, no SQL: ``ModelMerge`` takes partials in merge-topic order
and releases their rows and pairs in event-time order once every partition
that is not silent has passed them. The stage (``merge_stage``) stores it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from undertow.worker.monitor.spread.partial import PairsPart, Partial, RowsPart

FORMAT = 1  # of ``MergeProgress`` in ``merge_state.state`` (its ``state_format`` column)


class MergeProgress(BaseModel):
    """What is stored of a merge besides the parts it holds back (those are ``merge_pending`` rows)."""

    model_config = ConfigDict(extra="forbid")

    partitions: int
    next_seq: dict[int, int] = {}  # per source partition: the partial expected next
    watermarks: dict[int, float] = {}  # per source partition: its newest prediction time
    label_watermarks: dict[int, float] = {}  # and its newest label time
    started_ts: float | None = None  # the first prediction watermark seen: a partition that never sent waits
    label_started_ts: float | None = None
    released_to: float | None = None  # prediction time up to which rows were released
    label_released_to: float | None = None  # label time up to which pairs were released
    partials: int = 0  # applied
    duplicate_partials: int = 0  # re-sent by an outbox after a crash: dropped
    gaps: int = 0  # partials that came after a missing one (should not happen: logged)
    late_rows: int = 0  # released after rows of later event time (a silent partition caught up)
    late_pairs: int = 0
    held_rows: int = 0  # waiting for the other partitions, at the last save
    held_pairs: int = 0


@dataclass
class HeldPart:
    """The unreleased rest of one partial.

    Stored once (``merge_pending``), what was left after the release that followed its arrival, and never
    rewritten: after every release everything up to the merge's ``released_to`` (and ``label_released_to``)
    has been released and nothing after it, so restoring it and dropping what is not after them gives its
    rest again. (Encoding only the rest: most of a partial is usually released at once.)
    """

    partition: int
    seq: int
    rows: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], dict[str, npt.NDArray]] = field(default_factory=dict)
    stored: bool = False  # a merge_pending row exists

    @classmethod
    def of(cls, partial: Partial) -> HeldPart:
        return cls(
            partial.partition,
            partial.seq,
            {part.version: part.arrays() for part in partial.rows},
            {(part.version, part.metric): part.arrays() for part in partial.pairs},
        )

    def encode(self, model_id: str, partitions: int) -> bytes:
        """What is left of the partial, as a partial (for ``merge_pending``)."""
        rows = [RowsPart.of(version, values, ts) for version, (values, ts) in self.rows.items()]
        pairs = [PairsPart.of(version, metric, arrays) for (version, metric), arrays in self.pairs.items()]
        rest = Partial(
            model_id=model_id,
            partition=self.partition,
            partitions=partitions,
            seq=self.seq,
            watermark_ts=None,
            rows=rows,
            pairs=pairs,
        )
        return rest.model_dump_json().encode()

    @classmethod
    def restore(cls, payload: bytes, released_to: float | None, label_released_to: float | None) -> HeldPart:
        part = cls.of(Partial.model_validate_json(payload))
        part.stored = True
        part.take(released_to, label_released_to)  # released before it was stored or since
        return part

    def empty(self) -> bool:
        return not self.rows and not self.pairs

    def take(self, until: float | None, labels_until: float | None) -> tuple[dict, dict]:
        """Remove and return the rows (by version) up to prediction time ``until`` and the pairs (by version
        and metric) up to label time ``labels_until`` (None: none)."""
        rows = {} if until is None else self._take_rows(until)
        pairs = {} if labels_until is None else self._take_pairs(labels_until)
        return rows, pairs

    def _take_rows(self, until: float) -> dict:
        taken = {}
        for version, (values, ts) in list(self.rows.items()):
            due = ts <= until
            if due.any():
                taken[version] = (values[due], ts[due])
                self.rows[version] = (values[~due], ts[~due])
            if not len(self.rows[version][1]):
                del self.rows[version]
        return taken

    def _take_pairs(self, until: float) -> dict:
        taken = {}
        for key, arrays in list(self.pairs.items()):
            due = arrays["label_ts"] <= until
            if due.any():
                taken[key] = {name: a[due] for name, a in arrays.items()}
                self.pairs[key] = {name: a[~due] for name, a in arrays.items()}
            if not len(self.pairs[key]["seq"]):
                del self.pairs[key]
        return taken


@dataclass
class Released:
    """What one release step hands to the detectors, in event-time order."""

    rows: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
    pairs: dict[str, list[tuple]]  # per version: (seq, prediction_ts, label_ts, error, score_loss | None, metric)


class ModelMerge:
    def __init__(self, model_id: str, progress: MergeProgress, held: list[HeldPart], wait_seconds: float):
        self.model_id = model_id
        self.progress = progress
        self.held = held
        self.wait_seconds = wait_seconds
        self.deleted: list[HeldPart] = []  # released entirely since the last save: their rows go

    def add(self, partial: Partial) -> str:
        """Take a partial: ``"applied"``, or ``"duplicate"`` (applied before)."""
        p = self.progress
        expected = p.next_seq.get(partial.partition, 0)
        if partial.seq < expected:
            p.duplicate_partials += 1
            return "duplicate"
        if partial.seq > expected:
            p.gaps += 1
        p.next_seq[partial.partition] = partial.seq + 1
        p.partitions = max(p.partitions, partial.partitions)
        p.partials += 1
        if partial.watermark_ts is not None:
            _advance(p.watermarks, partial.partition, partial.watermark_ts)
            p.started_ts = partial.watermark_ts if p.started_ts is None else p.started_ts
        if partial.label_watermark_ts is not None:
            _advance(p.label_watermarks, partial.partition, partial.label_watermark_ts)
            p.label_started_ts = partial.label_watermark_ts if p.label_started_ts is None else p.label_started_ts
        if partial.rows or partial.pairs:
            self.held.append(HeldPart.of(partial))
        return "applied"

    def waited_for(self, labels: bool = False) -> tuple[float | None, list[int]]:
        """The prediction time (``labels``: label time) every partition still waited for has passed, and the
        partitions not waited for (silent: more than ``wait_seconds`` of event time behind the newest)."""
        p = self.progress
        marks, started = (p.label_watermarks, p.label_started_ts) if labels else (p.watermarks, p.started_ts)
        if not marks:
            return None, []
        horizon = max(marks.values()) - self.wait_seconds
        # A partition that never sent holds everything back until the merge has run wait_seconds of event time.
        unseen = [n for n in range(p.partitions) if n not in marks]
        if unseen and started is not None and started >= horizon:
            return None, []
        silent = unseen + [n for n, mark in marks.items() if mark < horizon]
        passed = min(mark for mark in marks.values() if mark >= horizon)
        return passed, sorted(silent)

    def release(self) -> Released:
        """Rows up to the prediction time and pairs up to the label time every waited-for partition has passed,
        ordered by event time (ties: by partition, then as they came)."""
        p = self.progress
        passed, _ = self.waited_for()
        labels_passed, _ = self.waited_for(labels=True)
        passed = _monotone(passed, p.released_to)
        labels_passed = _monotone(labels_passed, p.label_released_to)
        before, labels_before = p.released_to, p.label_released_to
        rows: dict[str, list] = defaultdict(list)
        pairs: dict[str, list] = defaultdict(list)
        for part in self.held:
            taken_rows, taken_pairs = part.take(passed, labels_passed)
            for version, (values, ts) in taken_rows.items():
                rows[version].append((values, ts, np.full(len(ts), part.partition)))
            for (version, metric), arrays in taken_pairs.items():
                pairs[version].append((arrays, metric, part.partition))
        self.deleted += [part for part in self.held if part.empty() and part.stored]
        self.held = [part for part in self.held if not part.empty()]
        p.released_to, p.label_released_to = passed, labels_passed
        return Released(
            {version: self._ordered_rows(chunks, before) for version, chunks in rows.items()},
            {version: self._ordered_pairs(chunks, labels_before) for version, chunks in pairs.items()},
        )

    def _ordered_rows(self, chunks: list, before: float | None) -> tuple[npt.NDArray, npt.NDArray]:
        values = np.concatenate([c[0] for c in chunks])
        ts = np.concatenate([c[1] for c in chunks])
        partitions = np.concatenate([c[2] for c in chunks])
        order = np.lexsort((partitions, ts))  # stable: a partition's rows of one time keep their order
        if before is not None:
            self.progress.late_rows += int((ts < before).sum())
        return values[order], ts[order]

    def _ordered_pairs(self, chunks: list, before: float | None) -> list[tuple]:
        """(seq, prediction_ts, label_ts, error, score_loss | None, metric) by label time, then partition, then
        prediction time, then seq (a partition's join order).

        Prediction time before seq: labels of one time are often many (a batch of labels stamped when it was
        sent), and their join order depends on how the monitor's polls interleaved the two topics (a label
        read before its prediction joins a batch later), so ordering ties by seq alone let two runs of one
        stream feed the detectors in different orders."""
        label_ts = np.concatenate([c[0]["label_ts"] for c in chunks])
        partitions = np.concatenate([np.full(len(c[0]["seq"]), c[2]) for c in chunks])
        seq = np.concatenate([c[0]["seq"] for c in chunks])
        prediction_ts = np.concatenate([c[0]["prediction_ts"] for c in chunks])
        order = np.lexsort((seq, prediction_ts, partitions, label_ts))
        if before is not None:
            self.progress.late_pairs += int((label_ts < before).sum())
        metrics = np.concatenate([np.full(len(c[0]["seq"]), i) for i, c in enumerate(chunks)])[order].tolist()
        names = [c[1] for c in chunks]
        losses = np.concatenate([c[0]["score_loss"] for c in chunks])[order]
        return list(
            zip(
                seq[order].tolist(),
                prediction_ts[order].tolist(),
                label_ts[order].tolist(),
                np.concatenate([c[0]["error"] for c in chunks])[order].tolist(),
                [None if loss != loss else loss for loss in losses.tolist()],  # NaN: no scores came
                [names[i] for i in metrics],
            )
        )


def _advance(marks: dict[int, float], partition: int, ts: float) -> None:
    old = marks.get(partition)
    marks[partition] = ts if old is None else max(old, ts)


def _monotone(passed: float | None, released_to: float | None) -> float | None:
    """What was released stays released: a silent partition that catches up does not move it back."""
    if passed is None or released_to is None:
        return passed if released_to is None else released_to
    return max(passed, released_to)
