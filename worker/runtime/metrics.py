"""Prometheus metrics of a consuming service (monitor, trainer), served on ``--metrics-port``.

Two kinds, kept apart so that nothing is counted twice:

* **This process's work**, counted when a batch *commits* (a replayed batch
  was never counted): events consumed by topic and kind, dead letters by
  stage and reason, batch processing time, the event time of the last
  processed event per topic.
* **What the database holds** (lag against the stored offsets, open
  episodes, the join buffer, alerts, retrain requests, training runs):
  read at scrape time by ``DatabaseCollector`` and exported by **one**
  process per database: on PostgreSQL the one holding an advisory lock,
  on SQLite the single writer. Two monitors scraped side by side therefore
  never double-count the shared state. Per registered model (its
  champion), the numbers the Grafana dashboard and the alert rules of
  ops/ need: events, PSI per feature, the error against its baseline,
  open episodes, alerts, the gate's decisions (docs/metrics.md#per-model).

Names follow the Prometheus conventions: ``undertow_`` prefix, base units,
``_total`` counters, bounded labels, pre-initialised.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Engine

from undertow.models.drift.concept_state import CURRENT_FORMAT as CONCEPT_FORMAT
from undertow.models.drift.concept_state import ConceptState
from undertow.models.drift.drift_state import DATASET, DEPENDENCE, MULTIVARIATE, PERFORMANCE, load_state
from undertow.models.drift.episodes import MODERATE, SIGNIFICANT, STABLE
from undertow.models.drift.errors import ABSOLUTE_ERROR, MISCLASSIFICATION
from undertow.models.profile import PREDICTION_FEATURE
from undertow.models.runs import FINISHED, RunStatus
from undertow.storage.db import SQLITE_BUSY_TIMEOUT_MS
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.output_events import (
    ConceptDriftAlert,
    DataDriftAlert,
    DatasetDriftAlert,
    DependenceDriftAlert,
    MultivariateDriftAlert,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
)
from undertow.worker.runtime.segment_metrics import segment_episodes

log = logging.getLogger(__name__)

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_EXPORTER_LOCK = 0x756E6D65  # PostgreSQL advisory lock key: the one exporter of database metrics


def event_kind(event) -> str:
    """prediction, label, or the CloudEvent type's last part (retrain.requested, model.promoted, ...)."""
    kind = getattr(event, "type", None)
    if isinstance(kind, str):
        return kind.removeprefix("undertow.")
    return type(event).__name__.removesuffix("Event").lower()


class ServiceMetrics:
    def __init__(self, service: str, topics: Iterable[str]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "undertow_events_consumed", "valid events committed, by topic and kind", ["topic", "kind"], registry=r
        )
        self.dead_letters = Counter(
            "undertow_dead_letters", "records dead-lettered, by stage and reason", ["stage", "reason"], registry=r
        )
        self.batch_seconds = Histogram(
            "undertow_batch_duration_seconds", "time to process and commit a batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.last_event = Gauge(
            "undertow_last_event_timestamp_seconds",
            "event time of the last committed event, by topic",
            ["topic"],
            registry=r,
        )
        self.service = service
        for topic in topics:
            self.last_event.labels(topic)
            for suffix, kind in (("predictions", "prediction"), ("labels", "label")):
                if topic.endswith(suffix):
                    self.consumed.labels(topic, kind)
        for stage in ("validate", "process"):
            self.dead_letters.labels(stage, "InvalidEvent")

    def committed(self, batch: Batch, seconds: float) -> None:
        tally: Tally = Tally()
        newest: dict[str, float] = {}
        for position, event in batch.events:
            tally[(position.topic, event_kind(event))] += 1
            ts = getattr(event, "epoch", None)
            if ts is not None:
                newest[position.topic] = max(newest.get(position.topic, ts), ts)
        for (topic, kind), n in tally.items():
            self.consumed.labels(topic, kind).inc(n)
        for topic, ts in newest.items():
            self.last_event.labels(topic).set(ts)
        for letter in batch.dead_letters:
            headers = dict(letter.headers)
            self.dead_letters.labels(
                headers.get("undertow.error.stage", b"?").decode(), headers.get("undertow.error.class", b"?").decode()
            ).inc()
        self.batch_seconds.observe(seconds)

    def serve(self, port: int, host: str, database: DatabaseCollector | None = None):
        """Serve /metrics from a thread; returns the HTTP server (``shutdown()`` it at exit)."""
        if database is not None:
            self.registry.register(database)
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("%s metrics on http://%s:%d/metrics", self.service, host, port)
        return server


