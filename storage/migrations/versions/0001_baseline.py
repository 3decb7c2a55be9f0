"""Baseline: the schema of the last hand-written migration (version 3: spine, data drift, concept drift).

Revision ID: 0001
Revises:
Create Date: 2026-11-28 14:15:20.710522
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("feature", sa.String(length=200), nullable=True),
        sa.Column("severity", sa.String(length=20), nullable=True),
        sa.Column("event_ts", sa.Float(), nullable=False),
        sa.Column("cloudevent", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_model", ["model_id", "event_ts"], unique=False)

    op.create_table(
        "concept_state",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("error_sum", sa.Float(), nullable=False),
        sa.Column("in_episode", sa.Boolean(), nullable=False),
        sa.Column("episode_started_label", sa.BigInteger(), nullable=True),
        sa.Column("episodes", sa.Integer(), nullable=False),
        sa.Column("silenced_alarms", sa.BigInteger(), nullable=False),
        sa.Column("calm_evaluations", sa.Integer(), nullable=False),
        sa.Column("detectors", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "version"),
    )
    op.create_table(
        "consumer_offsets",
        sa.Column("group_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=250), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition"),
    )
    op.create_table(
        "dead_letter_stats",
        sa.Column("source_topic", sa.String(length=250), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("source_topic"),
    )
    op.create_table(
        "drift_state",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("next_window", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("since_evaluation", sa.Integer(), nullable=False),
        sa.Column("buffer", sa.LargeBinary(), nullable=False),
        sa.Column("buffer_ts", sa.LargeBinary(), nullable=False),
        sa.Column("window_start_ts", sa.Float(), nullable=True),
        sa.Column("late_events", sa.BigInteger(), nullable=False),
        sa.Column("episodes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "version"),
    )
    op.create_table(
        "join_pending",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "kind", "event_id"),
    )
    with op.batch_alter_table("join_pending", schema=None) as batch_op:
        batch_op.create_index("ix_join_pending_age", ["model_id", "kind", "ts"], unique=False)

    op.create_table(
        "join_stats",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("pending_predictions", sa.BigInteger(), nullable=False),
        sa.Column("pending_labels", sa.BigInteger(), nullable=False),
        sa.Column("joined", sa.BigInteger(), nullable=False),
        sa.Column("expired_predictions", sa.BigInteger(), nullable=False),
        sa.Column("expired_labels", sa.BigInteger(), nullable=False),
        sa.Column("evicted_predictions", sa.BigInteger(), nullable=False),
        sa.Column("evicted_labels", sa.BigInteger(), nullable=False),
        sa.Column("watermark_ts", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "labelled_pairs",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("prediction_ts", sa.Float(), nullable=False),
        sa.Column("label_ts", sa.Float(), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("error", sa.Float(), nullable=False),
        sa.Column("score_loss", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "seq"),
    )
    op.create_table(
        "model_stats",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("predictions", sa.BigInteger(), nullable=False),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("first_event_ts", sa.Float(), nullable=True),
        sa.Column("last_event_ts", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "model_versions",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("drift_config", sa.Text(), nullable=False),
        sa.Column("feature_schema", sa.Text(), nullable=False),
        sa.Column("model_card", sa.Text(), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=True),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=True),
        sa.Column("data_sha256", sa.String(length=64), nullable=True),
        sa.Column("baseline_error_mean", sa.Float(), nullable=True),
        sa.Column("baseline_error_std", sa.Float(), nullable=True),
        sa.Column("baseline_errors", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "version"),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index("ix_model_versions_stage", ["model_id", "stage"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(length=250), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "retrain_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_ts", sa.Float(), nullable=False),
        sa.Column("alert_ids", sa.Text(), nullable=False),
        sa.Column("cloudevent", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.create_index("ix_retrain_requests_model", ["model_id", "status"], unique=False)

    op.create_table(
        "seen_events",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=250), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "model_id", "event_id"),
    )
    with op.batch_alter_table("seen_events", schema=None) as batch_op:
        batch_op.create_index("ix_seen_events_position", ["topic", "partition", "offset"], unique=False)

    op.create_table(
        "window_results",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=200), nullable=False),
        sa.Column("start_ts", sa.Float(), nullable=False),
        sa.Column("end_ts", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("psi", sa.Float(), nullable=False),
        sa.Column("ks_statistic", sa.Float(), nullable=True),
        sa.Column("ks_pvalue", sa.Float(), nullable=True),
        sa.Column("chi2_statistic", sa.Float(), nullable=False),
        sa.Column("chi2_pvalue", sa.Float(), nullable=False),
        sa.Column("missing_share", sa.Float(), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "version", "window_index", "feature"),
    )


def downgrade() -> None:
    op.drop_table("window_results")
    with op.batch_alter_table("seen_events", schema=None) as batch_op:
        batch_op.drop_index("ix_seen_events_position")

    op.drop_table("seen_events")
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_retrain_requests_model")

    op.drop_table("retrain_requests")
    op.drop_table("outbox")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_model_versions_stage")

    op.drop_table("model_versions")
    op.drop_table("model_stats")
    op.drop_table("labelled_pairs")
    op.drop_table("join_stats")
    with op.batch_alter_table("join_pending", schema=None) as batch_op:
        batch_op.drop_index("ix_join_pending_age")

    op.drop_table("join_pending")
    op.drop_table("drift_state")
    op.drop_table("dead_letter_stats")
    op.drop_table("consumer_offsets")
    op.drop_table("concept_state")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_model")

    op.drop_table("alerts")
