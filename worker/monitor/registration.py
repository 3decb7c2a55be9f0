"""Events of model ids that nobody registered: counted, logged, and not kept without end.

A producer with a typo in its model id, or one that invents ids, must not
fill the database: before this stage every such event waited in the join
buffer forever (its expiry only moves with that model's own newer events).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.storage import repo
from undertow.storage.tables import OTHER_UNREGISTERED
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import PredictionEvent

log = logging.getLogger(__name__)

# Ids remembered for the warning's rate limit; beyond it the oldest are forgotten (an id then warns again).
MAX_WARNED_IDS = 100_000
# Batches between sweeps for waiting events of unregistered models, at most (and at least every minute).
SWEEP_EVERY_SECONDS = 60.0
FORGOTTEN = "forgotten_models"  # Batch.shared key: models whose join state this stage deleted


@dataclass(frozen=True)
class UnregisteredPolicy:
    """What to do with events of unregistered model ids (the monitor's settings of that name)."""

    wait_for_registration: bool = False  # keep them for the join until the model is registered
    max_pending: int = 10_000  # ... at most this many waiting, over all unregistered ids
    ttl_seconds: float = 3600.0  # ... each model's at most this long after its last event (wall clock)
    tracked_ids: int = 100  # ids counted one by one; the rest share the "(other)" row
    warn_interval_seconds: float = 3600.0


class RegistrationStage:
    """Takes the events of unregistered model ids out of the batch (or keeps them within a global cap).

    Steps, per batch:

    1. Find the batch's model ids that are not known to be registered (a
       registration is never undone, so registered ids are cached; the
       others are looked up again in every batch that has them).
    2. Count their events per id in ``unregistered_models`` (bounded: the
       ``tracked_ids`` most frequent ids, the rest folded into "(other)"),
       and warn once per id per ``warn_interval_seconds``.
    3. Drop them from the batch, unless ``wait_for_registration``: then keep
       them while the unregistered models' waiting events stay under
       ``max_pending`` in all; the rest are dropped.
    4. About once a minute, delete what unregistered models left waiting
       after ``ttl_seconds`` of wall-clock silence, and tell the concept stage
       (``Batch.shared["forgotten_models"]``) to drop its copy.
    """

    def __init__(self, policy: UnregisteredPolicy, clock: Callable[[], float] = time.time):
        self.policy = policy
        self.clock = clock
        self._registered: set[str] = set()
        self._rows: dict[str, dict] | None = None  # unregistered_models, as in the database
        self._warned: dict[str, float] = {}
        self._next_sweep = 0.0

    def reset(self) -> None:
        """Reload the counts from the database (a failed batch may have changed them in memory)."""
        self._rows = None
        self._next_sweep = 0.0

    def apply(self, session: Session, batch: Batch) -> None:
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(session, batch, now)
        ids = {event.model_id for _, event in batch.events}
        unknown = ids - self._registered
        if not unknown:
            return
        found = registry.registered(session, sorted(unknown))
        if found:
            self._registered |= found
            self._forget_counts(session, found)
        unregistered = unknown - self._registered
        if unregistered:
            tally = self._take(session, batch, unregistered)
            self._count(session, tally, now)
            self._warn(tally, now)

    def _take(self, session: Session, batch: Batch, unregistered: set[str]) -> dict[str, list[int]]:
        """Remove the unregistered ids' events beyond what may wait; per id [predictions, labels, kept]."""
        budget = 0
        if self.policy.wait_for_registration:
            budget = max(0, self.policy.max_pending - repo.waiting_unregistered(session))
        tally: dict[str, list[int]] = {}
        kept = []
        for item in batch.events:
            model_id = item[1].model_id
            if model_id not in unregistered:
                kept.append(item)
                continue
            counts = tally.get(model_id)
            if counts is None:
                counts = tally[model_id] = [0, 0, 0]
            counts[0 if item[1].__class__ is PredictionEvent else 1] += 1
            if budget > 0:
                budget -= 1
                counts[2] += 1
                kept.append(item)
        batch.events = kept
        return tally

    def _load(self, session: Session) -> dict[str, dict]:
        if self._rows is None:
            self._rows = {
                row.model_id: {name: getattr(row, name) for name in repo.UNREGISTERED_COLUMNS}
                for row in repo.unregistered_models(session)
            }
        return self._rows

    def _count(self, session: Session, tally: dict[str, list[int]], now: float) -> None:
        rows = self._load(session)
        new_ids = set()
        for model_id, (predictions, labels, kept) in tally.items():
            row = rows.get(model_id)
            if row is None:
                new_ids.add(model_id)
                row = rows[model_id] = _new_row(model_id, now)
            row["predictions"] += predictions
            row["labels"] += labels
            row["kept"] += kept
            row["last_seen_at"] = now
        removed = self._fold(rows, new_ids)
        changed = [rows[model_id] for model_id in tally if model_id in rows]
        if removed:
            changed.append(rows[OTHER_UNREGISTERED])
        repo.save_unregistered(session, changed, new_ids, removed - new_ids)

    def _fold(self, rows: dict[str, dict], new_ids: set[str]) -> set[str]:
        """Keep the ``tracked_ids`` ids with the most events (the newest first among equals); fold the
        rest into the "(other)" row. Returns the ids folded."""
        tracked = [row for model_id, row in rows.items() if model_id != OTHER_UNREGISTERED]
        if len(tracked) <= self.policy.tracked_ids:
            return set()
        tracked.sort(key=lambda row: (row["predictions"] + row["labels"], row["last_seen_at"]), reverse=True)
        other = rows.get(OTHER_UNREGISTERED)
        if other is None:
            other = rows[OTHER_UNREGISTERED] = _new_row(OTHER_UNREGISTERED, tracked[-1]["first_seen_at"])
            other["ids"] = 0
            new_ids.add(OTHER_UNREGISTERED)
        folded = set()
        for row in tracked[self.policy.tracked_ids :]:
            for name in ("predictions", "labels", "ids", "kept", "expired"):
                other[name] += row[name]
            other["first_seen_at"] = min(other["first_seen_at"], row["first_seen_at"])
            other["last_seen_at"] = max(other["last_seen_at"], row["last_seen_at"])
            folded.add(row["model_id"])
            del rows[row["model_id"]]
        return folded

    def _forget_counts(self, session: Session, registered: set[str]) -> None:
        """Ids registered since their events were counted: their rows go (``status`` lists what is still wrong)."""
        rows = self._load(session)
        for model_id in registered.intersection(rows):
            row = rows.pop(model_id)
            log.info(
                "model id %r is registered now; %d predictions and %d labels came before its registration",
                model_id,
                row["predictions"],
                row["labels"],
            )
            repo.save_unregistered(session, [], set(), [model_id])

    def _warn(self, tally: dict[str, list[int]], now: float) -> None:
        interval = self.policy.warn_interval_seconds
        for model_id, (predictions, labels, kept) in tally.items():
            last = self._warned.get(model_id)
            if last is not None and now - last < interval:
                continue
            self._warned[model_id] = now
            fate = "not kept"
            if self.policy.wait_for_registration:
                dropped = predictions + labels - kept
                fate = f"{kept} kept for the join until it is registered" + (
                    f", {dropped} dropped (UNDERTOW_UNREGISTERED_MAX_PENDING={self.policy.max_pending} events "
                    "of unregistered ids already wait)"
                    if dropped
                    else ""
                )
            log.warning(
                "model id %r is not registered: %d predictions and %d labels in this batch, %s "
                "(register the model, or correct the producer's model_id; `undertow status` counts them; "
                "next warning for this id in %g s at the earliest)",
                model_id,
                predictions,
                labels,
                fate,
                interval,
            )
        if len(self._warned) > MAX_WARNED_IDS:
            self._warned = {k: t for k, t in self._warned.items() if now - t < interval}
            if len(self._warned) > MAX_WARNED_IDS:
                self._warned.clear()

    def _sweep(self, session: Session, batch: Batch, now: float) -> None:
        """Delete the join state of unregistered models silent for ``ttl_seconds`` (wall clock)."""
        self._next_sweep = now + min(SWEEP_EVERY_SECONDS, self.policy.ttl_seconds / 10)
        stale = repo.stale_unregistered_joins(session, now - self.policy.ttl_seconds)
        if not stale:
            return
        rows = self._load(session)
        changed: dict[str, dict] = {}
        for model_id, waiting in stale:
            repo.forget_model(session, model_id)
            row = rows.get(model_id) or rows.get(OTHER_UNREGISTERED)
            if row is not None and waiting:
                row["expired"] += waiting
                changed[row["model_id"]] = row
        repo.save_unregistered(session, list(changed.values()), set(), ())
        expired = sum(waiting for _, waiting in stale)
        log.info(
            "deleted the join state of %d unregistered model ids silent for %g s (%d waiting events)",
            len(stale),
            self.policy.ttl_seconds,
            expired,
        )
        batch.shared[FORGOTTEN] = {model_id for model_id, _ in stale}


def _new_row(model_id: str, now: float) -> dict:
    return {
        "model_id": model_id,
        "predictions": 0,
        "labels": 0,
        "ids": 1,
        "kept": 0,
        "expired": 0,
        "first_seen_at": now,
        "last_seen_at": now,
    }
