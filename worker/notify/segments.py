"""The segment an alert is about (drift per segment: ``models register --segment-by``), as the sinks name it."""

from __future__ import annotations

from typing import Any


def segment_of(event: Any) -> str | None:
    """ "region=west" (columns in the segmentation's order), or None for the whole stream or a test event.

    >>> from types import SimpleNamespace as N
    >>> segment_of(N(data=N(segment={"region": "west", "channel": "web"}))), segment_of(N(data=N(segment=None)))
    ('region=west,channel=web', None)
    """
    segment = None if isinstance(event, dict) else getattr(event.data, "segment", None)
    return None if not segment else ",".join(f"{column}={value}" for column, value in segment.items())
