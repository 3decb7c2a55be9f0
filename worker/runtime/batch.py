"""One poll's worth of records, validated: the unit of processing and commit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from undertow.errors import InvalidEvent
from undertow.worker.runtime.transport import DeadLetter, dead_letter

log = logging.getLogger(__name__)


class Position(NamedTuple):
    """Where an event came from. ``build_batch`` passes the consumer record itself, which has these
    fields and more: building one of these per record had cost 5 % of the monitor's time."""

    topic: str
    partition: int
    offset: int
    value: bytes | None = None  # the record's value, for stages that store the event as it came


@dataclass
class Batch:
    # Valid events in processing order, with where each came from.
    events: list[tuple[Position, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (topic, partition) -> offset of the next record to read after this batch
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # What a stage read or computed for this batch that later stages reuse (the monitor: the champions).
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters)


def build_batch(records, parse: Callable[[Any], Any]) -> Batch:
    """Validate every record once, keeping their order; invalid ones become dead letters.

    ``parse`` turns a record into its event or raises InvalidEvent.
    """
    batch = Batch()
    for record in records:
        try:
            event = parse(record)
        except InvalidEvent as exc:
            log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            batch.dead_letters.append(dead_letter(record, "validate", exc))
        else:
            batch.events.append((record, event))
        batch.next_offsets[(record.topic, record.partition)] = record.offset + 1
    return batch
