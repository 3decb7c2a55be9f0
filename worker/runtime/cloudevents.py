"""Output events: CloudEvents 1.0, structured mode, with deterministic ids.

The id is a hash of what the event is about (model, version, detector,
feature, window), so a re-published event is a duplicate that subscribers
drop by ``(source, id)``.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

CONTENT_TYPE = "application/cloudevents+json"
MONITOR_SOURCE = "/undertow/monitor"


def event_id(*parts: object) -> str:
    """
    >>> event_id("housing", "3", "data", "MedInc", 17) == event_id("housing", "3", "data", "MedInc", 17)
    True
    """
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(rfc3339_time: str) -> float:
    return datetime.fromisoformat(rfc3339_time).timestamp()


def cloudevent(*, id: str, type: str, subject: str, time: float, data: dict,
               source: str = MONITOR_SOURCE) -> dict:
    return {"specversion": "1.0", "id": id, "source": source, "type": type, "subject": subject,
            "time": rfc3339(time), "datacontenttype": "application/json", "data": data}


def encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


HEADERS = [("content-type", CONTENT_TYPE.encode())]
