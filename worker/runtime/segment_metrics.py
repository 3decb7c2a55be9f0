"""Per-segment metrics of the champions (drift per segment, ``models.segments``): the open episodes of each
segment's data-drift checks and error stream. The ``segment`` label takes at most ``top + 1`` values per
model (the segments fixed at registration), so the series stay bounded however many values production sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text

from undertow.models.drift.drift_state import load_state
from undertow.models.drift.episodes import STABLE
from undertow.models.segments import OTHER, load_segmentation


class _EpisodesOnly(NamedTuple):
    """A ``segment_drift_state`` row as ``load_state`` reads it, without its window buffers."""

    episodes: str
    buffer: bytes
    buffer_ts: bytes
    state_format: int | None


def segment_episodes(conn, champions: Iterable[tuple[str, str]]) -> GaugeMetricFamily:
    """``undertow_segment_open_episodes{model_id, segment, kind}``: kind ``data`` (features and window checks
    not back to stable) or ``concept`` (1 while its error stream is in an episode), for every watched segment of
    each segmented champion ((model id, version) pairs)."""
    family = GaugeMetricFamily(
        "undertow_segment_open_episodes",
        "the champion's drift episodes not ended in each segment (models register --segment-by), by model, "
        "segment (column=value[,...], or other) and kind (data, concept)",
        labels=["model_id", "segment", "kind"],
    )
    for model_id, version in champions:
        stored = conn.execute(
            text("SELECT segments FROM model_versions WHERE model_id = :m AND version = :v"),
            {"m": model_id, "v": version},
        ).scalar()
        segmentation = load_segmentation(stored)
        if segmentation is None:
            continue
        data = {
            row.segment: row
            for row in conn.execute(
                text(
                    "SELECT segment, episodes, state_format FROM segment_drift_state "
                    "WHERE model_id = :m AND version = :v"
                ),
                {"m": model_id, "v": version},
            )
        }
        concept = dict(
            conn.execute(
                text("SELECT segment, in_episode FROM segment_concept_state WHERE model_id = :m AND version = :v"),
                {"m": model_id, "v": version},
            ).all()
        )
        for segment in segmentation.segments:
            if segment.profile is None:
                continue
            label = "other" if segment.key == OTHER else segment.key
            family.add_metric([model_id, label, "data"], _open(data.get(segment.key)))
            family.add_metric([model_id, label, "concept"], int(bool(concept.get(segment.key))))
    return family


def _open(row) -> int:
    if row is None:
        return 0
    state = load_state(_EpisodesOnly(row.episodes, b"", b"", row.state_format), feature_columns=0)
    return sum(e.level != STABLE for e in state.episodes.values()) + sum(
        c.level != STABLE for c in state.checks.values()
    )