class DatabaseCollector(Collector):
    """Scrape-time gauges and counters from the shared database, exported by one process per database.

    On PostgreSQL the exporter is the process whose live session holds an
    advisory lock, checked at every scrape (``_exporter``): after a restart
    of the database, the process that held the lock exports again only if
    it takes the lock again, never on its dead session beside the process
    that has taken the lock meanwhile.
    """

    SECTIONS = {
        "monitor": (
            "model_stats",
            "join_stats",
            "concept_state",
            "alerts",
            "retrain_requests",
            "unregistered_models",
            "schema_mismatches",
            "model_versions",
        ),
        "trainer": ("training_runs",),
    }

    def __init__(
        self,
        engine: Engine,
        service: str,
        group_id: str,
        log_ends: Callable[[list[tuple[str, int]]], dict],
        topics: list[str],
    ):
        self.engine, self.group_id, self.log_ends, self.topics = engine, group_id, log_ends, topics
        self.reader = snapshot_reader(engine)
        self.sections = self.SECTIONS.get(service, ())  # each table's numbers come from one service
        self._lock_key = _EXPORTER_LOCK + sum(service.encode())
        self._lock_connection = None
        self._lock_guard = threading.Lock()  # scrapes may come in parallel (an HTTP thread each): one lock connection

    def _exporter(self) -> bool:
        """Whether this process exports the database metrics at this scrape: it holds the exporter lock now.

        On PostgreSQL the lock is a session's: a restart of the server (or a
        cut connection) ends the session and frees the lock, and another
        process may take it. So a held lock is checked at every scrape, on
        its own connection; a connection that is gone, or no longer holds
        the lock, is dropped and the lock tried again. Exporting on the
        strength of a dead connection would double the metrics.
        """
        if self.engine.dialect.name != "postgresql":
            return True  # SQLite: one writer, one process
        if self._lock_connection is not None and not self._still_held():
            self._drop_lock()
        if self._lock_connection is None:
            self._lock_connection = self._try_lock()
        return self._lock_connection is not None

    def _still_held(self) -> bool:
        """Whether the lock connection is alive and its session holds the lock (asked of the server)."""
        conn = self._lock_connection
        try:
            held = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() "
                    "AND ((classid::bigint << 32) | objid::bigint) = :k AND objsubid = 1"
                ),
                {"k": self._lock_key},
            ).scalar()
            conn.rollback()  # not left idle in a transaction; the session's lock outlives it
        except Exception as exc:  # noqa: BLE001 - whatever the failure, this connection proves nothing any more
            log.warning("the database metrics' exporter lock was lost (%s): trying to take it again", exc)
            return False
        if not held:
            log.warning("the database metrics' exporter lock is no longer held: trying to take it again")
        return bool(held)

    def _try_lock(self):
        """A connection whose session holds the exporter lock, or None when another process holds it."""
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._lock_key}).scalar()
            conn.commit()
        except BaseException:
            # The lock may have been granted without the answer arriving: never back to the pool with it.
            conn.invalidate()
            conn.close()
            raise
        if got:
            return conn  # held for as long as this session lives
        conn.close()
        return None

    def _drop_lock(self) -> None:
        """Give the lock connection up, and with it the lock if its session still has it."""
        conn, self._lock_connection = self._lock_connection, None
        try:
            conn.invalidate()  # closes the session: the server frees its locks; a pooled one would keep them
            conn.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead connection may fail; it is given up either way
            log.debug("closing the exporter lock connection: %s", exc)

    def close(self) -> None:
        """Release the exporter lock (at shutdown): another process takes it at its next scrape."""
        with self._lock_guard:
            if self._lock_connection is not None:
                self._drop_lock()
        if self.reader is not self.engine:
            self.reader.dispose()

    def describe(self):
        return []  # collected lazily: the database may be away at registration

    def collect(self):
        try:
            with self._lock_guard:
                exporter = self._exporter()
            if not exporter:
                return
            with self.reader.connect() as conn:
                yield from self._collect(conn)
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the service down
            log.warning("database metrics unavailable: %s", exc)

    def _collect(self, conn):
        started = time.perf_counter()
        offsets = conn.execute(
            text("SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = :g"), {"g": self.group_id}
        ).all()
        lag = GaugeMetricFamily(
            "undertow_consumer_lag",
            "records behind the log end, by partition (stored offsets, all members of the group)",
            labels=["topic", "partition"],
        )
        ends = self.log_ends([(t, p) for t, p, _ in offsets if t in self.topics]) if offsets else {}
        for topic, partition, offset in offsets:
            if (topic, partition) in ends:
                lag.add_metric([topic, str(partition)], max(ends[(topic, partition)] - offset, 0))
        yield lag
        yield from self._tables(conn)
        scrape = GaugeMetricFamily("undertow_database_scrape_duration_seconds", "time to read these metrics")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape

    def _tables(self, conn):
        tables = set(self.engine.dialect.get_table_names(conn))
        for table in self.sections:
            if table in tables:
                yield from _TABLE_METRICS[table](conn)


