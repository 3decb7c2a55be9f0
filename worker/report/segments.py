"""The report's segment parts (drift per segment, ``models.segments``): the segments' alerts kept apart from
the whole stream's (whose figures, tables and episodes they would otherwise join), a table of the champion's
segments now, and their episodes."""

from __future__ import annotations

from typing import Any

from undertow.models.segment_status import SegmentStatus
from undertow.worker.report import alerts as report_alerts


def split_events(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the whole stream's alerts, the segments' alerts), each in its order."""
    whole = [e for e in events if not e["data"].get("segment")]
    return whole, [e for e in events if e["data"].get("segment")]


def name(segment: dict[str, str]) -> str:
    return ", ".join(f"{column}={value}" for column, value in segment.items())


def segment_rows(segments: list[SegmentStatus]) -> list[dict[str, Any]]:
    """One row per segment of the champion: its reference rows, windows, open data-drift episodes, labels and
    mean error, and whether its error stream is in an episode."""
    return [
        {
            "segment": name(s.segment),
            "reference_rows": s.reference_rows,
            "monitored": s.monitored,
            "windows": s.windows,
            "open": ", ".join(f"{what} ({level})" for what, level in s.open_data.items()),
            "labels": s.labels,
            "mean_error": "" if s.mean_error is None else f"{s.mean_error:.4g}",
            "concept": "in an episode" if s.in_episode else ("stable" if s.labels else ""),
            "drifting": bool(s.open_data) or s.in_episode,
        }
        for s in segments
    ]


def segment_episodes(events: list[dict[str, Any]], details: list[report_alerts.Detail]) -> list[dict[str, Any]]:
    """The started ... ended spans of each segment (``report_alerts.episodes`` per segment, so that one
    segment's alert never ends another's episode), oldest first, each with its segment."""
    by_segment: dict[str, tuple[list[dict[str, Any]], list[report_alerts.Detail]]] = {}
    for event, detail in zip(events, details):
        group = by_segment.setdefault(name(event["data"]["segment"]), ([], []))
        group[0].append(event)
        group[1].append(detail)
    spans = [
        {**span, "segment": segment}
        for segment, (found, found_details) in by_segment.items()
        for span in report_alerts.episodes(found, found_details)
    ]
    return sorted(spans, key=lambda span: span["started"])
