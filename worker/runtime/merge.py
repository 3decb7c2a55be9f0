"""Between the poll and processing: an intake decides which fetched records are processed next.

``FifoIntake`` releases them as polled; ``CoPartitionMerger`` interleaves
two co-partitioned topics deterministically (the monitor's predictions and
labels). Records not yet released are not committed: a crash re-reads them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

Key = tuple[str, int]


class Intake(Protocol):
    def add(self, records_by_tp) -> None: ...

    def release(self, caught_up: Callable[[Key], bool], limit: int) -> list: ...

    def next_fetch(self, key: Key) -> int | None: ...

    def forget(self, keys) -> None: ...

    def clear(self) -> None: ...

    def held_back(self) -> set[Key]: ...

    def __len__(self) -> int: ...


class FifoIntake:
    """Releases records in the order they were polled, up to ``limit`` at a time."""

    def __init__(self) -> None:
        self._records: deque = deque()
        self._next_fetch: dict[Key, int] = {}

    def add(self, records_by_tp) -> None:
        for tp, records in records_by_tp.items():
            self._records.extend(records)
            if records:
                self._next_fetch[(tp.topic, tp.partition)] = records[-1].offset + 1

    def release(self, caught_up: Callable[[Key], bool], limit: int) -> list:
        return [self._records.popleft() for _ in range(min(limit, len(self._records)))]

    def next_fetch(self, key: Key) -> int | None:
        return self._next_fetch.get(key)

    def forget(self, keys) -> None:
        keys = set(keys)
        self._records = deque(r for r in self._records if (r.topic, r.partition) not in keys)
        for key in keys:
            self._next_fetch.pop(key, None)

    def clear(self) -> None:
        self._records.clear()
        self._next_fetch.clear()

    def held_back(self) -> set[Key]:
        return set()

    def __len__(self) -> int:
        return len(self._records)


# How long a partition's records wait for the other topic's partition to be read. While a monitor catches
# up, the consumer hands over one partition's fetch (up to 1 MiB, a few thousand records) at a time, so
# the partner's records can come one pass over every owned partition later: 2-6 s measured for 6 partitions
# at 20,000 records/s (bench/scale.py --hot), more with more partitions. The former 2 s gave up in every
# such run and released in arrival order, and two runs of one stream then joined and alarmed differently.
# A live partition is caught up and never waits; the wait only bounds a partner that cannot be read.
MAX_WAIT_S = 30.0
# A partition with this many records waiting is not fetched until it is down to half. While a monitor catches
# up, the side with the smaller records (labels: a third of a prediction's size) arrives faster per 1 MiB
# fetch and ran 50,000 records ahead of its partner, where the backstop released in arrival order and two runs
# of one stream joined differently (bench/scale.py, one partition pair: concept alarm at label 74,549 or 75,015).
HOLD_AT = 20_000


class CoPartitionMerger:
    """Releases the records of two co-partitioned topics in timestamp order.

    The label join and the error stream depend on the order in which a
    partition's predictions and labels are processed. Poll order depends on
    fetch timing, so a replay after a crash could interleave them differently
    and join differently. Records are therefore buffered per partition and
    released by (record timestamp, topic rank, offset). A head record is held
    back while the other topic's same-numbered partition has nothing buffered
    and is not caught up (its fetch position is below the log end the broker
    last reported); after ``max_wait_s``, or once ``max_buffered`` records of
    the partition wait, it is released anyway, in arrival order (logged).
    Records that are not released are not committed: a crash re-reads them.
    Records of any other subscribed topic (the monitor's model events) are
    released first, as they arrive. A side with ``hold_at`` records waiting
    is ``held_back``: the loop pauses its fetching until it is down to half,
    so the side that is ahead waits in the broker, not here, and the backstop
    stays for a partner that cannot be read.
    """

    def __init__(
        self,
        first_topic: str,
        second_topic: str,
        max_wait_s: float = MAX_WAIT_S,
        max_buffered: int = 40_000,
        hold_at: int = HOLD_AT,
    ):
        if not 0 < hold_at < max_buffered:
            raise ValueError(f"hold_at must be above 0 and below max_buffered ({max_buffered}), not {hold_at}")
        self.topics = (first_topic, second_topic)
        self.max_wait_s = max_wait_s
        self.max_buffered = max_buffered
        self.hold_at = hold_at
        self._held: set[Key] = set()
        self._buffers: dict[tuple[str, int], deque] = {}
        self._passthrough = FifoIntake()
        self._waiting_since: dict[int, float] = {}
        self._released_unmerged: set[int] = set()
        self._next_fetch: dict[tuple[str, int], int] = {}

    def add(self, records_by_tp) -> None:
        for tp, records in records_by_tp.items():
            key = (tp.topic, tp.partition)
            if tp.topic not in self.topics:
                self._passthrough.add({tp: records})
                continue
            self._buffers.setdefault(key, deque()).extend(records)
            if records:
                self._next_fetch[key] = records[-1].offset + 1

    def next_fetch(self, key: tuple[str, int]) -> int | None:
        """Offset after the last record added for a partition (None: nothing since the last clear)."""
        return self._next_fetch.get(key) if key[0] in self.topics else self._passthrough.next_fetch(key)

    def forget(self, keys) -> None:
        keys = list(keys)
        self._passthrough.forget(keys)
        for key in keys:
            self._buffers.pop(key, None)
            self._next_fetch.pop(key, None)
            self._held.discard(key)

    def clear(self) -> None:
        self._passthrough.clear()
        self._buffers.clear()
        self._held.clear()
        self._waiting_since.clear()
        self._released_unmerged.clear()
        self._next_fetch.clear()

    def held_back(self) -> set[Key]:
        """The partitions not to fetch now: those with ``hold_at`` records or more waiting, until they are down
        to half (asked after each release)."""
        for key, buffer in self._buffers.items():
            if len(buffer) >= self.hold_at:
                self._held.add(key)
            elif len(buffer) < self.hold_at // 2:
                self._held.discard(key)
        return set(self._held)

    def buffered(self, key: tuple[str, int]) -> int:
        buffer = self._buffers.get(key)
        return len(buffer) if buffer else 0

    def __len__(self) -> int:
        return len(self._passthrough) + sum(len(b) for b in self._buffers.values())

    def release(self, caught_up: Callable[[tuple[str, int]], bool], limit: int, now: float | None = None) -> list:
        """Up to ``limit`` records, in merge order."""
        now = time.monotonic() if now is None else now
        released: list = self._passthrough.release(caught_up, limit)
        for number in sorted({p for _, p in self._buffers}):
            self._release_partition(number, caught_up, limit, released, now)
        return released

    def _release_partition(
        self, number: int, caught_up: Callable[[tuple[str, int]], bool], limit: int, released: list, now: float
    ) -> None:
        """Move partition ``number``'s records that may go now to ``released``, in merge order, up to ``limit``."""
        first, second = self.topics
        a = self._buffers.get((first, number)) or deque()
        b = self._buffers.get((second, number)) or deque()
        # Nothing is fetched during a release: whether a partition is caught up is asked once.
        other_caught_up: dict[tuple[str, int], bool] = {}
        while len(released) < limit and (a or b):
            if a and b:
                take_a = (a[0].timestamp, 0, a[0].offset) <= (b[0].timestamp, 1, b[0].offset)
                self._waiting_since.pop(number, None)
            else:
                other = (second, number) if a else (first, number)
                if other not in other_caught_up:
                    other_caught_up[other] = caught_up(other)
                if other_caught_up[other]:
                    self._release_rest(number, a or b, limit, released)
                    continue
                if not self._waited_enough(number, other, len(a) + len(b), now):
                    break
                take_a = bool(a)
            if number not in self._waiting_since:
                self._released_unmerged.discard(number)
            source = a if take_a else b
            released.append(source.popleft())

    def _release_rest(self, number: int, source: deque, limit: int, released: list) -> None:
        """The other side is empty and caught up: the rest of this side goes in order."""
        self._waiting_since.pop(number, None)
        self._released_unmerged.discard(number)
        released.extend(source.popleft() for _ in range(min(limit - len(released), len(source))))

    def _waited_enough(self, number: int, other: tuple[str, int], waiting: int, now: float) -> bool:
        """Whether a partition whose ``other`` side is empty and behind releases in arrival order now: after
        ``max_wait_s`` or at ``max_buffered`` records (logged once per wait). The wait ends for everything
        buffered now, not for one record at a time."""
        since = self._waiting_since.setdefault(number, now)
        if now - since < self.max_wait_s and waiting < self.max_buffered:
            return False
        if number not in self._released_unmerged:
            self._released_unmerged.add(number)
            log.info(
                "partition %d: %s not caught up after %.1fs with %d records waiting; releasing in arrival order",
                number,
                other[0],
                now - since,
                waiting,
            )
        return True
