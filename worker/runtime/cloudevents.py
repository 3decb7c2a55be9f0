"""CloudEvents helpers: deterministic ids and RFC 3339 times.

The id is a hash of what the event is about (model, version, detector,
feature, window), so a re-published event is a duplicate that subscribers
drop by ``(source, id)``. The events themselves are models in
:mod:`worker.runtime.output_events`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def event_id(*parts: object) -> str:
    """
    >>> event_id("housing", "3", "data", "MedInc", 17) == event_id("housing", "3", "data", "MedInc", 17)
    True
    """
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(rfc3339_time: str) -> float:
    return datetime.fromisoformat(rfc3339_time).timestamp()
