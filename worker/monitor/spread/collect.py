"""What a batch's stages hand over for spread models, collected per (model, source partition).

The routing stage puts a ``SpreadCollector`` in ``batch.shared[SPREAD]`` when
the batch holds events of spread models; the ingest, data-drift and concept
stages add their part for those models instead of writing per-model state
(counts, windows, detector state are the merge's); the emit stage turns each
(model, partition) into one partial.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from undertow.worker.runtime.events import PredictionEvent

SPREAD = "spread"  # batch.shared: the SpreadCollector of the batch
SPREAD_SWITCHED = "spread_switched"  # batch.shared: models spread or no longer spread since the last batch

# labelled_pairs.seq of a spread model's pair: its number on the partition times this, plus the partition, so
# that monitors on other partitions never write the same seq (and a partition's pairs keep their order).
SEQ_STRIDE = 1024


def spread_seq(joined_on_partition: int, partition: int) -> int:
    return joined_on_partition * SEQ_STRIDE + partition


def spread_stream(model_id: str, partition: int) -> str:
    """The key of a spread model's join on one partition (its join buffer and join statistics): model ids
    never contain ``@``."""
    return f"{model_id}@{partition}"


@dataclass
class PartitionPart:
    """One spread model's events from one source partition in this batch, as the stages left them."""

    predictions: int = 0
    labels: int = 0
    duplicates: int = 0
    min_ts: float | None = None
    max_ts: float | None = None
    max_prediction_ts: float | None = None
    max_label_ts: float | None = None
    rows: dict[str, list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    pairs: dict[tuple[str, str], list] = field(default_factory=lambda: defaultdict(list))  # (version, metric)


class SpreadCollector:
    def __init__(self, models: set[str], partitions: int):
        self.models = models
        self.partitions = partitions  # of the source topics
        self.parts: dict[tuple[str, int], PartitionPart] = defaultdict(PartitionPart)
        self.streams: set[str] = set()  # the join streams (model@partition) the batch touched

    def part(self, model_id: str, partition: int) -> PartitionPart:
        return self.parts[(model_id, partition)]

    def add_rows(
        self,
        model_id: str,
        partition: int,
        version: str,
        rows: npt.NDArray[np.float64],
        ts: npt.NDArray[np.float64],
    ) -> None:
        self.parts[(model_id, partition)].rows[version].append((rows, ts))

    def add_pair(self, model_id: str, partition: int, pair) -> None:
        """A joined pair (``concept.pairs.Pair``) with a version."""
        self.parts[(model_id, partition)].pairs[(pair.version, pair.metric)].append(pair)

    def take_counts(self, events: list, duplicates: dict[str, int], partitions: Iterable[tuple[str, int]]) -> list:
        """Count the spread models' events into their partitions' parts (the merge adds them to the model's
        counts, so monitors never write one model's counters at once); the other events, for the usual count.
        A spread model's duplicates go to the batch's lowest partition: only their sum is kept."""
        rest = []
        models = self.models
        for item in events:
            event = item[1]
            if event.model_id not in models:
                rest.append(item)
                continue
            part = self.parts[(event.model_id, item[0].partition)]
            epoch = event.epoch
            if event.__class__ is PredictionEvent:
                part.predictions += 1
                if part.max_prediction_ts is None or epoch > part.max_prediction_ts:
                    part.max_prediction_ts = epoch
            else:
                part.labels += 1
                if part.max_label_ts is None or epoch > part.max_label_ts:
                    part.max_label_ts = epoch
            if part.min_ts is None or epoch < part.min_ts:
                part.min_ts = epoch
            if part.max_ts is None or epoch > part.max_ts:
                part.max_ts = epoch
        lowest = min((partition for _, partition in partitions), default=0)
        for model_id in [m for m in duplicates if m in models]:
            self.parts[(model_id, lowest)].duplicates += duplicates.pop(model_id)
        return rest
