"""Typed SQLAlchemy tables.

Event times are stored as float seconds since the epoch (UTC): portable across
SQLite and PostgreSQL and cheap to compare for windows and expiry.
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    # Every mapped class here has a Table (SQLAlchemy types __table__ as any FromClause):
    # Core statements on it type-check.
    __table__: ClassVar[Table]


class ConsumerOffset(Base):
    """Next offset to read per partition: the truth the consumer seeks to."""

    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(250), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    # The broker's id of the topic the offset belongs to (added in schema
    # version 4): a recreated topic has a new id, and an offset of the old
    # topic means nothing in the new log.
    topic_id: Mapped[str | None] = mapped_column(String(64))


class PartitionGap(Base):
    """A jump of a partition's position that skipped records or restarted a log.

    ``kind``: ``log_reset`` (stored offset beyond the log end, or the topic
    was recreated: the new log is read from its start) or ``records_deleted``
    (stored offset below the log start: retention deleted records first).
    """

    __tablename__ = "partition_gaps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(250))
    partition: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    stored_offset: Mapped[int | None] = mapped_column(BigInteger)
    resumed_at: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_partition_gaps_partition", "group_id", "topic", "partition"),)


class ModelStats(Base):
    __tablename__ = "model_stats"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    first_event_ts: Mapped[float | None] = mapped_column(Float)
    last_event_ts: Mapped[float | None] = mapped_column(Float)


class SchemaMismatch(Base):
    """Predictions of a registered model whose features did not match its version's schema, per reason.

    ``reason`` is ``missing`` (a schema feature absent), ``extra`` (a feature
    the schema does not have) or ``type`` (a string where the schema has a
    number); ``label`` counts labels that cannot be the model's classes or
    values (in ``predictions``; each also dead-lettered). A prediction with
    several faults counts once under each. Bounded: four rows per
    registered model at most.
    """

    __tablename__ = "schema_mismatches"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16), primary_key=True)
    predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of those, dead-lettered because the version was registered with --strict-schema.
    dead_lettered: Mapped[int] = mapped_column(BigInteger, default=0)
    feature: Mapped[str] = mapped_column(String(200))  # the feature at fault in the newest such prediction
    model_version: Mapped[str] = mapped_column(String(200))  # the version whose schema it was checked against
    first_seen_at: Mapped[float] = mapped_column(Float)  # wall clock of the monitor
    last_seen_at: Mapped[float] = mapped_column(Float)


class UnregisteredModel(Base):
    """Events of model ids that are not registered: the most frequent ids, and one row for the rest.

    Bounded (``UNDERTOW_UNREGISTERED_TRACKED_IDS`` rows plus the row
    ``OTHER_UNREGISTERED``): a producer with a typo in its model id, or an
    attacker inventing ids, cannot grow it.
    """

    __tablename__ = "unregistered_models"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    # Distinct ids this row stands for: 1, or for the "(other)" row the ids folded into it.
    ids: Mapped[int] = mapped_column(BigInteger, default=1)
    # Events kept for the join (UNDERTOW_WAIT_FOR_REGISTRATION) and dropped beyond its global cap.
    kept: Mapped[int] = mapped_column(BigInteger, default=0)
    # Kept events that waited longer than UNDERTOW_UNREGISTERED_TTL_SECONDS and were deleted.
    expired: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen_at: Mapped[float] = mapped_column(Float)  # wall clock of the monitor
    last_seen_at: Mapped[float] = mapped_column(Float)


OTHER_UNREGISTERED = "(other)"  # not a valid model id, so never a real one


class SeenBlock(Base):
    """Duplicate horizon: the keys of the events one batch took from one source partition.

    One row per batch and partition: the changelog of the monitor's
    in-memory duplicate filter, which is restored from it. A block is deleted
    once all its offsets are more than the horizon (in records per source
    partition) behind, so the table holds about horizon x partitions keys.
    """

    __tablename__ = "seen_blocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(250))
    partition: Mapped[int] = mapped_column(Integer)
    first_offset: Mapped[int] = mapped_column(BigInteger)
    next_offset: Mapped[int] = mapped_column(BigInteger)  # after the block's last record
    keys: Mapped[str] = mapped_column(Text)  # one "kind<TAB>model_id<TAB>event_id" per line

    __table_args__ = (Index("ix_seen_blocks_partition", "topic", "partition", "next_offset"),)


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


class ModelVersion(Base):
    """A registered model version: artifact, reference profile, card and stage."""

    __tablename__ = "model_versions"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20))  # candidate | champion | archived | rejected
    created_at: Mapped[float] = mapped_column(Float)
    profile: Mapped[str] = mapped_column(Text)  # ReferenceProfile JSON
    drift_config: Mapped[str] = mapped_column(Text)  # DriftConfig JSON
    feature_schema: Mapped[str] = mapped_column(Text, default="{}")
    model_card: Mapped[str] = mapped_column(Text, default="{}")
    artifact_path: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    data_sha256: Mapped[str | None] = mapped_column(String(64))
    baseline_error_mean: Mapped[float | None] = mapped_column(Float)
    baseline_error_std: Mapped[float | None] = mapped_column(Float)
    # Sorted sample of reference errors (JSON), to calibrate the detectors. Added in schema version 3.
    baseline_errors: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(20))  # regression | classification
    # Held-out rows with their targets (JSON {"features": [...], "targets": [...]}): the version's own test set.
    test_set: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))  # the training run that made it
    # Drift per segment (models.segments.Segmentation JSON): the columns, the segments fixed from the reference
    # and each one's reference profile; NULL: not segmented. Kept out of ``profile``, which every reader loads.
    segments: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_model_versions_stage", "model_id", "stage"),)


class DriftState(Base):
    """Open window and per-feature episode state of one model version.

    ``buffer`` holds the window's rows as raw little-endian float64 (NaN =
    missing, categorical columns as bucket codes): plain numbers, bounded by
    the window size.
    """

    __tablename__ = "drift_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    next_window: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    since_evaluation: Mapped[int] = mapped_column(Integer, default=0)
    buffer: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    buffer_ts: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    window_start_ts: Mapped[float | None] = mapped_column(Float)
    late_events: Mapped[int] = mapped_column(BigInteger, default=0)
    episodes: Mapped[str] = mapped_column(Text, default="{}")  # feature -> [severity, stable windows]
    # The format of the JSON state (episodes) and buffer layout (models.state_format); NULL: written before
    # formats were numbered (Alembic 0008).
    state_format: Mapped[int | None] = mapped_column(Integer)


class WindowResult(Base):
    """One row per closed window and feature: the time series reports plot."""

    __tablename__ = "window_results"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    feature: Mapped[str] = mapped_column(String(200), primary_key=True)
    start_ts: Mapped[float] = mapped_column(Float)
    end_ts: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    psi: Mapped[float] = mapped_column(Float)
    ks_statistic: Mapped[float | None] = mapped_column(Float)
    ks_pvalue: Mapped[float | None] = mapped_column(Float)
    chi2_statistic: Mapped[float] = mapped_column(Float)
    chi2_pvalue: Mapped[float] = mapped_column(Float)
    missing_share: Mapped[float] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(20))

    # Retention deletes a model's windows by end time (storage/retention.py, Alembic 0012).
    __table_args__ = (Index("ix_window_results_end", "model_id", "end_ts"),)


class Alert(Base):
    """Every alert the monitor raised (its CloudEvent), for `undertow alerts`."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100))
    feature: Mapped[str | None] = mapped_column(String(200))
    severity: Mapped[str | None] = mapped_column(String(20))
    event_ts: Mapped[float] = mapped_column(Float)
    cloudevent: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_alerts_model", "model_id", "event_ts"),)


