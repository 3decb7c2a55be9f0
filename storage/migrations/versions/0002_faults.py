"""Faults: the topic's broker id beside each stored offset, and the partition gaps the monitor detected.

(Hand-written migration 4 before Alembic.)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consumer_offsets") as batch_op:
        batch_op.add_column(sa.Column("topic_id", sa.String(length=64), nullable=True))
    op.create_table(
        "partition_gaps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=250), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("stored_offset", sa.BigInteger(), nullable=True),
        sa.Column("resumed_at", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_partition_gaps_partition", "partition_gaps", ["group_id", "topic", "partition"])


def downgrade() -> None:
    op.drop_index("ix_partition_gaps_partition", table_name="partition_gaps")
    op.drop_table("partition_gaps")
    with op.batch_alter_table("consumer_offsets") as batch_op:
        batch_op.drop_column("topic_id")
