"""The concept-drift stage: join labels to predictions per model, feed each version's monitor, record its
alerts and ask for retraining, save its state."""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.storage import repo
from undertow.storage import spread as spread_repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.concept.explain import explain_alert
from undertow.worker.monitor.concept.monitor import ErrorStreamMonitor
from undertow.worker.monitor.concept.pairs import Pair, build_pair
from undertow.worker.monitor.concept.segments import SegmentErrorStreams
from undertow.worker.monitor.join_buffer import JoinBuffer, Waiting
from undertow.worker.monitor.model_events import batch_champions
from undertow.worker.monitor.registration import FORGOTTEN
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.monitor.spread.collect import (
    SEQ_STRIDE,
    SPREAD,
    SPREAD_SWITCHED,
    SpreadCollector,
    spread_seq,
    spread_stream,
)
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.output_events import ConceptDriftAlert

# Join buffers held in memory across batches; beyond it those of models not in the batch are dropped
# (restored from join_pending when their model comes back), so memory does not grow with the model count.
MAX_BUFFERS_IN_MEMORY = 10_000
# The JSON of the events written to join_pending kept in memory, newest first, across all models (characters):
# a partner that arrives batches later is decoded from it rather than read back (a SELECT per model and batch;
# 3,707 to 55,220 of 100,000 pairs in bench/ingest.py, up to 4 us a record). About 80,000 events of 4 inputs.
MAX_PAYLOAD_CHARS_KEPT = 16_000_000


