"""The duplicate filter of one source partition: in memory, written to SQL as one block per batch."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from sqlalchemy.orm import Session

from storage import repo


class DuplicateFilter:
    """Which event keys a source partition delivered within the duplicate horizon.

    A key is ``kind<TAB>model_id<TAB>event_id`` (ids have no control
    characters). Memory holds a 64-bit fingerprint per key (about 70 bytes
    each); a new event is taken for a duplicate only if its fingerprint
    matches a remembered one, which for two different keys happens with
    probability 2^-64 per pair (under 1e-13 per event at a horizon of a
    million).

    The changelog in SQL is one ``seen_blocks`` row per batch: the keys the
    batch took first, with the partition's offsets they came from. The filter
    is restored from those rows when a partition is first seen after a
    start, a rebalance or a failed batch. A block leaves memory and SQL once
    all its offsets are ``horizon`` records behind the partition's next
    offset, so the horizon holds at least ``horizon`` records and at most one
    batch more.
    """

    def __init__(self, topic: str, partition: int, blocks: Iterable[tuple[int, int, str]] = ()):
        self.topic, self.partition = topic, partition
        self._blocks: deque[tuple[int, list[int]]] = deque()  # (next offset, fingerprints), oldest first
        self._seen: set[int] = set()
        for _, next_offset, keys in blocks:
            fingerprints = [hash(key) for key in keys.split("\n")] if keys else []
            self._blocks.append((next_offset, fingerprints))
            self._seen.update(fingerprints)

    @classmethod
    def restore(cls, session: Session, topic: str, partition: int) -> "DuplicateFilter":
        return cls(topic, partition, repo.seen_blocks(session, topic, partition))

    def __len__(self) -> int:
        return len(self._seen)

    def take(self, session: Session, keys: list[str], first_offset: int, next_offset: int) -> list[bool]:
        """Whether each key is a first occurrence (in order, so a repeat within ``keys`` is a duplicate);
        the first occurrences are remembered and written as one block."""
        seen, fresh, first = self._seen, [], []
        for key in keys:
            fingerprint = hash(key)
            if fingerprint in seen:
                first.append(False)
            else:
                seen.add(fingerprint)
                fresh.append(key)
                first.append(True)
        if fresh:
            self._blocks.append((next_offset, [hash(key) for key in fresh]))
            repo.add_seen_block(session, self.topic, self.partition, first_offset, next_offset, "\n".join(fresh))
        return first

    def expire(self, session: Session, below_offset: int) -> None:
        """Forget the blocks whose every offset is below ``below_offset``."""
        if self._blocks and self._blocks[0][0] <= below_offset:
            while self._blocks and self._blocks[0][0] <= below_offset:
                self._seen.difference_update(self._blocks.popleft()[1])
            repo.expire_seen_blocks(session, self.topic, self.partition, below_offset)
