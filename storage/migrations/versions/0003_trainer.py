"""Trainer: the champion history, training runs, and a version's task, test set and run.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("task", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("test_set", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("run_id", sa.String(length=64), nullable=True))
    op.create_table(
        "champion_history",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("previous_version", sa.String(length=200), nullable=True),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "seq"),
    )
    # Versions that were champion before the history existed get their registration as first entry.
    op.execute(
        "INSERT INTO champion_history (model_id, seq, version, previous_version, changed_at, action, actor, "
        "reason) SELECT model_id, 1, version, NULL, created_at, 'registered', 'operator', "
        "'champion before the history was kept' FROM model_versions WHERE stage = 'champion'"
    )
    op.create_table(
        "training_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("champion_version", sa.String(length=200), nullable=True),
        sa.Column("candidate_version", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("accepted_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("wait_until", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("durations", sa.Text(), nullable=False),
        sa.Column("environment", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])
    op.create_index("ix_training_runs_model", "training_runs", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_training_runs_model", table_name="training_runs")
    op.drop_index("ix_training_runs_status", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("champion_history")
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("run_id")
        batch_op.drop_column("test_set")
        batch_op.drop_column("task")
