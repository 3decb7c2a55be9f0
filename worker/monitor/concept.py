"""The concept-drift stage: join labels to predictions, watch the error stream,
ask for retraining.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from models import registry
from models.drift.config import DriftConfig
from models.drift.detectors import Cusum, PageHinkley, RollingMean
from models.drift.errors import prediction_error, score_loss
from storage import repo
from storage.tables import PendingEvent
from worker.monitor.alerts import record_alert
from worker.monitor.retrain_policy import RetrainPolicy
from worker.runtime import cloudevents
from worker.runtime.batch import Batch
from worker.runtime.events import LabelEvent, PredictionEvent
from worker.runtime.output_events import Baseline, ConceptDrift, ConceptDriftAlert

log = logging.getLogger(__name__)

_PREDICTION_FIELDS = {"features", "prediction", "scores"}
_JSON = TypeAdapter(Any)  # pydantic's JSON encoder: several times faster than json.dumps on floats


class ErrorStreamMonitor:
    """Detectors and the drift episode of one model version's error stream.

    Errors enter in baseline standard deviations. The first detector to fire
    starts an episode and raises the one concept alert of that episode; while
    it lasts, further alarms are counted, not alerted. The episode ends when
    the rolling mean error has stayed within one standard error of the
    baseline for a whole window of evaluations (and at least a window of
    labels has passed); then all detectors start afresh. (Promoting a new model
    version also starts afresh: detectors are per version.)
    """

    def __init__(self, model_id: str, version: str, config: DriftConfig, mean: float, sd: float, state=None,
                 error_sample: list[float] | None = None):
        self.model_id, self.version, self.config = model_id, version, config
        self.mean = mean
        self.sd = max(sd, 1e-9, abs(mean) * 1e-6)  # a perfect validation score must not divide by zero
        reference_z = None if not error_sample else (np.array(error_sample) - mean) / self.sd
        self.detectors = {
            "page_hinkley": PageHinkley(config.ph_delta, config.ph_threshold),
            "cusum": Cusum(config.cusum_k, config.cusum_false_alarm_every, reference_z=reference_z),
            "rolling_mean": RollingMean(config.rolling_window, config.rolling_step, config.rolling_sigmas),
        }
        self.stored = state is not None
        self.labels, self.error_sum, self.in_episode = 0, 0.0, False
        self.episode_started_label: int | None = None
        self.episodes, self.silenced_alarms, self.calm_evaluations = 0, 0, 0
        if state is not None:
            self.labels, self.error_sum, self.in_episode = state.labels, state.error_sum, state.in_episode
            self.episode_started_label, self.episodes = state.episode_started_label, state.episodes
            self.silenced_alarms, self.calm_evaluations = state.silenced_alarms, state.calm_evaluations
            for name, numbers in json.loads(state.detectors).items():
                self.detectors[name].load(numbers)

    def update(self, error: float, metric: str, label_ts: float) -> ConceptDriftAlert | None:
        """Feed one error; returns the concept alert (CloudEvent) if an episode starts."""
        self.labels += 1
        self.error_sum += error
        z = (error - self.mean) / self.sd
        fired = []
        for name, detector in self.detectors.items():
            detector.update(z)
            if detector.drift_detected:
                fired.append(name)
        rolling = self.detectors["rolling_mean"]
        if self.in_episode:
            self.silenced_alarms += len(fired)
            # Hysteresis: the episode ends only once the rolling mean has stayed
            # within one standard error of the baseline for a whole window of
            # evaluations; a drift sitting near the threshold would otherwise
            # start episode after episode.
            if rolling.evaluated:
                self.calm_evaluations = self.calm_evaluations + 1 if rolling.value <= rolling.calm_level else 0
            if (self.calm_evaluations >= math.ceil(rolling.window / rolling.step)
                    and self.labels - self.episode_started_label >= rolling.window):
                log.info("%s@%s: concept drift episode ended after %d labels", self.model_id, self.version,
                         self.labels - self.episode_started_label)
                self.in_episode, self.episode_started_label, self.calm_evaluations = False, None, 0
                for detector in self.detectors.values():
                    detector.reset()
            return None
        if not fired:
            return None
        self.in_episode, self.episode_started_label = True, self.labels
        self.episodes += 1
        return self._alert(fired[0], metric, label_ts)

    def _alert(self, name: str, metric: str, label_ts: float) -> ConceptDriftAlert:
        detector = self.detectors[name]
        threshold = {"page_hinkley": self.config.ph_threshold, "cusum": getattr(detector, "h", None),
                     "rolling_mean": getattr(detector, "threshold", None)}[name]
        value = detector.value if name == "rolling_mean" else detector.statistic
        recent = self.detectors["rolling_mean"].mean
        data = ConceptDrift(
            model_id=self.model_id, model_version=self.version, detector=name, metric=metric, value=value,
            threshold=threshold, unit="baseline_sd", baseline=Baseline(mean=self.mean, sd=self.sd),
            recent_mean_error=None if recent is None else self.mean + self.sd * recent,
            detected_at=cloudevents.rfc3339(label_ts), label_count=self.labels, severity="significant",
            episode="started")
        return ConceptDriftAlert(id=cloudevents.event_id(self.model_id, self.version, "concept", name, self.labels),
                                 subject=self.model_id, time=cloudevents.rfc3339(label_ts), data=data)

    def state_values(self) -> dict:
        return {"labels": self.labels, "error_sum": self.error_sum, "in_episode": self.in_episode,
                "episode_started_label": self.episode_started_label, "episodes": self.episodes,
                "silenced_alarms": self.silenced_alarms, "calm_evaluations": self.calm_evaluations,
                "detectors": json.dumps({name: d.state() for name, d in self.detectors.items()})}


class ConceptStage:
    """Joins labels to predictions per model and runs the error-stream detectors.

    The join buffer lives in the database (``join_pending``): a prediction
    waits for its label, a label for its prediction, each until it is
    ``join_ttl_seconds`` of event time behind the newest event of the model
    seen so far (then it is expired and counted). Expiry is decided event by
    event, so a replay with other batch boundaries joins the same pairs. At
    most ``join_max_pending`` per model and kind are kept: a safety cap,
    checked per batch, that evicts the oldest (counted). Joined pairs are kept
    as training data, the newest ``pairs_retention`` per model. Errors reach
    the detectors in the order the join completes, which the co-partition
    merger makes independent of fetch timing.
    """

    def __init__(self, alerts_topic: str, policy: RetrainPolicy, join_ttl_seconds: float,
                 join_max_pending: int, pairs_retention: int):
        self.alerts_topic = alerts_topic
        self.policy = policy
        self.join_ttl_seconds = join_ttl_seconds
        self.join_max_pending = join_max_pending
        self.pairs_retention = pairs_retention
        self._monitors: dict[tuple[str, str], ErrorStreamMonitor | None] = {}

    def reset(self) -> None:
        self._monitors.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        by_model: dict[str, list] = defaultdict(list)
        for _, event in batch.events:
            by_model[event.model_id].append(event)
        if not by_model:
            return
        champion = registry.champions(session, sorted(by_model))
        touched: set[tuple[str, str]] = set()
        for model_id, events in by_model.items():
            pairs = self._join(session, model_id, events, champion.get(model_id))
            for pair in pairs:
                if pair["version"] is None:
                    continue
                monitor = self._monitor(session, model_id, pair["version"])
                if monitor is None:
                    continue
                touched.add((model_id, pair["version"]))
                metric = "misclassification" if pair["metric"] == "misclassification" else "absolute_error"
                alert = monitor.update(pair["error"], metric, pair["label_ts"])
                if alert is not None:
                    self._raise(session, alert, monitor.config)
        for key in touched:
            monitor = self._monitors[key]
            repo.save_concept_state(session, *key, monitor.state_values(), exists=monitor.stored)
            monitor.stored = True

    def _join(self, session: Session, model_id: str, events: list, champion: str | None) -> list[dict]:
        ids = list({e.event_id for e in events})
        stored = repo.pending_events(session, model_id, ids)
        stored_predictions = {eid: row for (kind, eid), row in stored.items() if kind == "prediction"}
        stored_labels = {eid: row for (kind, eid), row in stored.items() if kind == "label"}
        new_predictions: dict[str, dict] = {}
        new_labels: dict[str, dict] = {}
        consumed = {"prediction": [], "label": []}
        expired = {"prediction": 0, "label": 0}
        pairs: list[dict] = []
        stats = repo.join_stats(session, model_id)
        watermark = stats.watermark_ts
        for event in events:
            epoch = event.epoch
            watermark = epoch if watermark is None else max(watermark, epoch)
            eid = event.event_id
            if isinstance(event, PredictionEvent):
                if eid in stored_predictions or eid in new_predictions:
                    continue  # a retry beyond the duplicate horizon, still waiting
                version = event.model_version or champion
                prediction = {"version": version, "ts": epoch,
                              "payload": {"features": event.features, "prediction": event.prediction,
                                          "scores": event.scores},
                              "json": event.model_dump_json(include=_PREDICTION_FIELDS)}
                label = new_labels.pop(eid, None) or _stored(stored_labels, eid, consumed["label"])
                if label is not None and label["ts"] < watermark - self.join_ttl_seconds:
                    label = None  # expired: decided per event, so batch boundaries cannot change a join
                    expired["label"] += 1
                if label is None:
                    new_predictions[eid] = prediction
                else:
                    pairs.append(_pair(eid, prediction, label))
            elif isinstance(event, LabelEvent):
                if eid in stored_labels or eid in new_labels:
                    continue
                label = {"ts": epoch, "payload": {"label": event.label}, "json": event.model_dump_json(include={"label"})}
                prediction = new_predictions.pop(eid, None) or _stored(stored_predictions, eid,
                                                                        consumed["prediction"])
                if prediction is not None and prediction["ts"] < watermark - self.join_ttl_seconds:
                    prediction = None  # expired
                    expired["prediction"] += 1
                if prediction is None:
                    new_labels[eid] = label
                else:
                    pairs.append(_pair(eid, prediction, label))
        for kind, ids_ in consumed.items():
            repo.remove_pending(session, model_id, kind, ids_)
        repo.add_pending(session, [
            {"model_id": model_id, "kind": "prediction", "event_id": eid, "version": p["version"], "ts": p["ts"],
             "payload": p["json"]} for eid, p in new_predictions.items()] + [
            {"model_id": model_id, "kind": "label", "event_id": eid, "version": None, "ts": lab["ts"],
             "payload": lab["json"]} for eid, lab in new_labels.items()])
        stats.pending_predictions += len(new_predictions) - len(consumed["prediction"])
        stats.pending_labels += len(new_labels) - len(consumed["label"])
        stats.expired_predictions += expired["prediction"]
        stats.expired_labels += expired["label"]
        first_seq = stats.joined
        stats.joined += len(pairs)
        stats.watermark_ts = watermark
        repo.add_pairs(session, [{
            "model_id": model_id, "seq": first_seq + i, "event_id": p["event_id"], "version": p["version"],
            "prediction_ts": p["prediction_ts"], "label_ts": p["label_ts"],
            "features": _JSON.dump_json(p["features"]).decode(),
            "prediction": _JSON.dump_json(p["prediction"]).decode(), "label": _JSON.dump_json(p["label"]).decode(),
            "error": p["error"],
            "score_loss": p["score_loss"]} for i, p in enumerate(pairs)])
        if pairs:
            repo.trim_pairs(session, model_id, stats.joined - self.pairs_retention)
        self._bound(session, stats, watermark)
        return pairs

    def _bound(self, session: Session, stats, watermark: float | None) -> None:
        """Expire by event time, then evict beyond the row cap; both are counted."""
        if watermark is None:
            return
        expired_by_kind = repo.expire_pending(session, stats.model_id, watermark - self.join_ttl_seconds)
        for kind, expired in expired_by_kind.items():
            pending = getattr(stats, f"pending_{kind}s") - expired
            evicted = repo.evict_oldest_pending(session, stats.model_id, kind, pending - self.join_max_pending)
            setattr(stats, f"pending_{kind}s", pending - evicted)
            setattr(stats, f"expired_{kind}s", getattr(stats, f"expired_{kind}s") + expired)
            setattr(stats, f"evicted_{kind}s", getattr(stats, f"evicted_{kind}s") + evicted)

    def _monitor(self, session: Session, model_id: str, version: str) -> ErrorStreamMonitor | None:
        key = (model_id, version)
        if key not in self._monitors:
            row = session.get(registry.ModelVersion, key)
            if row is None or row.baseline_error_mean is None or row.baseline_error_std is None:
                return None  # no baseline error: pairs are kept, detectors cannot be scaled
            self._monitors[key] = ErrorStreamMonitor(
                model_id, version, DriftConfig.model_validate_json(row.drift_config), row.baseline_error_mean,
                row.baseline_error_std, repo.concept_state(session, model_id, version),
                json.loads(row.baseline_errors) if row.baseline_errors else None)
        return self._monitors[key]

    def _raise(self, session: Session, alert: ConceptDriftAlert, config: DriftConfig) -> None:
        record_alert(session, self.alerts_topic, alert)
        self.policy.consider(session, alert, config, reason="concept drift")


def _stored(rows: dict[str, PendingEvent], event_id: str, consumed: list) -> dict | None:
    row = rows.pop(event_id, None)
    if row is None:
        return None
    consumed.append(event_id)
    return {"version": row.version, "ts": row.ts, "payload": json.loads(row.payload)}


def _pair(event_id: str, prediction: dict, label: dict) -> dict:
    p, lab = prediction["payload"], label["payload"]
    error, metric = prediction_error(p["prediction"], lab["label"])
    return {"event_id": event_id, "version": prediction["version"], "prediction_ts": prediction["ts"],
            "label_ts": label["ts"], "features": p["features"], "prediction": p["prediction"],
            "label": lab["label"], "error": error, "metric": metric,
            "score_loss": score_loss(p.get("scores"), lab["label"])}
