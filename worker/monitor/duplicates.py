"""The duplicate filter of one source partition: in memory, written to SQL as one block per batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
from sqlalchemy.orm import Session

from undertow.storage import repo


class DuplicateFilter:
    """Which event keys a source partition delivered within the duplicate horizon.

    A key is ``kind<TAB>model_id<TAB>event_id`` (ids have no control
    characters). Memory holds a 64-bit fingerprint per key, in one sorted
    array (membership by binary search) and one array per block (for
    expiry): 16 bytes a key. A new event is taken for a duplicate only if its
    fingerprint matches a remembered one, which for two different keys
    happens with probability 2^-64 per pair (under 1e-13 per event at a
    horizon of a million).

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
        # (next offset, fingerprints), oldest first; the sorted array is built once, not block by block
        self._blocks: deque[tuple[int, np.ndarray]] = deque(
            (next_offset, _fingerprints(keys.split("\n") if keys else [])) for _, next_offset, keys in blocks
        )
        self._sorted = np.sort(np.concatenate([f for _, f in self._blocks] or [np.empty(0, dtype=np.int64)]))

    @classmethod
    def restore(cls, session: Session, topic: str, partition: int) -> DuplicateFilter:
        return cls(topic, partition, repo.seen_blocks(session, topic, partition))

    def __len__(self) -> int:
        return self._sorted.size

    def take(self, session: Session, keys: list[str], first_offset: int, next_offset: int) -> list[bool]:
        """Whether each key is a first occurrence (in order, so a repeat within ``keys`` is a duplicate);
        the first occurrences are remembered and written as one block."""
        fingerprints = _fingerprints(keys)
        where = np.searchsorted(self._sorted, fingerprints)
        known = (
            self._sorted[np.minimum(where, self._sorted.size - 1)] == fingerprints
            if self._sorted.size
            else (np.zeros(len(keys), dtype=bool))
        )
        first_in_batch = np.zeros(len(keys), dtype=bool)
        first_in_batch[np.unique(fingerprints, return_index=True)[1]] = True
        first = first_in_batch & ~known
        if first.any():
            self._remember(next_offset, fingerprints[first])
            repo.add_seen_block(
                session,
                self.topic,
                self.partition,
                first_offset,
                next_offset,
                "\n".join(key for key, new in zip(keys, first) if new),
            )
        return first.tolist()

    def expire(self, session: Session, below_offset: int) -> None:
        """Forget the blocks whose every offset is below ``below_offset``."""
        if self._blocks and self._blocks[0][0] <= below_offset:
            gone = []
            while self._blocks and self._blocks[0][0] <= below_offset:
                gone.append(self._blocks.popleft()[1])
            self._sorted = np.delete(self._sorted, np.searchsorted(self._sorted, np.concatenate(gone)))
            repo.expire_seen_blocks(session, self.topic, self.partition, below_offset)

    def _remember(self, next_offset: int, fingerprints: np.ndarray) -> None:
        self._blocks.append((next_offset, fingerprints))
        new = np.sort(fingerprints)
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)


def _fingerprints(keys: list[str]) -> np.ndarray:
    # Python's string hash: 64-bit, seeded per process, which is fine for a filter rebuilt at every start.
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
