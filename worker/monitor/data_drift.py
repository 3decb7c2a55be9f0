"""The data-drift stage: windows of predictions per model version, per-feature
PSI / KS / chi-square against the reference profile, episode-based alerts.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict

import numpy as np
from sqlalchemy.orm import Session

from models import registry
from models.drift.config import DriftConfig
from models.drift.episodes import MODERATE, SIGNIFICANT, STABLE, next_episode, severity
from models.drift.stats import FeatureEvaluator, evaluate_window
from models.drift.windows import ClosedWindow, WindowState
from models.profile import PREDICTION_FEATURE, NumericProfile, ReferenceProfile
from storage import repo
from worker.monitor.alerts import record_alert
from worker.monitor.retrain_policy import RetrainPolicy
from worker.runtime import cloudevents
from worker.runtime.batch import Batch
from worker.runtime.events import PredictionEvent
from worker.runtime.output_events import (
    Alert,
    DataDrift,
    DataDriftAlert,
    DatasetDrift,
    DatasetDriftAlert,
    Window,
)

log = logging.getLogger(__name__)

DATASET = "__dataset__"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class ModelVersionMonitor:
    """Encoding, window and episodes of one model version."""

    def __init__(self, model_id: str, version: str, profile: ReferenceProfile, config: DriftConfig,
                 state=None):
        self.model_id, self.version, self.config = model_id, version, config
        self.stored = state is not None
        self.columns = sorted(name for name in profile.features if name != PREDICTION_FEATURE)
        if PREDICTION_FEATURE in profile.features:
            self.columns.append(PREDICTION_FEATURE)
        self.evaluators = [FeatureEvaluator(profile.features[name]) for name in self.columns]
        self._encoders = [None if isinstance(profile.features[name], NumericProfile) else ev.encoder.encode
                          for name, ev in zip(self.columns, self.evaluators)]
        if state is None:
            self.window = WindowState(config, len(self.columns))
            self.episodes: dict[str, list] = {}
        else:
            self.window = WindowState.from_columns(config, len(self.columns), state)
            self.episodes = json.loads(state.episodes)

    def encode(self, events: list[PredictionEvent]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of bucket codes / numbers (NaN = missing, or a string in a numeric column)."""
        nan, numbers = math.nan, (int, float)
        features = [event.features for event in events]
        out = np.empty((len(events), len(self.columns)))
        for j, (name, encoder) in enumerate(zip(self.columns, self._encoders)):
            if name == PREDICTION_FEATURE:
                values = [event.prediction for event in events]
            else:
                values = [f.get(name) for f in features]
            if encoder is None:
                try:
                    out[:, j] = np.array(values, dtype=float)  # None becomes NaN
                except (TypeError, ValueError):  # a string in a numeric column counts as missing
                    out[:, j] = [v if v.__class__ in numbers else nan for v in values]
            else:
                out[:, j] = [encoder(v) for v in values]
        ts = np.fromiter((e.epoch for e in events), dtype=float, count=len(events))
        return out, ts

    def evaluate(self, window: ClosedWindow) -> tuple[list[dict], list[Alert]]:
        """Result rows of the window, and the alerts (CloudEvents) it raises."""
        results, alerts, drifted = [], [], []
        small = window.rows.shape[0] < (self.config.min_window_rows if self.config.window_seconds else 1)
        for name, stats in zip(self.columns, evaluate_window(self.evaluators, window.rows)):
            level = STABLE if small else severity(stats, self.config)
            results.append({
                "model_id": self.model_id, "version": self.version, "window_index": window.index,
                "feature": name, "start_ts": window.start_ts, "end_ts": window.end_ts, "n": stats.n,
                "psi": stats.psi, "ks_statistic": _finite(stats.ks_statistic), "ks_pvalue": _finite(stats.ks_pvalue),
                "chi2_statistic": stats.chi2_statistic, "chi2_pvalue": stats.chi2_pvalue,
                "missing_share": stats.missing_share, "severity": level})
            if level != STABLE and name != PREDICTION_FEATURE:
                drifted.append(name)
            alert = self._transition(name, level, window, DataDriftAlert, DataDrift, dict(
                feature=name, psi=stats.psi, ks_statistic=_finite(stats.ks_statistic),
                ks_pvalue=_finite(stats.ks_pvalue), chi2_statistic=_finite(stats.chi2_statistic),
                chi2_pvalue=_finite(stats.chi2_pvalue), missing_share=stats.missing_share))
            if alert:
                alerts.append(alert)
        inputs = [c for c in self.columns if c != PREDICTION_FEATURE]
        share = len(drifted) / len(inputs) if inputs else 0.0
        significant_share = len([r for r in results if r["severity"] == SIGNIFICANT
                                 and r["feature"] != PREDICTION_FEATURE]) / len(inputs) if inputs else 0.0
        dataset_level = STABLE
        if inputs and not small and share >= self.config.dataset_share:
            dataset_level = SIGNIFICANT if significant_share >= self.config.dataset_share else MODERATE
        alert = self._transition(DATASET, dataset_level, window, DatasetDriftAlert, DatasetDrift, dict(
            drifted_share=share, drifted_features=drifted, threshold=self.config.dataset_share))
        if alert:
            alerts.append(alert)
        return results, alerts

    def _transition(self, name: str, level: str, window: ClosedWindow, event_type: type[Alert],
                    data_type: type[DataDrift | DatasetDrift], numbers: dict) -> Alert | None:
        state, change = next_episode(self.episodes.get(name, [STABLE, 0]), level, self.config.end_after)
        self.episodes[name] = state
        if change is None:
            return None
        data = data_type(
            model_id=self.model_id, model_version=self.version, severity=level if change != "ended" else STABLE,
            episode=change, **numbers,
            window=Window(index=window.index, start_ts=cloudevents.rfc3339(window.start_ts),
                          end_ts=cloudevents.rfc3339(window.end_ts), n=int(window.rows.shape[0])))
        detector = "data" if event_type is DataDriftAlert else "dataset"
        return event_type(id=cloudevents.event_id(self.model_id, self.version, detector, name, window.index),
                          subject=self.model_id, time=cloudevents.rfc3339(window.end_ts), data=data)

    def state_columns(self) -> dict:
        return self.window.to_columns()


