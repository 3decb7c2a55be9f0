"""Changelog state: the duplicate filter in blocks per batch, the join buffer keyed by arrival.

The monitor now keeps both in memory and writes them once per batch:
``seen_events`` (one row per event, random keys) becomes ``seen_blocks``
(one row per batch and partition), and ``join_pending`` is keyed by
(model_id, seq) so inserts append instead of landing all over the index.
Existing rows are carried over.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_blocks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(length=250), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("first_offset", sa.BigInteger(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("keys", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("seen_blocks") as batch_op:
        batch_op.create_index("ix_seen_blocks_partition", ["topic", "partition", "next_offset"], unique=False)
    bind = op.get_bind()
    seen = sa.table(
        "seen_events",
        sa.column("kind"),
        sa.column("model_id"),
        sa.column("event_id"),
        sa.column("topic"),
        sa.column("partition"),
        sa.column("offset"),
    )
    blocks: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for kind, model_id, event_id, topic, partition, offset in bind.execute(
        sa.select(seen).order_by(seen.c.topic, seen.c.partition, seen.c.offset)
    ):
        blocks.setdefault((topic, partition), []).append((offset, f"{kind}\t{model_id}\t{event_id}"))
    if blocks:
        op.bulk_insert(
            sa.table(
                "seen_blocks",
                sa.column("topic"),
                sa.column("partition"),
                sa.column("first_offset"),
                sa.column("next_offset"),
                sa.column("keys"),
            ),
            [
                {
                    "topic": topic,
                    "partition": partition,
                    "first_offset": rows[0][0],
                    "next_offset": rows[-1][0] + 1,
                    "keys": "\n".join(key for _, key in rows),
                }
                for (topic, partition), rows in blocks.items()
            ],
        )
    with op.batch_alter_table("seen_events") as batch_op:
        batch_op.drop_index("ix_seen_events_position")
    op.drop_table("seen_events")

    op.create_table(
        "join_pending_new",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "seq"),
    )
    op.execute(
        "INSERT INTO join_pending_new (model_id, seq, kind, event_id, version, ts, payload) "
        "SELECT model_id, ROW_NUMBER() OVER (PARTITION BY model_id ORDER BY ts, kind, event_id), "
        "kind, event_id, version, ts, payload FROM join_pending"
    )
    with op.batch_alter_table("join_pending") as batch_op:
        batch_op.drop_index("ix_join_pending_age")
    op.drop_table("join_pending")
    op.rename_table("join_pending_new", "join_pending")


def downgrade() -> None:
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
    with op.batch_alter_table("seen_events") as batch_op:
        batch_op.create_index("ix_seen_events_position", ["topic", "partition", "offset"], unique=False)
    bind = op.get_bind()
    rows = {}
    for topic, partition, first_offset, keys in bind.execute(
        sa.text("SELECT topic, partition, first_offset, keys FROM seen_blocks ORDER BY id")
    ):
        for key in keys.split("\n") if keys else []:
            kind, model_id, event_id = key.split("\t")
            # a block's offsets are not kept one by one: its first offset stands for all of them
            rows[(kind, model_id, event_id)] = {
                "kind": kind,
                "model_id": model_id,
                "event_id": event_id,
                "topic": topic,
                "partition": partition,
                "offset": first_offset,
            }
    if rows:
        op.bulk_insert(
            sa.table(
                "seen_events",
                sa.column("kind"),
                sa.column("model_id"),
                sa.column("event_id"),
                sa.column("topic"),
                sa.column("partition"),
                sa.column("offset"),
            ),
            list(rows.values()),
        )
    op.drop_table("seen_blocks")

    op.create_table(
        "join_pending_old",
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "kind", "event_id"),
    )
    op.execute(
        "INSERT INTO join_pending_old (model_id, kind, event_id, version, ts, payload) "
        "SELECT model_id, kind, event_id, version, MIN(ts), MIN(payload) FROM join_pending "
        "GROUP BY model_id, kind, event_id, version"
    )
    op.drop_table("join_pending")
    op.rename_table("join_pending_old", "join_pending")
    with op.batch_alter_table("join_pending") as batch_op:
        batch_op.create_index("ix_join_pending_age", ["model_id", "kind", "ts"], unique=False)
