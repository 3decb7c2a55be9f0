"""The delivery outbox of ``undertow notify``: messages to sinks, and the events each carries.

``notify_deliveries`` has a row per message to one sink (an event, or a
digest of one model's events), with its status (collecting, pending,
delivered, dead), when it is due, its attempts and last error;
``notify_delivery_events`` the events it carries, one per sink and event id.
Both are written in the transaction that commits the consumer offsets.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sink", sa.String(length=200), nullable=False),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notify_deliveries_sink", "notify_deliveries", ["sink", "status", "id"])
    op.create_index("ix_notify_deliveries_finished", "notify_deliveries", ["status", "finished_at"])
    op.create_table(
        "notify_delivery_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery", sa.Integer(), nullable=False),
        sa.Column("sink", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("cloudevent", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sink", "event_id", name="uq_notify_delivery_events_sink_event"),
    )
    op.create_index("ix_notify_delivery_events_delivery", "notify_delivery_events", ["delivery"])


def downgrade() -> None:
    op.drop_index("ix_notify_delivery_events_delivery", table_name="notify_delivery_events")
    op.drop_table("notify_delivery_events")
    op.drop_index("ix_notify_deliveries_finished", table_name="notify_deliveries")
    op.drop_index("ix_notify_deliveries_sink", table_name="notify_deliveries")
    op.drop_table("notify_deliveries")