def snapshot_reader(engine: Engine) -> Engine:
    """The engine scrapes read through: the service's own, but on SQLite one whose transactions only read
    (any collector that reads the database at scrape time may use it).

    The services' SQLite engines begin every transaction with BEGIN IMMEDIATE (storage.db: reads inside a
    session are isolated), which takes the database's write lock. A scrape needs no write lock: in WAL mode
    (which the services' engine set on the file) a deferred transaction reads one consistent snapshot and
    neither waits for the writers nor makes them wait. With several services scraped every few seconds,
    scrapes taking the write lock queued behind the writers and held them up in turn.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return engine  # PostgreSQL: reads never block writers; an in-memory database is this engine's alone
    reader = create_engine(engine.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @sqlalchemy_event.listens_for(reader, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # the driver's own lazy transactions off: ours, below

    @sqlalchemy_event.listens_for(reader, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: a read snapshot at the first SELECT, no write lock

    return reader


def _duplicates(conn):
    family = CounterMetricFamily("undertow_duplicates", "events seen before, counted once")
    family.add_metric([], conn.execute(text("SELECT COALESCE(SUM(duplicates), 0) FROM model_stats")).scalar())
    yield family


def _join_pending(conn):
    pending = GaugeMetricFamily("undertow_join_pending", "events waiting for their partner", labels=["kind"])
    row = conn.execute(
        text("SELECT COALESCE(SUM(pending_predictions), 0), COALESCE(SUM(pending_labels), 0) FROM join_stats")
    ).one()
    pending.add_metric(["prediction"], row[0])
    pending.add_metric(["label"], row[1])
    yield pending


class _EpisodesOnly(NamedTuple):
    """A ``drift_state`` row as ``load_state`` reads it, without its window buffers."""

    episodes: str
    buffer: bytes
    buffer_ts: bytes
    state_format: int | None


def _open_episodes(conn):
    episodes = GaugeMetricFamily("undertow_open_episodes", "drift episodes not ended", labels=["kind"])
    episodes.add_metric(["concept"], conn.execute(text("SELECT count(*) FROM concept_state WHERE in_episode")).scalar())
    data_open = 0
    # Read through the state's codec (its format number beside it). The buffers are not read: the width a
    # row from before numbering is measured by only says whether it has a confidence column, no episode.
    for episodes_blob, state_format in conn.execute(text("SELECT episodes, state_format FROM drift_state")):
        state = load_state(_EpisodesOnly(episodes_blob, b"", b"", state_format), feature_columns=0)
        data_open += sum(1 for e in state.episodes.values() if e.level != STABLE)
        data_open += sum(1 for c in state.checks.values() if c.level != STABLE)
    episodes.add_metric(["data"], data_open)
    yield episodes


def _alerts(conn):
    alerts = CounterMetricFamily(
        "undertow_alerts", "alerts recorded, by type and detector", labels=["type", "detector"]
    )
    tally: Tally = Tally()
    for kind, cloudevent in conn.execute(text("SELECT type, cloudevent FROM alerts")):
        tally[(kind, json.loads(cloudevent)["data"].get("detector", "window"))] += 1
    for (kind, detector), n in sorted(tally.items()):
        alerts.add_metric([kind, detector], n)
    yield alerts


def _retrain_requests(conn):
    requests = GaugeMetricFamily("undertow_retrain_requests", "retrain requests, by status", labels=["status"])
    counts = dict(conn.execute(text("SELECT status, count(*) FROM retrain_requests GROUP BY status")).all())
    for status in ("open", "closed"):
        requests.add_metric([status], counts.get(status, 0))
    yield requests


def _training_runs(conn):
    runs = GaugeMetricFamily(
        "undertow_training_runs",
        "training runs, by status (promoted and rejected are the gate's decisions)",
        labels=["status"],
    )
    # A summary without quantiles: _sum was exported alone as a gauge before, which the exposition format's
    # linter (promtool check metrics) refuses; as a summary the same series keeps its name and gains _count.
    seconds = SummaryMetricFamily(
        "undertow_training_run_duration_seconds", "wall time of finished runs, by outcome", labels=["status"]
    )
    counts = {
        status: (n, timed, total)
        for status, n, timed, total in conn.execute(
            text(
                "SELECT status, count(*), COUNT(finished_at - started_at), "
                "COALESCE(SUM(finished_at - started_at), 0) FROM training_runs GROUP BY status"
            )
        ).all()
    }
    for status in RunStatus:
        if status is RunStatus.ACCEPTED:
            continue  # not yet looked at by a trainer: not a series of its own
        n, timed, total = counts.get(status.value, (0, 0, 0.0))
        runs.add_metric([status.value], n)
        if status in FINISHED:
            seconds.add_metric([status.value], count_value=timed, sum_value=total or 0.0)
    yield runs
    yield seconds
    yield _runs_by_model(conn)


def _unregistered(conn):
    """Events of unregistered model ids: bounded labels (the tracked ids and "(other)")."""
    events = CounterMetricFamily(
        "undertow_unregistered_events",
        "events of model ids that are not registered, by id (the most frequent ids, the rest as '(other)') and kind",
        labels=["model_id", "kind"],
    )
    ids = GaugeMetricFamily(
        "undertow_unregistered_model_ids",
        "model ids seen that are not registered "
        "(an upper bound: an id folded into '(other)' and seen again counts again)",
    )
    total = 0
    for model_id, predictions, labels, n in conn.execute(
        text("SELECT model_id, predictions, labels, ids FROM unregistered_models")
    ):
        events.add_metric([model_id, "prediction"], predictions)
        events.add_metric([model_id, "label"], labels)
        total += n
    ids.add_metric([], total)
    yield events
    yield ids


def _schema_mismatches(conn):
    """Predictions whose features did not match their version's schema: a row per model and reason."""
    family = CounterMetricFamily(
        "undertow_schema_mismatches",
        "predictions whose features did not match their version's schema, by model and reason (missing, extra, type)",
        labels=["model_id", "reason"],
    )
    dead = CounterMetricFamily(
        "undertow_schema_mismatches_dead_lettered",
        "of those, dead-lettered (versions registered with --strict-schema)",
        labels=["model_id", "reason"],
    )
    for model_id, reason, predictions, dead_lettered in conn.execute(
        text("SELECT model_id, reason, predictions, dead_lettered FROM schema_mismatches")
    ):
        family.add_metric([model_id, reason], predictions)
        dead.add_metric([model_id, reason], dead_lettered)
    yield family
    yield dead