class PendingEvent(Base):
    """Join buffer: a prediction waiting for its label, or a label for its prediction.

    Keyed by a sequence number per model, in arrival order, so rows are
    appended at the end of the table's index; the event id is looked up in
    the monitor's memory, restored from here (``JoinBuffer``).
    """

    __tablename__ = "join_pending"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # prediction | label
    event_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[str | None] = mapped_column(String(200))
    ts: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)  # JSON of the event as it came


class LabelledPair(Base):
    """A joined prediction and label: training data for retraining, kept under a retention policy."""

    __tablename__ = "labelled_pairs"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[str | None] = mapped_column(String(200))
    prediction_ts: Mapped[float] = mapped_column(Float)
    label_ts: Mapped[float] = mapped_column(Float)
    features: Mapped[str] = mapped_column(Text)
    prediction: Mapped[str] = mapped_column(Text)  # JSON scalar
    label: Mapped[str] = mapped_column(Text)  # JSON scalar
    error: Mapped[float] = mapped_column(Float)
    score_loss: Mapped[float | None] = mapped_column(Float)


class JoinStats(Base):
    __tablename__ = "join_stats"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    pending_predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_labels: Mapped[int] = mapped_column(BigInteger, default=0)
    joined: Mapped[int] = mapped_column(BigInteger, default=0)
    expired_predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    expired_labels: Mapped[int] = mapped_column(BigInteger, default=0)
    evicted_predictions: Mapped[int] = mapped_column(BigInteger, default=0)
    evicted_labels: Mapped[int] = mapped_column(BigInteger, default=0)
    watermark_ts: Mapped[float | None] = mapped_column(Float)
    # Wall clock of the monitor when the model's last event arrived: waiting events of an
    # unregistered model expire by it (UNDERTOW_UNREGISTERED_TTL_SECONDS).
    arrived_at: Mapped[float | None] = mapped_column(Float)
    # The labelled_pairs seq of this join's first pair (Alembic 0011): a join that starts, or starts again,
    # after the model's pairs were numbered by another one (a model spread or no longer spread) numbers on
    # from the model's highest seq, never over it.
    seq_base: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ConceptState(Base):
    """Detector state of one model version's error stream, as plain numbers (JSON)."""

    __tablename__ = "concept_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    error_sum: Mapped[float] = mapped_column(Float, default=0.0)
    in_episode: Mapped[bool] = mapped_column(default=False)
    episode_started_label: Mapped[int | None] = mapped_column(BigInteger)
    episodes: Mapped[int] = mapped_column(Integer, default=0)
    silenced_alarms: Mapped[int] = mapped_column(BigInteger, default=0)
    calm_evaluations: Mapped[int] = mapped_column(Integer, default=0)
    detectors: Mapped[str] = mapped_column(Text, default="{}")
    # The format of ``detectors`` (models.state_format); NULL: written before formats were numbered (Alembic 0008).
    state_format: Mapped[int | None] = mapped_column(Integer)


