"""Events of unregistered model ids: bounded per-id counts, and the wall clock of a model's last arrival.

``unregistered_models`` counts the events of model ids nobody registered
(the most frequent ids and one "(other)" row), instead of keeping them for
the join without end. ``join_stats.arrived_at`` is the monitor's wall clock
when a model's last event arrived: the waiting events of an unregistered
model expire by it. Existing rows get NULL (treated as long ago).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unregistered_models",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("predictions", sa.BigInteger(), nullable=False),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("ids", sa.BigInteger(), nullable=False),
        sa.Column("kept", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id"),
    )
    with op.batch_alter_table("join_stats") as batch_op:
        batch_op.add_column(sa.Column("arrived_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("join_stats") as batch_op:
        batch_op.drop_column("arrived_at")
    op.drop_table("unregistered_models")
