"""What each segment of the segmented versions shows now: its open data-drift episodes and its error stream,
read from ``segment_drift_state`` and ``segment_concept_state`` (for ``status`` and the report)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from undertow.models.drift.drift_state import load_state
from undertow.models.drift.episodes import STABLE
from undertow.models.segments import OTHER, Segmentation, load_segmentation
from undertow.storage import repo
from undertow.storage.tables import ModelVersion


@dataclass
class SegmentStatus:
    model_id: str
    version: str
    key: str
    segment: dict[str, str]
    reference_rows: int
    monitored: bool  # False: too few reference rows for a profile of its own
    windows: int = 0  # closed data-drift windows
    open_data: dict[str, str] = field(default_factory=dict)  # feature or check -> level, episodes not ended
    labels: int = 0
    mean_error: float | None = None
    in_episode: bool = False  # of its error stream
    concept_episodes: int = 0

    @property
    def label(self) -> str:
        """The segment as people read it: 'region=north', or 'other'."""
        return "other" if self.key == OTHER else self.key

    def as_dict(self) -> dict[str, object]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "segment": self.segment,
            "reference_rows": self.reference_rows,
            "monitored": self.monitored,
            "windows": self.windows,
            "open_data_episodes": self.open_data,
            "labels": self.labels,
            "mean_error": self.mean_error,
            "in_concept_episode": self.in_episode,
            "concept_episodes": self.concept_episodes,
        }


def segment_status(session: Session, versions: list[ModelVersion]) -> list[SegmentStatus]:
    """Each segment of the segmented ones among ``versions``, in the order their segmentation lists them."""
    out: list[SegmentStatus] = []
    for version in versions:
        segmentation = load_segmentation(version.segments)
        if segmentation is not None:
            out += _version_status(session, version, segmentation)
    return out


def _version_status(session: Session, version: ModelVersion, segmentation: Segmentation) -> list[SegmentStatus]:
    key = (version.model_id, version.version)
    drift = {row.segment: row for row in repo.segment_drift_states(session, version.model_id) if row.version == key[1]}
    concept = {
        row.segment: row for row in repo.segment_concept_states(session, version.model_id) if row.version == key[1]
    }
    out = []
    for segment in segmentation.segments:
        status = SegmentStatus(*key, segment.key, segment.values, segment.rows, segment.profile is not None)
        stored = drift.get(segment.key)
        if stored is not None and segment.profile is not None:
            state = load_state(stored, len(segment.profile.features))
            status.windows = stored.next_window
            status.open_data = {
                **{name: e.level for name, e in state.episodes.items() if e.level != STABLE},
                **{name: c.level for name, c in state.checks.items() if c.level != STABLE},
            }
        errors = concept.get(segment.key)
        if errors is not None:
            status.labels, status.in_episode, status.concept_episodes = (
                errors.labels,
                errors.in_episode,
                errors.episodes,
            )
            status.mean_error = errors.error_sum / errors.labels if errors.labels else None
        out.append(status)
    return out
