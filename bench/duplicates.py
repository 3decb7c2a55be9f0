"""The duplicate filter once its horizon is full: the monitor's filter against the single sorted array it
replaced, in the same run.

One source partition's keys (``prediction<TAB>m<TAB>e<N>``, 1 % of them repeats of a key within the
horizon) go through ``take`` and ``expire`` as the ingest stage calls them, in blocks of ``--batch`` keys
(a partition's share of a 5,000-record batch over 3 partitions), on a new SQLite file each, one
transaction per block. The horizon (``--horizon``, the default 1,000,000 records) is filled first; then
``--timed`` keys are timed. Both filters write the same ``seen_blocks`` rows, so the SQL is in both
numbers; the difference is the in-memory structure. Printed: microseconds per key of each, their ratio,
and the entries each holds in memory against its live keys. Rounds alternate the two (``--rounds``).

    .venv/bin/python bench/duplicates.py [--horizon N] [--batch B] [--timed N] [--rounds R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from undertow.storage import db, repo
from undertow.worker.monitor.duplicates import DuplicateFilter, _fingerprints


class SingleSortedArray:
    """The filter before runs (the baseline): one sorted array, into which each block's keys are inserted
    and from which an expired block's are deleted, both copying it whole."""

    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition
        self._blocks: deque[tuple[int, np.ndarray]] = deque()
        self._sorted = np.empty(0, dtype=np.int64)

    def take(self, session, keys: list[str], first_offset: int, next_offset: int) -> list[bool]:
        fingerprints = _fingerprints(keys)
        where = np.searchsorted(self._sorted, fingerprints)
        known = (
            self._sorted[np.minimum(where, self._sorted.size - 1)] == fingerprints
            if self._sorted.size
            else np.zeros(len(keys), dtype=bool)
        )
        first_in_batch = np.zeros(len(keys), dtype=bool)
        first_in_batch[np.unique(fingerprints, return_index=True)[1]] = True
        first = first_in_batch & ~known
        if first.any():
            self._blocks.append((next_offset, fingerprints[first]))
            new = np.sort(fingerprints[first])
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
            joined = "\n".join(key for key, is_new in zip(keys, first) if is_new)
            repo.add_seen_block(session, self.topic, self.partition, first_offset, next_offset, joined)
        return first.tolist()

    def expire(self, session, below_offset: int) -> None:
        if self._blocks and self._blocks[0][0] <= below_offset:
            gone = []
            while self._blocks and self._blocks[0][0] <= below_offset:
                gone.append(self._blocks.popleft()[1])
            self._sorted = np.delete(self._sorted, np.searchsorted(self._sorted, np.concatenate(gone)))
            repo.expire_seen_blocks(session, self.topic, self.partition, below_offset)

    def held(self) -> int:
        return self._sorted.size


def held(duplicate_filter) -> int:
    if isinstance(duplicate_filter, SingleSortedArray):
        return duplicate_filter.held()
    return sum(run.fingerprints.size for run in duplicate_filter._runs)


def run(make, horizon: int, batch: int, timed: int, seed: int) -> tuple[float, int, int]:
    """Microseconds per timed key; entries held and live keys at the end."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{tmp}/duplicates.db")
        db.migrate(engine)
        sessions = db.make_session_factory(engine)
        duplicate_filter, offset, recent = make(), 0, deque(maxlen=horizon // 2)
        started = None
        while offset < horizon + timed:
            if started is None and offset >= horizon:
                started = time.perf_counter()
            keys = []
            for _ in range(batch):
                key = rng.choice(recent) if recent and rng.random() < 0.01 else f"prediction\tm\te{offset + len(keys)}"
                keys.append(key)
            recent.extend(keys)
            with sessions.begin() as session:
                duplicate_filter.take(session, keys, offset, offset + batch)
                duplicate_filter.expire(session, offset + batch - horizon)
            offset += batch
        elapsed = time.perf_counter() - (started or time.perf_counter())
        engine.dispose()
    return elapsed / timed * 1e6, held(duplicate_filter), len(duplicate_filter)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizon", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_667)
    parser.add_argument("--timed", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    SingleSortedArray.__len__ = lambda self: self._sorted.size  # type: ignore[attr-defined]
    makes = {"single sorted array (before)": lambda: SingleSortedArray("t", 0), "runs": lambda: DuplicateFilter("t", 0)}
    results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in makes}
    for round_ in range(args.rounds):
        for name, make in makes.items():
            results[name].append(run(make, args.horizon, args.batch, args.timed, seed=round_))
            print(f"round {round_ + 1}, {name}: {results[name][-1][0]:.2f} us/key", flush=True)
    print(f"\nhorizon {args.horizon:,} keys, blocks of {args.batch:,}, {args.timed:,} keys timed, {args.rounds} rounds")
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(r[0] for r in rows)
        entries, live = rows[-1][1], rows[-1][2]
        print(f"{name:<30}{medians[name]:>8.2f} us/key   held {entries:>10,} entries for {live:>10,} live keys")
    before, after = medians["single sorted array (before)"], medians["runs"]
    print(f"runs / single sorted array: {after / before:.2f} of the time per key ({before - after:.2f} us/key saved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