class ConceptStage:
    """Joins labels to predictions per model and runs the error-stream detectors.

    In the join buffer (``JoinBuffer``: in memory, restored from and written
    to ``join_pending`` in each batch's transaction) a prediction waits for
    its label, a label for its prediction, each until it is
    ``join_ttl_seconds`` of event time behind the newest event of the model
    seen so far (then it is expired and counted). Expiry is decided event by
    event, so a replay with other batch boundaries joins the same pairs. At
    most ``join_max_pending`` per model and kind are kept: a safety cap,
    checked per batch, that evicts the oldest (counted). Joined pairs are kept
    as training data, the newest ``pairs_retention`` per model. Errors reach
    the detectors in the order the join completes, which the co-partition
    merger makes independent of fetch timing.
    """

    def __init__(
        self,
        alerts_topic: str,
        policy: RetrainPolicy,
        join_ttl_seconds: float,
        join_max_pending: int,
        pairs_retention: int,
        clock: Callable[[], float] = time.time,
    ):
        self.clock = clock
        self.alerts_topic = alerts_topic
        self.policy = policy
        self.join_ttl_seconds = join_ttl_seconds
        self.join_max_pending = join_max_pending
        self.pairs_retention = pairs_retention
        self._monitors: dict[tuple[str, str], ErrorStreamMonitor | None] = {}
        self._buffers: dict[str, JoinBuffer] = {}
        self._recent_models: set[str] = set()  # buffers that keep the last batch's fields
        self._payloads: deque[tuple[int, list[Waiting]]] = deque()  # (their characters, events) as written
        self._payload_chars = 0
        self._classifiers: dict[tuple[str, str | None], bool] = {}  # per version: are its labels classes?
        self._segments = SegmentErrorStreams(alerts_topic)  # the error stream per segment of segmented versions

    def reset(self) -> None:
        self._monitors.clear()
        self._segments.reset()
        self._classifiers.clear()
        self._buffers.clear()
        self._recent_models.clear()
        self._payloads.clear()
        self._payload_chars = 0

    def apply(self, session: Session, batch: Batch) -> None:
        for model_id in batch.shared.get(FORGOTTEN, ()):  # their rows were deleted by the registration stage
            self._buffers.pop(model_id, None)
            self._recent_models.discard(model_id)
        spread = batch.shared.get(SPREAD)
        for model_id in batch.shared.get(SPREAD_SWITCHED, ()):  # restored, so they number on from SQL
            for stream in [s for s in self._buffers if s == model_id or s.startswith(model_id + "@")]:
                del self._buffers[stream]
                self._recent_models.discard(stream)
        by_model: dict[str, list] = defaultdict(list)
        for item in batch.events:  # (position, event): the batch's own tuples, not new ones
            by_model[item[1].model_id].append(item)
        if not by_model:
            return
        champion = batch_champions(session, batch)
        if spread is not None:
            by_model = self._join_spread(session, spread, by_model, champion)
        touched: set[tuple[str, str]] = set()
        for model_id, events in by_model.items():
            pairs = self._join(session, model_id, events, champion.get(model_id))
            for pair in pairs:
                if pair.version is None:
                    continue
                monitor = self._monitor(session, model_id, pair.version)
                if monitor is None:
                    continue
                touched.add((model_id, pair.version))
                for alert in monitor.update_pair(pair):
                    self._raise(session, alert, monitor.config, pair.seq)
                self._segments.update(session, (model_id, pair.version), pair)
        self._save_buffers(session, set(by_model) | (spread.streams if spread is not None else set()))
        for key in touched:
            monitor = self._monitors[key]
            repo.save_concept_state(session, *key, monitor.state_values(), exists=monitor.stored)
            monitor.stored = True
        self._segments.save(session)

    def _save_buffers(self, session: Session, models: set[str]) -> None:
        """The join statistics of the batch's models, and the buffers kept in memory bounded."""
        now = self.clock()
        for model_id in models:
            self._buffers[model_id].stats["arrived_at"] = now
        repo.save_join_stats(session, [self._buffers[model_id].stats for model_id in models])
        # Fields kept for a partner in the next batch: only one batch's worth of events, across all models.
        for model_id in self._recent_models.difference(models):
            self._buffers[model_id].forget_recent()
        self._recent_models = models
        while self._payload_chars > MAX_PAYLOAD_CHARS_KEPT:
            chars, written = self._payloads.popleft()
            self._payload_chars -= chars
            for w in written:
                w.payload = None
        if len(self._buffers) > MAX_BUFFERS_IN_MEMORY:
            self._buffers = {model_id: self._buffers[model_id] for model_id in models}

    def feed_pairs(self, session: Session, model_id: str, version: str, pairs: list[tuple]) -> None:
        """The merge's entry for a spread model: its pairs from every partition, in event-time order, as
        (seq, prediction_ts, label_ts, error, score_loss, metric), to the version's error streams."""
        monitor = self._monitor(session, model_id, version)
        if monitor is None:
            return
        for seq, prediction_ts, label_ts, error, loss, metric in pairs:
            pair = MergedPair(seq, prediction_ts, label_ts, error, loss, metric)
            for alert in monitor.update_pair(pair):
                self._raise(session, alert, monitor.config, seq)
        repo.save_concept_state(session, model_id, version, monitor.state_values(), exists=monitor.stored)
        monitor.stored = True

    def _join_spread(
        self, session: Session, spread: SpreadCollector, by_model: dict[str, list], champion: dict[str, str]
    ) -> dict[str, list]:
        """Spread models joined per source partition (a pair's prediction and label share one), their pairs
        kept and handed to the partials; the other models' events returned for the usual path."""
        rest: dict[str, list] = {}
        for model_id, events in by_model.items():
            if model_id not in spread.models:
                rest[model_id] = events
                continue
            by_partition: dict[int, list] = defaultdict(list)
            for item in events:
                by_partition[item[0].partition].append(item)
            for partition, items in by_partition.items():
                stream = spread_stream(model_id, partition)
                spread.streams.add(stream)
                for pair in self._join(session, model_id, items, champion.get(model_id), partition, spread.partitions):
                    if pair.version is not None:
                        spread.add_pair(model_id, partition, pair)
        return rest

    def _join(
        self,
        session: Session,
        model_id: str,
        events: list,
        champion: str | None,
        partition: int | None = None,
        partitions: int = 1,
    ) -> list[Pair]:
        """A model's events joined (``partition``: a spread model's, on that source partition alone)."""
        stream = model_id if partition is None else spread_stream(model_id, partition)
        buffer = self._buffers.get(stream)
        if buffer is None:
            buffer = self._buffers[stream] = JoinBuffer.restore(session, stream)
            _number_on(session, model_id, buffer.stats, partition)
        stats = buffer.stats
        matches, taken, expired, watermark = buffer.match(
            events, champion, stats["watermark_ts"], self.join_ttl_seconds
        )
        buffer.load_fields(session, taken)
        joined, base = stats["joined"], stats["seq_base"]
        pairs = [
            build_pair(
                model_id,
                base + (joined + i if partition is None else spread_seq(joined + i, partition)),
                eid,
                prediction,
                label,
                self._is_classifier(session, model_id, prediction.version),
            )
            for i, (eid, prediction, label) in enumerate(matches)
        ]
        stats["expired_predictions"] += expired["prediction"]
        stats["expired_labels"] += expired["label"]
        stats["joined"] += len(pairs)
        stats["watermark_ts"] = watermark
        repo.add_pairs(session, [pair[:-1] for pair in pairs])  # all but the metric
        keep_from = stats["joined"] - self.pairs_retention // partitions
        self._trim(session, model_id, partition, base, keep_from, bool(pairs))
        if watermark is not None:
            self._bound(buffer, watermark)
        stats["pending_predictions"] = buffer.pending("prediction")
        stats["pending_labels"] = buffer.pending("label")
        written = buffer.flush(session)
        if written:
            chars = sum([len(w.payload) for w in written])  # type: ignore[arg-type]  # written: all have one
            self._payloads.append((chars, written))
            self._payload_chars += chars
        return pairs

    @staticmethod
    def _trim(
        session: Session, model_id: str, partition: int | None, base: int, keep_from: int, joined_some: bool
    ) -> None:
        """The newest ``pairs_retention`` pairs of a model kept (a spread model's split evenly over the
        partitions, each trimming its own); ``keep_from`` counts this join's pairs, numbered from ``base``."""
        if not joined_some or keep_from <= 0:  # none to trim before: skip the statement
            return
        if partition is None:
            repo.trim_pairs(session, model_id, base + keep_from)
        else:
            spread_repo.trim_partition_pairs(session, model_id, partition, SEQ_STRIDE, base + spread_seq(keep_from, 0))

    def _is_classifier(self, session: Session, model_id: str, version: str | None) -> bool:
        """Whether the version's task is classification (its numeric labels are classes); read once."""
        key = (model_id, version)
        found = self._classifiers.get(key)
        if found is None:
            row = None if version is None else registry.find_version(session, model_id, version)
            found = self._classifiers[key] = row is not None and row.task == "classification"
        return found

    def _bound(self, buffer: JoinBuffer, watermark: float) -> None:
        """Expire by event time, then evict beyond the cap; both are counted."""
        for kind, expired in buffer.expire(watermark - self.join_ttl_seconds).items():
            evicted = buffer.evict_oldest(kind, buffer.pending(kind) - self.join_max_pending)
            buffer.stats[f"expired_{kind}s"] += expired
            buffer.stats[f"evicted_{kind}s"] += evicted

    def _monitor(self, session: Session, model_id: str, version: str) -> ErrorStreamMonitor | None:
        key = (model_id, version)
        if key not in self._monitors:
            row = registry.find_version(session, *key)
            if row is None or row.baseline_error_mean is None or row.baseline_error_std is None:
                return None  # no baseline error: pairs are kept, detectors cannot be scaled
            self._monitors[key] = ErrorStreamMonitor(
                model_id,
                version,
                DriftConfig.model_validate_json(row.drift_config),
                row.baseline_error_mean,
                row.baseline_error_std,
                repo.concept_state(session, model_id, version),
                json.loads(row.baseline_errors) if row.baseline_errors else None,
            )
        return self._monitors[key]

    def _raise(self, session: Session, alert: ConceptDriftAlert, config: DriftConfig, seq: int) -> None:
        """``seq``: the pair whose error fired, so that what the alert says is read from the pairs joined up to
        it, whatever the batch boundaries."""
        alert = explain_alert(session, alert, seq)
        record_alert(session, self.alerts_topic, alert)
        if alert.data.episode in ("started", "escalated"):
            self.policy.consider(session, alert, config, reason=f"concept drift ({alert.data.episode})")


class MergedPair(NamedTuple):
    """What the error streams read of a pair, as a spread model's merge has it."""

    seq: int
    prediction_ts: float
    label_ts: float
    error: float
    score_loss: float | None
    metric: str


def _number_on(session: Session, model_id: str, stats: dict, partition: int | None) -> None:
    """A join restored from SQL numbers its pairs on from the model's highest seq if another join (the model
    was spread, or no longer is) numbered pairs past where this one would go next. A spread join's base stays
    a multiple of SEQ_STRIDE, so its pairs keep their partition in ``seq % SEQ_STRIDE``."""
    highest = repo.highest_pair_seq(session, model_id)
    joined, base = stats["joined"], stats["seq_base"]
    following = base + (joined if partition is None else spread_seq(joined, partition))
    if highest is None or following > highest:
        return
    if partition is None:
        stats["seq_base"] = highest + 1 - joined
    else:
        stats["seq_base"] = (-(-(highest + 1) // SEQ_STRIDE) - joined) * SEQ_STRIDE
