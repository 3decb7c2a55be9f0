"""Data drift per segment: each prediction of a segmented version (``models.segments``) also goes to its
segment's monitor, whose windows, episodes and alerts are its own and whose state is a
``segment_drift_state`` row, written in the batch's transaction like the version's.

A segment's monitor is a ``ModelVersionMonitor`` with the segment's reference profile and the version's
rules; its alerts carry the segment. They do not ask for retraining: the whole stream's dataset drift does
(through the retrain policy), and one segment's drift is a narrower signal that the operator reads first.
Its window results are not stored: the per-feature tables are the whole stream's; its alerts and state are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.registry import ModelVersion
from undertow.models.segments import Segment, Segmentation, load_segmentation
from undertow.storage import repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.data_drift import ModelVersionMonitor
from undertow.worker.runtime.events import PredictionEvent


@dataclass(frozen=True)
class SegmentedVersion:
    row: ModelVersion
    segmentation: Segmentation
    config: DriftConfig


def segmented_version(session: Session, key: tuple[str, str]) -> SegmentedVersion | None:
    """A registered version with its segments and drift rules; None if it is unknown or not segmented."""
    row = registry.find_version(session, *key)
    segmentation = None if row is None else load_segmentation(row.segments)
    if row is None or segmentation is None:
        return None
    return SegmentedVersion(row, segmentation, DriftConfig.model_validate_json(row.drift_config))


@dataclass
class VersionSegments:
    """One segmented version: its segments, the value lookup, and the monitors of segments seen so far (at
    most ``top + 1``: memory is bounded by the registration, not by the values production sends)."""

    segmentation: Segmentation
    config: DriftConfig
    task: str | None
    lookup: dict[tuple[str, ...], str]
    segments: dict[str, Segment]
    monitors: dict[str, ModelVersionMonitor] = field(default_factory=dict)

    def route(self, events: list[PredictionEvent]) -> dict[str, list[PredictionEvent]]:
        """The events by segment key, in their order; segments without a profile (too few reference rows)
        are left out."""
        by_segment: dict[str, list[PredictionEvent]] = defaultdict(list)
        for event in events:
            by_segment[self.segmentation.key_of(event.features, self.lookup)].append(event)
        return {key: found for key, found in by_segment.items() if self.segments[key].profile is not None}


class SegmentDataDrift:
    """The segments' monitors of every segmented version, loaded from the database on first use."""

    def __init__(self, alerts_topic: str):
        self.alerts_topic = alerts_topic
        self._versions: dict[tuple[str, str], VersionSegments | None] = {}

    def reset(self) -> None:
        """Forget cached state (after a rewind or rebalance); it is reloaded from the database."""
        self._versions.clear()

    def apply(self, session: Session, key: tuple[str, str], events: list[PredictionEvent], numbers_only: bool) -> None:
        """Feed a version's predictions of this batch to their segments' monitors; record their alerts and
        save their states (only those of segments that had predictions)."""
        version = self._version(session, key)
        if version is None:
            return
        for segment_key, found in version.route(events).items():
            monitor = self._monitor(session, key, version, segment_key)
            rows, ts = monitor.encode(found, numbers_only=numbers_only)
            for window in monitor.window.add(rows, ts):
                _, alerts = monitor.evaluate(window)
                for alert in alerts:
                    record_alert(session, self.alerts_topic, alert)
            blob, state_format = monitor.state_blob()
            repo.save_segment_drift_state(
                session, (*key, segment_key), monitor.state_columns(), blob, state_format, exists=monitor.stored
            )
            monitor.stored = True

    def _version(self, session: Session, key: tuple[str, str]) -> VersionSegments | None:
        if key not in self._versions:
            found = segmented_version(session, key)
            self._versions[key] = (
                None
                if found is None
                else VersionSegments(
                    found.segmentation,
                    found.config,
                    found.row.task,
                    found.segmentation.lookup(),
                    {s.key: s for s in found.segmentation.segments},
                )
            )
        return self._versions[key]

    @staticmethod
    def _monitor(
        session: Session, key: tuple[str, str], version: VersionSegments, segment_key: str
    ) -> ModelVersionMonitor:
        monitor = version.monitors.get(segment_key)
        if monitor is None:
            segment = version.segments[segment_key]
            assert segment.profile is not None  # route() leaves the others out
            accuracy = (
                1.0 - segment.baseline_error[0]
                if version.task == "classification" and segment.baseline_error is not None
                else None
            )
            monitor = version.monitors[segment_key] = ModelVersionMonitor(
                *key,
                segment.profile,
                version.config,
                repo.segment_drift_state(session, *key, segment_key),
                accuracy,
                segment=segment,
            )
        return monitor
