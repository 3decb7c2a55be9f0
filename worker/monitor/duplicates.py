"""The duplicate filter of one source partition: in memory, written to SQL as one block per batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from sqlalchemy.orm import Session

from undertow.storage import repo


class DuplicateFilter:
    """Which event keys a source partition delivered within the duplicate horizon.

    A key is ``kind<TAB>model_id<TAB>event_id`` (ids have no control
    characters). Memory holds a 64-bit fingerprint per key with the next
    offset of the block that took it, in a few sorted runs (membership by
    binary search in each). A new event is taken for a duplicate only if its
    fingerprint matches a remembered one, which for two different keys
    happens with probability 2^-64 per pair (under 1e-13 per event at a
    horizon of a million).

    The changelog in SQL is one ``seen_blocks`` row per batch: the keys the
    batch took first, with the partition's offsets they came from. The filter
    is restored from those rows when a partition is first seen after a
    start, a rebalance or a failed batch. A block leaves SQL, and stops
    counting in memory, once all its offsets are ``horizon`` records behind
    the partition's next offset, so the horizon holds at least ``horizon``
    records and at most one batch more.

    Why runs and not one sorted array: inserting a batch's keys into, and
    deleting an expired batch's from, one array of a million copied it twice
    per batch (4.3 ms a partition and batch, about 2.5 us a record once the
    horizon is full). A batch's keys make a new run; a run is merged into the
    one before it once it is at least half that size (the logarithmic method:
    about log2(horizon / batch) runs, each key copied that many times in
    all). Expired keys stay in their run until it is merged or wholly
    expired, and are not counted: a key is known only while its block's next
    offset is above the expiry line. Once they are half of what is held, the
    runs are merged into one without them: memory stays within twice the
    live keys (16 bytes each: fingerprint and offset), plus one batch.
    """

    def __init__(self, topic: str, partition: int, blocks: Iterable[tuple[int, int, str]] = ()):
        self.topic, self.partition = topic, partition
        self._blocks: deque[tuple[int, int]] = deque()  # (next offset, keys taken), oldest first
        self._live = 0  # keys of the blocks still in the horizon
        self._expired_below = -1  # keys of blocks whose next offset is at or below this are forgotten
        restored = []
        for _, next_offset, keys in blocks:
            fingerprints = _fingerprints(keys.split("\n") if keys else [])
            self._blocks.append((next_offset, fingerprints.size))
            self._live += fingerprints.size
            restored.append(_Run(fingerprints, np.full(fingerprints.size, next_offset, dtype=np.int64), next_offset))
        self._runs: list[_Run] = self._merged(*restored) if restored else []  # oldest first; restored as one

    @classmethod
    def restore(cls, session: Session, topic: str, partition: int) -> DuplicateFilter:
        return cls(topic, partition, repo.seen_blocks(session, topic, partition))

    def __len__(self) -> int:
        return self._live

    def take(self, session: Session, keys: list[str], first_offset: int, next_offset: int) -> list[bool]:
        """Whether each key is a first occurrence (in order, so a repeat within ``keys`` is a duplicate);
        the first occurrences are remembered and written as one block."""
        fingerprints = _fingerprints(keys)
        known = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            where = np.minimum(np.searchsorted(run.fingerprints, fingerprints), run.fingerprints.size - 1)
            known |= (run.fingerprints[where] == fingerprints) & (run.offsets[where] > self._expired_below)
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
            while self._blocks and self._blocks[0][0] <= below_offset:
                self._live -= self._blocks.popleft()[1]
            self._expired_below = max(self._expired_below, below_offset)
            # Runs hold blocks in order: the oldest ones may now be wholly expired.
            while self._runs and self._runs[0].newest <= self._expired_below:
                self._runs.pop(0)
            if sum(run.fingerprints.size for run in self._runs) > 2 * self._live:
                self._runs = self._merged(*self._runs)  # expired keys are half of what is held: without them
            repo.expire_seen_blocks(session, self.topic, self.partition, below_offset)

    def _remember(self, next_offset: int, fingerprints: np.ndarray) -> None:
        self._blocks.append((next_offset, fingerprints.size))
        self._live += fingerprints.size
        run = np.sort(fingerprints)
        self._runs.append(_Run(run, np.full(run.size, next_offset, dtype=np.int64), next_offset))
        while len(self._runs) > 1 and 2 * self._runs[-1].fingerprints.size >= self._runs[-2].fingerprints.size:
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.extend(self._merged(older, newer))

    def _merged(self, *runs: _Run) -> list[_Run]:
        """Consecutive runs (sorted or not) as one, without the keys of expired blocks (a live key is in one
        run only: a key seen again after it expired is remembered anew, and its expired entry is dropped here
        at the latest); none if no key is left. A stable sort: numpy's timsort merges sorted runs."""
        fingerprints = np.concatenate([run.fingerprints for run in runs])
        offsets = np.concatenate([run.offsets for run in runs])
        live = offsets > self._expired_below
        if not live.all():
            fingerprints, offsets = fingerprints[live], offsets[live]
        if not fingerprints.size:
            return []
        order = np.argsort(fingerprints, kind="stable")
        return [_Run(fingerprints[order], offsets[order], runs[-1].newest)]


class _Run(NamedTuple):
    """Sorted fingerprints, the next offset of the block each came from, and the newest block's."""

    fingerprints: np.ndarray
    offsets: np.ndarray
    newest: int


def _fingerprints(keys: list[str]) -> np.ndarray:
    # Python's string hash: 64-bit, seeded per process, which is fine for a filter rebuilt at every start.
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
