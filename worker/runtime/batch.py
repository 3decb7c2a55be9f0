"""One poll's worth of records, validated: the unit of processing and commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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


def build_batch(records: Sequence[Any], parse: Callable[[Any], Any]) -> Batch:
    """Validate every record once, keeping their order; invalid ones become dead letters.

    ``parse`` turns a record into its event or raises InvalidEvent. If it has a ``parse_batch(records)``, that
    does the same for a whole batch in one call, returning the (record, event) pairs and the (record,
    InvalidEvent) pairs, each in the records' order.
    """
    batch = Batch()
    parse_batch = getattr(parse, "parse_batch", None)
    if parse_batch is None:
        for record in records:
            try:
                batch.events.append((record, parse(record)))
            except InvalidEvent as exc:
                _refuse(batch, record, exc)
    else:
        batch.events, refused = parse_batch(records)
        for record, error in refused:
            _refuse(batch, record, error)
    # A second pass over the records (hence a sequence): parse_batch's loop is the parser's, which has no offsets.
    batch.next_offsets = {(record.topic, record.partition): record.offset + 1 for record in records}
    return batch


def _refuse(batch: Batch, record, exc: InvalidEvent) -> None:
    log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
    batch.dead_letters.append(dead_letter(record, "validate", exc))
