"""Retention: an index to delete a model's window results by end time (storage/retention.py).

The other growing tables are pruned through indexes they already have
(``alerts`` by model and event time, ``retrain_requests`` by model and
status) or are small enough to scan (training runs, partition gaps).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_window_results_end", "window_results", ["model_id", "end_ts"])


def downgrade() -> None:
    op.drop_index("ix_window_results_end", table_name="window_results")
