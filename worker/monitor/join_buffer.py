"""A model's join buffer: held in memory, written to SQL as a changelog once per batch."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from undertow.storage import repo
from undertow.worker.runtime.events import LabelEvent, PredictionEvent

KINDS = ("prediction", "label")


@dataclass(slots=True)
class Waiting:
    """One event waiting for its other half."""

    seq: int  # its row in ``join_pending``: arrival order per model
    version: str | None
    ts: float
    fields: Any  # the event's fields as a dict (its __dict__, or its JSON decoded); None once in SQL only
    # Their JSON: written to ``join_pending`` by ``flush``, then kept as a cache until the owner drops it
    # (None: taken before it was written, or only in SQL).
    payload: str | None


class JoinBuffer:
    """The predictions and labels of one model that wait for their other half.

    Kafka Streams' and Quix's state stores, in small: the buffer is restored
    from ``join_pending`` when the model is first seen after a start, a
    rebalance or a failed batch. Memory holds the index (event ids, versions
    and times); an event's payload is in SQL once written, and is read back
    for the events that join unless memory still has it. Events written by the last flush keep
    their fields in memory until the owner calls ``forget_recent`` (after
    the next batch), so a partner that arrives one batch later, the common
    case, joins without a read; ``flush`` returns them, and their JSON stays
    in memory (a cache of the rows) until the owner drops it, so that older
    partners are decoded rather than read. A batch works in memory, and ``flush``
    writes what changed, in the batch's transaction: one DELETE for the rows
    that left (joined, expired, evicted) and one INSERT for the rows that
    arrived and still wait, appended in arrival order (``seq``). An event
    that arrives and leaves within one batch never touches SQL. If the
    transaction fails, memory is ahead of SQL: the owner drops the buffer and
    it is restored.

    Expiry and eviction go oldest first by (event time, event id), from a
    heap per kind whose stale entries (events that joined) are skipped and
    compacted away.
    """

    def __init__(
        self, model_id: str, rows: Iterable[tuple[int, str, str, str | None, float]] = (), stats: dict | None = None
    ):
        self.model_id = model_id
        # The model's join_stats row, kept with the buffer it describes and written with it.
        self.stats = stats if stats is not None else {}
        self._waiting: dict[str, dict[str, Waiting]] = {kind: {} for kind in KINDS}
        self._heaps: dict[str, list[tuple[float, str]]] = {kind: [] for kind in KINDS}
        # Arrivals since the last flush, in arrival (= seq) order; those taken meanwhile have no payload.
        self._added: list[tuple[str, str, Waiting]] = []
        self._removed: list[int] = []  # seqs in SQL, to delete
        self._recent: list[Waiting] = []  # written by the last flush, their fields still in memory
        self._next_seq = 0
        self._unwritten_from = 0  # the seqs from here on arrived since the last flush: not in SQL
        for seq, kind, event_id, version, ts in rows:
            self._waiting[kind][event_id] = Waiting(seq, version, ts, None, None)
            self._heaps[kind].append((ts, event_id))
            self._next_seq = self._unwritten_from = max(self._next_seq, seq + 1)
        for heap in self._heaps.values():
            heapq.heapify(heap)

    @classmethod
    def restore(cls, session: Session, model_id: str) -> JoinBuffer:
        return cls(model_id, repo.pending_index(session, model_id), repo.load_join_stats(session, model_id))

    def pending(self, kind: str) -> int:
        return len(self._waiting[kind])

    def add(self, kind: str, event_id: str, version: str | None, ts: float, fields: dict, payload: str) -> None:
        waiting = self._waiting[kind][event_id] = Waiting(self._next_seq, version, ts, fields, payload)
        self._next_seq += 1
        self._added.append((kind, event_id, waiting))
        heapq.heappush(self._heaps[kind], (ts, event_id))

    def match(self, events: list, champion: str | None, watermark: float | None, ttl: float) -> tuple:
        """Each event of a batch, as (position, event), joined to its waiting partner or left waiting: (the
        matches as (event id, prediction, label), the partners taken, expired partners per kind, the new
        watermark). A partner more than ``ttl`` behind the watermark is expired instead: decided per event,
        so batch boundaries cannot change a join.

        One loop over the batch with the buffer's dicts at hand: as calls of ``waits``, ``take`` and ``add``
        per event it had cost a third more."""
        matches: list[tuple[str, Waiting, Waiting]] = []
        taken: list[Waiting] = []
        expired = {"prediction": 0, "label": 0}
        predictions, labels = self._waiting["prediction"], self._waiting["label"]
        removed, unwritten_from = self._removed, self._unwritten_from
        for position, event in events:
            epoch = event.epoch
            watermark = epoch if watermark is None or epoch > watermark else watermark
            eid = event.event_id
            if isinstance(event, PredictionEvent):
                kind, other, version = "prediction", "label", event.model_version or champion
                mine, theirs = predictions, labels
            elif isinstance(event, LabelEvent):
                kind, other, version, mine, theirs = "label", "prediction", None, labels, predictions
            else:
                continue
            if eid in mine:
                continue  # a retry beyond the duplicate horizon, still waiting
            partner = theirs.pop(eid, None)  # ``take``, inline
            if partner is not None:
                if partner.seq >= unwritten_from:  # arrived since the last flush: never to be written
                    partner.payload = None
                else:
                    removed.append(partner.seq)
                if partner.ts < watermark - ttl:
                    partner = None
                    expired[other] += 1
            if partner is None:
                payload = position.value.decode() if position.value else event.model_dump_json()
                self.add(kind, eid, version, epoch, event.__dict__, payload)
            else:
                taken.append(partner)
                this = Waiting(-1, version, epoch, event.__dict__, None)  # joined on arrival: never stored
                matches.append((eid, this, partner) if kind == "prediction" else (eid, partner, this))
        return matches, taken, expired, watermark

    def take(self, kind: str, event_id: str) -> Waiting | None:
        """Remove a waiting event and return it (None if it does not wait)."""
        waiting = self._waiting[kind].pop(event_id, None)
        if waiting is not None:
            if waiting.seq >= self._unwritten_from:  # arrived since the last flush: never to be written
                waiting.payload = None
            else:
                self._removed.append(waiting.seq)
        return waiting

    def expire(self, before_ts: float) -> dict[str, int]:
        """Remove the events older than ``before_ts``; how many of each kind."""
        counts = {}
        for kind in KINDS:
            heap, n = self._heaps[kind], 0
            while heap and heap[0][0] < before_ts:
                n += self._pop_oldest(kind) is not None
            counts[kind] = n
        return counts

    def evict_oldest(self, kind: str, count: int) -> int:
        """Remove the ``count`` oldest events of a kind; how many there were."""
        n = 0
        while n < count and self._heaps[kind]:
            n += self._pop_oldest(kind) is not None
        return n

    def _pop_oldest(self, kind: str) -> Waiting | None:
        ts, event_id = heapq.heappop(self._heaps[kind])
        waiting = self._waiting[kind].get(event_id)
        if waiting is None or waiting.ts != ts:
            return None  # joined (or re-added later) since it was pushed
        return self.take(kind, event_id)

    def forget_recent(self) -> None:
        """Keep only the index of the events the last flush wrote: their fields are in SQL."""
        for w in self._recent:
            w.fields = None
        self._recent = []

    def load_fields(self, session: Session, taken: list[Waiting]) -> None:
        """Decode or read the fields of taken events that are no longer in memory, before ``flush`` deletes
        their rows."""
        missing = {}
        for w in taken:
            if w.fields is None:
                if w.payload is None:
                    missing[w.seq] = w
                else:  # the cached JSON: the same text as the row's
                    w.fields = json.loads(w.payload)
        if missing:
            for seq, payload in repo.pending_payloads(session, self.model_id, list(missing)).items():
                missing[seq].fields = json.loads(payload)

    def flush(self, session: Session) -> list[Waiting]:
        """Write the changes since the last flush (in the caller's transaction); the events written."""
        repo.remove_pending(session, self.model_id, self._removed)
        self._removed = []
        self.forget_recent()
        model_id = self.model_id
        written = [added for added in self._added if added[2].payload is not None]  # still waiting
        rows = [(model_id, w.seq, kind, event_id, w.version, w.ts, w.payload) for kind, event_id, w in written]
        self._recent = [w for _, _, w in written]
        self._added = []
        self._unwritten_from = self._next_seq
        for kind in KINDS:
            waiting, heap = self._waiting[kind], self._heaps[kind]
            if len(heap) > 2 * len(waiting) + 1000:  # mostly joined events: rebuild from what waits
                self._heaps[kind] = [(w.ts, event_id) for event_id, w in waiting.items()]
                heapq.heapify(self._heaps[kind])
        repo.add_pending(session, rows)
        return self._recent
