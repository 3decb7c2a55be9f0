"""The format number of the stored detector and window state, beside the state (out of band).

``drift_state.state_format`` and ``concept_state.state_format`` say which
format the row's JSON state is in (``models.state_format.StateCodec``);
readers upgrade older formats step by step instead of recognising them by
shape. Rows written before have NULL, read as the format the release before
this one wrote (numbered by the codecs); each is saved with its number at its
next update.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("drift_state", "concept_state"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("state_format", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("drift_state", "concept_state"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("state_format")
