"""One poll's worth of records, validated: the unit of processing and commit."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from storage.errors import InvalidEvent
from worker.events import LabelEvent, PredictionEvent, parse_label, parse_prediction
from worker.topics import Topics
from worker.transport import DeadLetter, dead_letter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


@dataclass
class Batch:
    # Valid events in processing order (predictions and labels interleaved).
    events: list[tuple[Position, PredictionEvent | LabelEvent]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (topic, partition) -> offset of the next record to read after this batch
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def predictions(self) -> list[tuple[Position, PredictionEvent]]:
        return [(p, e) for p, e in self.events if isinstance(e, PredictionEvent)]

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters)


def build_batch(records, topics: Topics, max_event_bytes: int, max_clock_skew: float,
                now: float | None = None) -> Batch:
    """Validate every record once, keeping their order; invalid ones become dead letters.

    An event dated more than ``max_clock_skew`` seconds after ``now`` (the
    monitor's clock) is invalid: event time drives watermarks, windows and
    join expiry, and one event from the far future would move them for good.
    """
    batch = Batch()
    latest = (time.time() if now is None else now) + max_clock_skew
    for record in records:
        position = Position(record.topic, record.partition, record.offset)
        is_prediction = record.topic == topics.predictions
        try:
            event = (parse_prediction if is_prediction else parse_label)(record.value, max_event_bytes)
            if record.key != event.model_id.encode():
                raise InvalidEvent(
                    f"record key {record.key!r} is not the model_id {event.model_id!r}: events must be "
                    "keyed by model_id so predictions and labels of a model share a partition")
            if event.epoch > latest:
                raise InvalidEvent(
                    f"ts {event.ts.isoformat()} is more than {max_clock_skew:g} s ahead of the monitor's clock "
                    f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(latest - max_clock_skew))}); "
                    "see UNDERTOW_MAX_CLOCK_SKEW_SECONDS")
        except InvalidEvent as exc:
            log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            batch.dead_letters.append(dead_letter(record, "validate", exc))
        else:
            batch.events.append((position, event))
        batch.next_offsets[(record.topic, record.partition)] = record.offset + 1
    return batch
