"""The error stream per segment: each joined pair of a segmented version (``models.segments``) also feeds
its segment's ``ErrorStreamMonitor``, whose baseline is the segment's own reference errors and whose state
is a ``segment_concept_state`` row, written in the batch's transaction like the version's.

A model that got worse for one segment only moves the whole stream's error by that segment's share; the
segment's own stream sees the whole change. Its alerts name the segment and do not ask for retraining: the
whole stream's alerts do (through the retrain policy), and a retrain on every segment's alarm would multiply
the requests by the segments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from undertow.models.drift.config import DriftConfig
from undertow.models.segments import Segment, Segmentation
from undertow.storage import repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.concept.explain import explain_alert
from undertow.worker.monitor.concept.monitor import ErrorStreamMonitor
from undertow.worker.monitor.segments import segmented_version


@dataclass
class VersionStreams:
    """One segmented version: its segments and the monitors of those seen so far (at most ``top + 1``)."""

    segmentation: Segmentation
    config: DriftConfig
    lookup: dict[tuple[str, ...], str]
    segments: dict[str, Segment]
    monitors: dict[str, ErrorStreamMonitor] = field(default_factory=dict)


class SegmentErrorStreams:
    """The segments' error streams of every segmented version, loaded from the database on first use."""

    def __init__(self, alerts_topic: str):
        self.alerts_topic = alerts_topic
        self._versions: dict[tuple[str, str], VersionStreams | None] = {}
        self._touched: set[tuple[str, str, str]] = set()

    def reset(self) -> None:
        self._versions.clear()
        self._touched.clear()

    def update(self, session: Session, key: tuple[str, str], pair) -> None:
        """Feed one joined pair (``concept.stage.Pair``) to its segment's stream; record what it raises."""
        version = self._version(session, key)
        if version is None:
            return
        segment_key = version.segmentation.key_of(json.loads(pair.features), version.lookup)
        monitor = self._monitor(session, key, version, segment_key)
        if monitor is None:
            return
        self._touched.add((*key, segment_key))
        alerts = monitor.update_pair(pair)
        if not alerts:
            return

        def in_segment(features: dict) -> bool:
            return version.segmentation.key_of(features, version.lookup) == segment_key

        for alert in alerts:
            record_alert(session, self.alerts_topic, explain_alert(session, alert, pair.seq, within=in_segment))

    def save(self, session: Session) -> None:
        """The states of the segments fed in this batch."""
        for model_id, version, segment_key in sorted(self._touched):
            streams = self._versions[(model_id, version)]
            assert streams is not None
            monitor = streams.monitors[segment_key]
            repo.save_segment_concept_state(
                session, (model_id, version, segment_key), monitor.state_values(), exists=monitor.stored
            )
            monitor.stored = True
        self._touched.clear()

    def _version(self, session: Session, key: tuple[str, str]) -> VersionStreams | None:
        if key not in self._versions:
            found = segmented_version(session, key)
            self._versions[key] = (
                None
                if found is None
                else VersionStreams(
                    found.segmentation,
                    found.config,
                    found.segmentation.lookup(),
                    {s.key: s for s in found.segmentation.segments},
                )
            )
        return self._versions[key]

    @staticmethod
    def _monitor(
        session: Session, key: tuple[str, str], version: VersionStreams, segment_key: str
    ) -> ErrorStreamMonitor | None:
        """The segment's stream; None for a segment without reference rows enough to profile (not watched)."""
        monitor = version.monitors.get(segment_key)
        if monitor is None:
            segment = version.segments[segment_key]
            if segment.profile is None:
                return None
            mean, sd = segment.baseline_error if segment.baseline_error is not None else (None, None)
            monitor = version.monitors[segment_key] = ErrorStreamMonitor(
                *key,
                version.config,
                mean,
                sd,
                repo.segment_concept_state(session, *key, segment_key),
                segment.error_sample,
                segment=segment,
            )
        return monitor
