"""Typed SQLAlchemy tables.

Event times are stored as float seconds since the epoch (UTC): portable across
SQLite and PostgreSQL and cheap to compare for windows and expiry.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    description: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[float] = mapped_column(Float)


class ConsumerOffset(Base):
    """Next offset to read per partition: the truth the consumer seeks to."""

    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(250), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


class ModelStats(Base):
    __tablename__ = "model_stats"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    first_event_ts: Mapped[float | None] = mapped_column(Float)
    last_event_ts: Mapped[float | None] = mapped_column(Float)


class SeenEvent(Base):
    """Duplicate horizon: ids of recently processed events.

    Rows older than the horizon (in records per source partition) are expired,
    so the table is bounded by horizon x partitions.
    """

    __tablename__ = "seen_events"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(250))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_seen_events_position", "topic", "partition", "offset"),)


class OutboxMessage(Base):
    """A record to publish after the transaction that produced it commits."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(250))
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)
    headers: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[name, hex bytes], ...]
    created_at: Mapped[float] = mapped_column(Float)


class DeadLetterStats(Base):
    __tablename__ = "dead_letter_stats"

    source_topic: Mapped[str] = mapped_column(String(250), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
