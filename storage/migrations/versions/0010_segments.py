"""Drift per segment: the segments of a version, and each segment's data-drift and concept state.

``model_versions.segments`` holds the segmentation fixed at registration
(``models.segments``; NULL: not segmented). ``segment_drift_state`` and
``segment_concept_state`` have the columns of ``drift_state`` and
``concept_state`` and a ``segment`` key beside the model and version: tables of
their own rather than a key added to the old ones, so that every reader of those
keeps one row per version and no table is rebuilt on SQLite.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _keys() -> list[sa.Column[str]]:
    return [
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("segment", sa.String(length=500), nullable=False),
    ]


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("segments", sa.Text(), nullable=True))
    op.create_table(
        "segment_drift_state",
        *_keys(),
        sa.Column("next_window", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("since_evaluation", sa.Integer(), nullable=False),
        sa.Column("buffer", sa.LargeBinary(), nullable=False),
        sa.Column("buffer_ts", sa.LargeBinary(), nullable=False),
        sa.Column("window_start_ts", sa.Float(), nullable=True),
        sa.Column("late_events", sa.BigInteger(), nullable=False),
        sa.Column("episodes", sa.Text(), nullable=False),
        sa.Column("state_format", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "version", "segment"),
    )
    op.create_table(
        "segment_concept_state",
        *_keys(),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("error_sum", sa.Float(), nullable=False),
        sa.Column("in_episode", sa.Boolean(), nullable=False),
        sa.Column("episode_started_label", sa.BigInteger(), nullable=True),
        sa.Column("episodes", sa.Integer(), nullable=False),
        sa.Column("silenced_alarms", sa.BigInteger(), nullable=False),
        sa.Column("calm_evaluations", sa.Integer(), nullable=False),
        sa.Column("detectors", sa.Text(), nullable=False),
        sa.Column("state_format", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "version", "segment"),
    )


def downgrade() -> None:
    op.drop_table("segment_concept_state")
    op.drop_table("segment_drift_state")
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("segments")
