"""Spread models: a model's events over every partition, partial windows and errors per partition, one merge.

``model_settings`` holds whether a model is spread; ``spread_partition_state``
the partition-local side (the sequence of partials each source partition has
emitted, its watermarks); ``merge_state`` the merge per model and
``merge_pending`` what it holds back until every partition has passed it.
``join_stats.seq_base``: where a join's pair numbers start, so a join that starts
after the model was spread (or no longer is) numbers on from the model's pairs.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("join_stats") as batch_op:
        batch_op.add_column(sa.Column("seq_base", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "model_settings",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("spread", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "spread_partition_state",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_partial", sa.BigInteger(), nullable=False),
        sa.Column("watermark_ts", sa.Float(), nullable=True),
        sa.Column("label_watermark_ts", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", "partition"),
    )
    op.create_table(
        "merge_state",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("state_format", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "merge_pending",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "partition", "seq"),
    )


def downgrade() -> None:
    with op.batch_alter_table("join_stats") as batch_op:
        batch_op.drop_column("seq_base")
    op.drop_table("merge_pending")
    op.drop_table("merge_state")
    op.drop_table("spread_partition_state")
    op.drop_table("model_settings")