# Per model: what the dashboard and the alert rules need, with bounded labels. A model is a registered
# model with a champion (operators register models; producers cannot add ids), and each figure is the
# champion's: after a promotion an archived version's episodes, still open because it gets no more
# traffic, would otherwise keep an alert firing for ever. Features are capped per model.

MAX_FEATURES = 50  # input features per model with a PSI series (in name order), besides the prediction
LOG_LOSS = "log_loss"  # the log-loss stream's metric, as its alerts name it
ERROR_WINDOW = 500  # the newest labelled pairs of the champion its recent error is the mean of
ALERT_TYPES = tuple(
    cls.model_fields["type"].default
    for cls in (
        DataDriftAlert,
        PredictionDriftAlert,
        DatasetDriftAlert,
        MultivariateDriftAlert,
        DependenceDriftAlert,
        PerformanceEstimateAlert,
        ConceptDriftAlert,
    )
)
# Open episodes: input features, the prediction, the dataset rule, the three window checks, the error stream.
EPISODE_KINDS = {
    PREDICTION_FEATURE: "prediction",
    DATASET: "dataset",
    MULTIVARIATE: "multivariate",
    DEPENDENCE: "dependence",
    PERFORMANCE: "performance",
}
FINISHED_OUTCOMES = tuple(
    s.value for s in (RunStatus.PROMOTED, RunStatus.REJECTED, RunStatus.GAVE_UP, RunStatus.FAILED)
)