class DataDriftStage:
    """Windows and drift checks for every prediction with a registered reference.

    Predictions without ``model_version`` belong to the model's champion.
    Significant dataset drift (the share of significant input features
    reaches ``dataset_share``) asks the retrain policy for a request.
    Predictions of a model (or version) without a reference are counted by
    the ingest stage only; drift checks start once a reference exists.
    """

    def __init__(self, alerts_topic: str, policy: RetrainPolicy | None = None):
        self.alerts_topic = alerts_topic
        self.policy = policy
        self._monitors: dict[tuple[str, str], ModelVersionMonitor] = {}

    def reset(self) -> None:
        """Forget cached state; it is reloaded from the database (after a rewind or rebalance)."""
        self._monitors.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        predictions = [(position, e) for position, e in batch.events if isinstance(e, PredictionEvent)]
        if not predictions:
            return
        model_ids = sorted({event.model_id for _, event in predictions})
        champion = registry.champions(session, model_ids)
        groups: dict[tuple[str, str], list[PredictionEvent]] = defaultdict(list)
        for _, event in predictions:
            version = event.model_version or champion.get(event.model_id)
            if version is not None:
                groups[(event.model_id, version)].append(event)
        for key, events in groups.items():
            monitor = self._monitor(session, *key)
            if monitor is None:
                continue
            rows, ts = monitor.encode(events)
            for window in monitor.window.add(rows, ts):
                results, alerts = monitor.evaluate(window)
                repo.add_window_results(session, results)
                for alert in alerts:
                    record_alert(session, self.alerts_topic, alert)
                    if (self.policy is not None and monitor.config.retrain_on_data_drift
                            and isinstance(alert, DatasetDriftAlert) and alert.data.severity == SIGNIFICANT):
                        self.policy.consider(session, alert, monitor.config, reason="data drift")
            repo.save_drift_state(session, *key, monitor.state_columns(), json.dumps(monitor.episodes),
                                  exists=monitor.stored)
            monitor.stored = True

    def _monitor(self, session: Session, model_id: str, version: str) -> ModelVersionMonitor | None:
        monitor = self._monitors.get((model_id, version))
        if monitor is None:
            row = session.get(registry.ModelVersion, (model_id, version))
            if row is None:
                return None
            monitor = ModelVersionMonitor(
                model_id, version, ReferenceProfile.model_validate_json(row.profile),
                DriftConfig.model_validate_json(row.drift_config), repo.drift_state(session, model_id, version))
            self._monitors[(model_id, version)] = monitor
        return monitor
