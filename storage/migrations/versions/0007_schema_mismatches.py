"""Predictions whose features do not match their version's schema, counted per model and reason.

``schema_mismatches`` has a row per registered model and reason (``missing``,
``extra``, ``type``): how many predictions had that fault, how many of them
were dead-lettered (versions registered with ``--strict-schema``), the
feature at fault in the newest one and the version it was checked against.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_mismatches",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("predictions", sa.BigInteger(), nullable=False),
        sa.Column("dead_lettered", sa.BigInteger(), nullable=False),
        sa.Column("feature", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=False),
        sa.Column("first_seen_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "reason"),
    )


def downgrade() -> None:
    op.drop_table("schema_mismatches")