SEGMENT_KEY_LENGTH = 500  # a segment's key ("region=north,channel=web", or "__other__"): checked at registration


class SegmentDriftState(Base):
    """``drift_state`` of one segment of a segmented model version (models.segments): the same columns, keyed
    also by the segment. A table of its own, so every reader of ``drift_state`` keeps one row per version."""

    __tablename__ = "segment_drift_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    segment: Mapped[str] = mapped_column(String(SEGMENT_KEY_LENGTH), primary_key=True)
    next_window: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    since_evaluation: Mapped[int] = mapped_column(Integer, default=0)
    buffer: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    buffer_ts: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    window_start_ts: Mapped[float | None] = mapped_column(Float)
    late_events: Mapped[int] = mapped_column(BigInteger, default=0)
    episodes: Mapped[str] = mapped_column(Text, default="{}")
    state_format: Mapped[int | None] = mapped_column(Integer)


class SegmentConceptState(Base):
    """``concept_state`` of one segment's error stream (models.segments), keyed also by the segment."""

    __tablename__ = "segment_concept_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    segment: Mapped[str] = mapped_column(String(SEGMENT_KEY_LENGTH), primary_key=True)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    error_sum: Mapped[float] = mapped_column(Float, default=0.0)
    in_episode: Mapped[bool] = mapped_column(default=False)
    episode_started_label: Mapped[int | None] = mapped_column(BigInteger)
    episodes: Mapped[int] = mapped_column(Integer, default=0)
    silenced_alarms: Mapped[int] = mapped_column(BigInteger, default=0)
    calm_evaluations: Mapped[int] = mapped_column(Integer, default=0)
    detectors: Mapped[str] = mapped_column(Text, default="{}")
    state_format: Mapped[int | None] = mapped_column(Integer)


class RetrainRequest(Base):
    __tablename__ = "retrain_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # open | closed
    created_ts: Mapped[float] = mapped_column(Float)  # event time of the triggering alert
    alert_ids: Mapped[str] = mapped_column(Text)  # JSON list
    cloudevent: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_retrain_requests_model", "model_id", "status"),)


class ChampionChange(Base):
    """Append-only history of a model's champion: which version, since when, who changed it and why."""

    __tablename__ = "champion_history"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(200))
    previous_version: Mapped[str | None] = mapped_column(String(200))
    changed_at: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(20))  # registered | promoted | rolled_back
    actor: Mapped[str] = mapped_column(String(200))  # operator | trainer
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))