class Champion(NamedTuple):
    model_id: str
    version: str
    task: str | None
    validation_error: float | None  # the validation baseline's mean error


def _champions(conn) -> list[Champion]:
    rows = conn.execute(
        text(
            "SELECT model_id, version, task, baseline_error_mean FROM model_versions "
            "WHERE stage = 'champion' ORDER BY model_id"
        )
    )
    return [Champion(*row) for row in rows]


def _per_model(conn):
    champions = _champions(conn)
    yield from _model_events(conn, champions)
    yield _feature_psi(conn, champions)
    yield from _model_error(conn, champions)
    yield _model_episodes(conn, champions)
    yield segment_episodes(conn, [(c.model_id, c.version) for c in champions])
    yield _model_alerts(conn, champions)


def _model_events(conn, champions: list[Champion]):
    events = CounterMetricFamily(
        "undertow_model_events",
        "valid events processed, by model and kind (prediction, label)",
        labels=["model_id", "kind"],
    )
    last = GaugeMetricFamily(
        "undertow_model_last_event_timestamp_seconds",
        "event time of the newest event of the model (its producers' clocks)",
        labels=["model_id"],
    )
    stats = {
        model_id: (predictions, labels, last_ts)
        for model_id, predictions, labels, last_ts in conn.execute(
            text("SELECT model_id, predictions, labels, last_event_ts FROM model_stats")
        )
    }
    for champion in champions:
        predictions, labels, last_ts = stats.get(champion.model_id, (0, 0, None))
        events.add_metric([champion.model_id, "prediction"], predictions)
        events.add_metric([champion.model_id, "label"], labels)
        if last_ts is not None:
            last.add_metric([champion.model_id], last_ts)
    yield events
    yield last


def _feature_psi(conn, champions: list[Champion]):
    """The PSI of each feature in the champion's newest closed window (its drift_state says which one)."""
    psi = GaugeMetricFamily(
        "undertow_feature_psi",
        f"PSI of the newest closed window of the champion, by model and feature (__prediction__ and the "
        f"first {MAX_FEATURES} input features by name)",
        labels=["model_id", "feature"],
    )
    for champion in champions:
        rows = conn.execute(
            text(
                "SELECT w.feature, w.psi FROM drift_state d JOIN window_results w ON w.model_id = d.model_id "
                "AND w.version = d.version AND w.window_index = d.next_window - 1 "
                "WHERE d.model_id = :m AND d.version = :v ORDER BY w.feature"
            ),
            {"m": champion.model_id, "v": champion.version},
        ).all()
        inputs = [(feature, value) for feature, value in rows if feature != PREDICTION_FEATURE]
        for feature, value in [r for r in rows if r[0] == PREDICTION_FEATURE] + inputs[:MAX_FEATURES]:
            psi.add_metric([champion.model_id, feature], value)
    return psi


def _model_error(conn, champions: list[Champion]):
    """The champion's recent error (its newest labelled pairs) and the production baseline it is judged by."""
    error = GaugeMetricFamily(
        "undertow_model_error",
        f"mean error of the champion's newest {ERROR_WINDOW} labelled pairs, by model and metric "
        "(absolute_error, misclassification, log_loss)",
        labels=["model_id", "metric"],
    )
    baseline = GaugeMetricFamily(
        "undertow_model_error_baseline",
        "the champion's production baseline error (its validation baseline until its first labels set it)",
        labels=["model_id", "metric"],
    )
    for champion in champions:
        metric = MISCLASSIFICATION if champion.task == "classification" else ABSOLUTE_ERROR
        errors, losses = [], []
        for value, loss in conn.execute(
            text(
                "SELECT error, score_loss FROM labelled_pairs WHERE model_id = :m AND version = :v "
                "ORDER BY seq DESC LIMIT :n"
            ),
            {"m": champion.model_id, "v": champion.version, "n": ERROR_WINDOW},
        ):
            errors.append(value)
            if loss is not None:
                losses.append(loss)
        production, log_loss = _production_baselines(conn, champion)
        for name, values, level in ((metric, errors, production), (LOG_LOSS, losses, log_loss)):
            if values:
                error.add_metric([champion.model_id, name], sum(values) / len(values))
            if level is not None:
                baseline.add_metric([champion.model_id, name], level)
    yield error
    yield baseline


def _production_baselines(conn, champion: Champion) -> tuple[float | None, float | None]:
    """The production baselines' means (error, log loss): None while collected, the validation's for the first.

    Read from state in the current format only; a row still in an older one (the monitor rewrites it at its
    next label) shows the validation baseline meanwhile.
    """
    row = conn.execute(
        text("SELECT detectors, state_format FROM concept_state WHERE model_id = :m AND version = :v"),
        {"m": champion.model_id, "v": champion.version},
    ).first()
    if row is None or row.state_format != CONCEPT_FORMAT:
        return champion.validation_error, None
    state = ConceptState.model_validate_json(row.detectors)
    log_loss = None if state.log_loss is None else state.log_loss.production.mean
    mean = state.production.mean
    return (champion.validation_error if mean is None else mean), log_loss


def _model_episodes(conn, champions: list[Champion]):
    episodes = GaugeMetricFamily(
        "undertow_model_open_episodes",
        "the champion's drift episodes not ended, by model, kind (feature, prediction, dataset, multivariate, "
        "performance, concept) and level (moderate, significant)",
        labels=["model_id", "kind", "level"],
    )
    for champion in champions:
        tally: Tally = Tally()
        row = conn.execute(
            text("SELECT episodes, state_format FROM drift_state WHERE model_id = :m AND version = :v"),
            {"m": champion.model_id, "v": champion.version},
        ).first()
        if row is not None:
            # Through the state's codec; the buffers are not read (see _open_episodes).
            state = load_state(_EpisodesOnly(row.episodes, b"", b"", row.state_format), feature_columns=0)
            for name, level in [(n, e.level) for n, e in state.episodes.items()] + [
                (n, c.level) for n, c in state.checks.items()
            ]:
                if level != STABLE:
                    tally[(EPISODE_KINDS.get(name, "feature"), level)] += 1
        concept = conn.execute(
            text("SELECT in_episode FROM concept_state WHERE model_id = :m AND version = :v"),
            {"m": champion.model_id, "v": champion.version},
        ).scalar()
        tally[("concept", SIGNIFICANT)] += int(bool(concept))  # a concept episode has one level
        for kind in ("feature", *EPISODE_KINDS.values()):
            for level in (MODERATE, SIGNIFICANT):
                episodes.add_metric([champion.model_id, kind, level], tally[(kind, level)])
        episodes.add_metric([champion.model_id, "concept", SIGNIFICANT], tally[("concept", SIGNIFICANT)])
    return episodes


def _model_alerts(conn, champions: list[Champion]):
    alerts = CounterMetricFamily(
        "undertow_model_alerts", "alerts recorded, by model and type (every version)", labels=["model_id", "type"]
    )
    counts = {
        (model_id, kind): n
        for model_id, kind, n in conn.execute(
            text("SELECT model_id, type, count(*) FROM alerts GROUP BY model_id, type")
        )
    }
    for champion in champions:
        for kind in ALERT_TYPES:
            alerts.add_metric([champion.model_id, kind], counts.get((champion.model_id, kind), 0))
    return alerts


def _runs_by_model(conn):
    """Finished training runs by model and outcome: the gate's decisions (promoted, rejected) and the failures."""
    runs = CounterMetricFamily(
        "undertow_model_training_runs",
        "finished training runs, by model and outcome (promoted, rejected, gave_up, failed)",
        labels=["model_id", "outcome"],
    )
    counts = {
        (model_id, status): n
        for model_id, status, n in conn.execute(
            text("SELECT model_id, status, count(*) FROM training_runs GROUP BY model_id, status")
        )
    }
    for champion in _champions(conn):
        for outcome in FINISHED_OUTCOMES:
            runs.add_metric([champion.model_id, outcome], counts.get((champion.model_id, outcome), 0))
    return runs


# What each table of DatabaseCollector.SECTIONS exports, in that order.
_TABLE_METRICS = {
    "model_stats": _duplicates,
    "join_stats": _join_pending,
    "concept_state": _open_episodes,
    "alerts": _alerts,
    "retrain_requests": _retrain_requests,
    "unregistered_models": _unregistered,
    "schema_mismatches": _schema_mismatches,
    "model_versions": _per_model,
    "training_runs": _training_runs,
}