class TrainingRun(Base):
    """One training run: what caused it, the data, parameters, metrics, durations, the gate and the outcome."""

    __tablename__ = "training_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)  # one run per retrain request
    model_id: Mapped[str] = mapped_column(String(200))
    champion_version: Mapped[str | None] = mapped_column(String(200))
    candidate_version: Mapped[str | None] = mapped_column(String(200))
    # accepted -> waiting (for data after the change) -> running -> promoted | rejected | gave_up | failed
    status: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(Text)  # JSON: reason, alert ids, change time, data policy
    accepted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    wait_until: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[str] = mapped_column(Text, default="{}")
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    data: Mapped[str] = mapped_column(Text, default="{}")
    durations: Mapped[str] = mapped_column(Text, default="{}")
    environment: Mapped[str] = mapped_column(Text, default="{}")
    outcome: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_training_runs_status", "status"), Index("ix_training_runs_model", "model_id"))


class NotifyDelivery(Base):
    """A message of ``undertow notify`` to one sink: one event, or a digest of one model's events.

    The delivery outbox: rows are written in the transaction that commits the
    offsets of the events they hold, and sent by the notify sender in order of
    ``id`` per sink, each marked in its own transaction. ``status``:
    ``collecting`` (a digest still taking its model's events until ``due_at``),
    ``pending`` (``due_at``: when the next attempt is due), ``delivered``,
    ``dead`` (dead-lettered; ``undertow notify retry`` makes it pending
    again). Bounded: delivered rows are deleted after
    ``UNDERTOW_NOTIFY_RETENTION_SECONDS``, dead ones after
    ``UNDERTOW_NOTIFY_DEAD_LETTER_RETENTION_SECONDS``.
    """

    __tablename__ = "notify_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sink: Mapped[str] = mapped_column(String(200))
    # The CloudEvent id the message carries (ce-id, the receiver's idempotency key): the event's own id, or a
    # digest's (a hash of the sink and its first event). The same on every attempt.
    delivery_id: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)  # wall clock of the notify service
    due_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[float | None] = mapped_column(Float)  # delivered or dead-lettered

    __table_args__ = (
        Index("ix_notify_deliveries_sink", "sink", "status", "id"),
        Index("ix_notify_deliveries_finished", "status", "finished_at"),
    )


class NotifyDeliveryEvent(Base):
    """An event a delivery carries, as it was consumed. One row per sink and event id: an event read twice
    (a re-published alert) is delivered once to each sink, for as long as its delivery is kept."""

    __tablename__ = "notify_delivery_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery: Mapped[int] = mapped_column(Integer)  # NotifyDelivery.id
    sink: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    cloudevent: Mapped[str] = mapped_column(Text)  # the record's value: the body a webhook receives

    __table_args__ = (
        UniqueConstraint("sink", "event_id", name="uq_notify_delivery_events_sink_event"),
        Index("ix_notify_delivery_events_delivery", "delivery"),
    )


class ModelSetting(Base):
    """Per-model settings that are not a version's: whether the model is spread over all partitions."""

    __tablename__ = "model_settings"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Spread: its events are keyed by event id, so they spread over every partition; each monitor builds
    # partial windows and errors for its partitions and one monitor merges them (worker/monitor/spread).
    spread: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[float] = mapped_column(Float)


class SpreadPartitionState(Base):
    """The partition-local side of a spread model on one source partition: the partials it has emitted."""

    __tablename__ = "spread_partition_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_partial: Mapped[int] = mapped_column(BigInteger, default=0)  # the sequence number of its next partial
    watermark_ts: Mapped[float | None] = mapped_column(Float)  # newest prediction time seen on the partition
    label_watermark_ts: Mapped[float | None] = mapped_column(Float)  # newest label time


class MergeState(Base):
    """The merge of a spread model's partials: per source partition its watermark, the last partial applied
    and what waits for the other partitions; JSON of ``MergeStateModel``, its format beside it."""

    __tablename__ = "merge_state"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    state_format: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float)


class MergePending(Base):
    """What a spread model's partial holds that the merge has not released yet (it waits for the other
    partitions' watermarks): one row per partial, rewritten with the rest when part of it is released."""

    __tablename__ = "merge_pending"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # JSON of the partial's unreleased part
