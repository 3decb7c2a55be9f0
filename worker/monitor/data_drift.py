"""The data-drift stage: windows of predictions per model version, per-feature
PSI / KS / chi-square against the reference profile, episode-based alerts.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import operator

import numpy as np

# chi2.sf, norm.cdf and norm.isf exactly, without scipy.stats' ~0.1 ms of argument handling per call (per feature and window)
from scipy.special import chdtrc, ndtr, ndtri
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.episodes import MODERATE, SIGNIFICANT, STABLE, next_episode, severity
from undertow.models.drift.stats import FeatureEvaluator, FeatureStats, evaluate_window
from undertow.models.drift.windows import ClosedWindow, WindowState
from undertow.models.profile import (
    KS_SAMPLE_SIZE,
    PREDICTION_FEATURE,
    NumericProfile,
    ReferenceProfile,
)
from undertow.storage import repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.model_events import batch_prediction_groups
from undertow.worker.monitor.schema import NUMBERS_ONLY
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import PredictionEvent
from undertow.worker.runtime.output_events import (
    Alert,
    DataDrift,
    DataDriftAlert,
    DatasetDrift,
    DatasetDriftAlert,
    MultivariateDrift,
    MultivariateDriftAlert,
    PerformanceEstimate,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
    Window,
)

log = logging.getLogger(__name__)

DATASET = "__dataset__"
MULTIVARIATE = "__multivariate__"
PERFORMANCE = "__performance__"
CONFIDENCE = "__confidence__"    # a buffer column: the score the model gave its own prediction
EVIDENCE = "__evidence__"        # per feature, the newest windows' z, kept with the episodes
EVIDENCE_SCALES = (1, 2, 4, 8)   # windows summed: a drift too slow for one window adds up over several
MIN_SCORED_ROWS = 100
_NUMBERS = frozenset({int, float, type(None)})


def window_z(stats: FeatureStats, reference_rows: int) -> float:
    """A window's test as a standard normal score, uniform p-values under no drift. A numeric feature has
    two tests of the window against the reference sample: Mann-Whitney's rank sum, the stronger one when
    the location moves (as in most gradual drifts), and KS for any change of shape. Their p-values are
    combined by the Cauchy combination (ACAT, Liu and Xie 2020), which stays close to uniform however
    the two depend on each other: doubling the smaller one (Bonferroni) would pile up at p = 1 and
    drag the sums over windows down. A categorical feature: the chi-square against the reference shares,
    deflated by 1 + n/reference rows (the shares are estimates too; the plain statistic runs high)."""
    if stats.ks_pvalue is not None and not math.isnan(stats.ks_pvalue):
        p = stats.ks_pvalue
        if stats.rank_z is not None and math.isfinite(stats.rank_z):
            p = _cauchy_combination(p, 2 * float(ndtr(-abs(stats.rank_z))))
    elif stats.chi2_dof > 0:
        p = float(chdtrc(stats.chi2_dof, stats.chi2_statistic / (1 + stats.n / max(reference_rows, 1))))
    else:
        return 0.0
    return float(min(max(-ndtri(max(p, 1e-300)), -3.0), 8.0))


def _cauchy_combination(*pvalues: float) -> float:
    """ACAT with equal weights: the mean of tan((1/2 - p) pi) = cot(pi p) is standard Cauchy under the null,
    whatever the dependence between the tests (asymptotically in the tail).

    >>> round(_cauchy_combination(0.5, 0.5), 6), round(_cauchy_combination(1e-8, 0.9), 9)
    (0.5, 2e-08)
    """
    t = sum(1 / math.tan(math.pi * min(max(p, 1e-300), 1 - 1e-15)) for p in pvalues) / len(pvalues)
    return math.atan2(1.0, t) / math.pi


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class ModelVersionMonitor:
    """Encoding, window and episodes of one model version."""

    def __init__(self, model_id: str, version: str, profile: ReferenceProfile, config: DriftConfig,
                 state=None, accuracy: float | None = None):
        self.model_id, self.version, self.config = model_id, version, config
        self.stored = state is not None
        self.columns = sorted(name for name in profile.features if name != PREDICTION_FEATURE)
        if PREDICTION_FEATURE in profile.features:
            self.columns.append(PREDICTION_FEATURE)
        self.evaluators = [FeatureEvaluator(profile.features[name]) for name in self.columns]
        self._encoders = [None if isinstance(profile.features[name], NumericProfile) else ev.encoder.encode
                          for name, ev in zip(self.columns, self.evaluators)]
        self.reference_rows = profile.rows
        self._numeric_columns = [j for j, (name, encoder) in enumerate(zip(self.columns, self._encoders))
                                 if encoder is None and name != PREDICTION_FEATURE]
        # One getter for all of them (itemgetter needs at least one name, and gives a tuple from two on).
        self._numeric_values = operator.itemgetter(*(self.columns[j] for j in self._numeric_columns)) if len(
            self._numeric_columns) >= 2 else None
        self.multivariate = profile.multivariate
        self._multivariate_columns = None if self.multivariate is None else [
            self.columns.index(name) for name in self.multivariate.features]
        # Classifiers with a validation accuracy get a confidence column for the performance estimate,
        # unless a window was stored before it existed (its buffer is one column narrower).
        self.accuracy = accuracy
        width = len(self.columns) + (accuracy is not None)
        if state is not None and state.buffer_ts:
            width = len(state.buffer) // len(state.buffer_ts)
        self.scored = accuracy is not None and width == len(self.columns) + 1
        if state is None:
            self.window = WindowState(config, width)
            self.episodes: dict[str, list] = {}
        else:
            self.window = WindowState.from_columns(config, width, state)
            self.episodes = json.loads(state.episodes)
        self.evidence: dict[str, list[float]] = {
            name: z if isinstance(z, list) else [] for name, z in self.episodes.pop(EVIDENCE, {}).items()}
        # Each scale's sum / sqrt(scale) is standard normal without drift: the model's false-alarm budget is
        # split over its input features and the scales (Bonferroni), so it holds whatever the feature count.
        inputs = max(1, sum(1 for name in self.columns if name != PREDICTION_FEATURE))
        self._evidence_t = float(-ndtri(1 / (len(EVIDENCE_SCALES) * inputs * config.evidence_false_alarm_windows)))

    def encode(self, events: list[PredictionEvent], numbers_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows of bucket codes / numbers (NaN = missing, or a string in a numeric column). ``numbers_only``:
        the schema stage found every event's features as registered, numeric ones numbers or nulls."""
        nan, numbers = math.nan, (int, float)
        features = [event.features for event in events]
        out = np.empty((len(events), len(self.columns) + self.scored))
        numeric = self._encode_numeric(features, out, numbers_only)
        for j, (name, encoder) in enumerate(zip(self.columns, self._encoders)):
            if j in numeric:
                continue
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
        if self.scored:
            out[:, -1] = [(e.scores or {}).get(str(e.prediction), nan) for e in events]
        ts = np.fromiter((e.epoch for e in events), dtype=float, count=len(events))
        return out, ts

    def _encode_numeric(self, features: list[dict], out: np.ndarray, numbers_only: bool = False) -> set[int]:
        """The numeric input columns in one pass over the rows, when every row has them all as numbers;
        the columns it filled. Otherwise (a missing feature, a null, a string) nothing: ``encode`` goes
        column by column and turns those into NaN."""
        columns = self._numeric_columns
        if self._numeric_values is None:
            return set()
        try:
            values = list(itertools.chain.from_iterable(map(self._numeric_values, features)))
        except KeyError:  # a missing feature
            return set()
        # numpy would read "12" as 12.0; the column-by-column path counts a string as missing, so must this one.
        if not numbers_only and not _NUMBERS.issuperset(map(type, values)):
            return set()
        out[:, columns] = np.array(values, dtype=float).reshape(-1, len(columns))  # None (a null) becomes NaN
        return set(columns)

    def evaluate(self, window: ClosedWindow) -> tuple[list[dict], list[Alert]]:
        """Result rows of the window, and the alerts (CloudEvents) it raises."""
        c = self.config
        results, alerts, drifted = [], [], []
        small = window.rows.shape[0] < (c.min_window_rows if c.window_seconds else 1)
        features = window.rows[:, :len(self.columns)]
        for name, stats in zip(self.columns, evaluate_window(self.evaluators, features)):
            thresholds = ((c.prediction_psi_moderate, c.prediction_psi_significant) if name == PREDICTION_FEATURE
                          else (c.psi_moderate, c.psi_significant))
            upper = STABLE if small else severity(stats, c, *thresholds)
            lower = STABLE if small else severity(stats, c, *thresholds, scale=c.psi_exit_ratio)
            rule = "window"
            if name != PREDICTION_FEATURE and not small:
                # Evidence summed over windows: a drift too gradual for one window's PSI shows here first.
                # Every window is tested against the same reference sample, so the windows' z share its
                # sampling error: correlation n / (n + reference), which the sums' spread must include.
                rho = stats.n / (stats.n + min(self.reference_rows, KS_SAMPLE_SIZE))
                recent = ([window_z(stats, self.reference_rows)] + self.evidence.get(name, []))[:EVIDENCE_SCALES[-1]]
                if max(sum(recent[:m]) / math.sqrt(m + m * (m - 1) * rho) for m in EVIDENCE_SCALES
                       if m <= len(recent)) > self._evidence_t:
                    recent = []  # re-armed: the windows that raised it do not raise it again
                    if upper == STABLE:
                        upper, rule = MODERATE, "cumulative"
                self.evidence[name] = recent
            results.append({
                "model_id": self.model_id, "version": self.version, "window_index": window.index,
                "feature": name, "start_ts": window.start_ts, "end_ts": window.end_ts, "n": stats.n,
                "psi": stats.psi, "ks_statistic": _finite(stats.ks_statistic), "ks_pvalue": _finite(stats.ks_pvalue),
                "chi2_statistic": stats.chi2_statistic, "chi2_pvalue": stats.chi2_pvalue,
                "missing_share": stats.missing_share, "severity": upper})
            if upper != STABLE and name != PREDICTION_FEATURE:
                drifted.append(name)
            alert_type = PredictionDriftAlert if name == PREDICTION_FEATURE else DataDriftAlert
            alert = self._transition(name, upper, lower, window, alert_type, DataDrift, dict(
                feature=name, psi=stats.psi, ks_statistic=_finite(stats.ks_statistic),
                ks_pvalue=_finite(stats.ks_pvalue), chi2_statistic=_finite(stats.chi2_statistic),
                chi2_pvalue=_finite(stats.chi2_pvalue), missing_share=stats.missing_share, rule=rule))
            if alert:
                alerts.append(alert)
        inputs = [name for name in self.columns if name != PREDICTION_FEATURE]
        share = len(drifted) / len(inputs) if inputs else 0.0
        significant_share = len([r for r in results if r["severity"] == SIGNIFICANT
                                 and r["feature"] != PREDICTION_FEATURE]) / len(inputs) if inputs else 0.0
        dataset_level = STABLE
        if inputs and not small and share >= c.dataset_share:
            dataset_level = SIGNIFICANT if significant_share >= c.dataset_share else MODERATE
        alert = self._transition(DATASET, dataset_level, dataset_level, window, DatasetDriftAlert, DatasetDrift,
                                 dict(drifted_share=share, drifted_features=drifted, threshold=c.dataset_share))
        if alert:
            alerts.append(alert)
        if not small:
            alerts += [a for a in (self._multivariate_check(window), self._performance_estimate(window)) if a]
        return results, alerts

    def _multivariate_check(self, window: ClosedWindow) -> Alert | None:
        """Mean PCA reconstruction error of the window against the reference, in standard errors."""
        if self.multivariate is None:
            return None
        mv, c = self.multivariate, self.config
        errors = mv.row_errors(window.rows[:, self._multivariate_columns])
        z = (float(errors.mean()) - mv.error_mean) / (mv.error_sd / math.sqrt(errors.size))
        upper = SIGNIFICANT if z > c.multivariate_sigmas else STABLE
        lower = SIGNIFICANT if z > c.multivariate_sigmas * c.psi_exit_ratio else STABLE
        alert = self._transition(MULTIVARIATE, upper, lower, window, MultivariateDriftAlert, MultivariateDrift, dict(
            features=mv.features, value=float(errors.mean()), reference=mv.error_mean, z=z,
            threshold=c.multivariate_sigmas))
        self.episodes[MULTIVARIATE] = self.episodes[MULTIVARIATE][:3] + [z]
        return alert

    def _performance_estimate(self, window: ClosedWindow) -> Alert | None:
        """Confidence-based accuracy (NannyML's CBPE for accuracy): with calibrated scores, the chance that a
        prediction is right is the score it was given; the window's mean is the accuracy to expect."""
        if not self.scored:
            return None
        confidence = window.rows[:, -1]
        confidence = confidence[~np.isnan(confidence)]
        if confidence.size < MIN_SCORED_ROWS:
            return None
        c = self.config
        estimate = float(confidence.mean())
        spread = math.sqrt(float((confidence * (1 - confidence)).mean()) / confidence.size)
        gap = max(c.estimate_margin, 3 * spread)
        upper = SIGNIFICANT if estimate < self.accuracy - gap else STABLE
        lower = SIGNIFICANT if estimate < self.accuracy - gap * c.psi_exit_ratio else STABLE
        alert = self._transition(PERFORMANCE, upper, lower, window, PerformanceEstimateAlert, PerformanceEstimate,
                                 dict(value=estimate, reference=self.accuracy, threshold=self.accuracy - gap,
                                      scored_rows=int(confidence.size)))
        self.episodes[PERFORMANCE] = self.episodes[PERFORMANCE][:3] + [estimate]
        return alert

    def _transition(self, name: str, upper: str, lower: str, window: ClosedWindow, event_type: type[Alert],
                    data_type: type, numbers: dict) -> Alert | None:
        state, change = next_episode(self.episodes.get(name, [STABLE, 0, STABLE])[:3], upper, lower,
                                     self.config.end_after)
        self.episodes[name] = state
        if change is None:
            return None
        data = data_type(
            model_id=self.model_id, model_version=self.version, severity=state[0] if change != "ended" else STABLE,
            episode=change, **numbers,
            window=Window(index=window.index, start_ts=cloudevents.rfc3339(window.start_ts),
                          end_ts=cloudevents.rfc3339(window.end_ts), n=int(window.rows.shape[0])))
        detector = {DataDriftAlert: "data", PredictionDriftAlert: "data", DatasetDriftAlert: "dataset",
                    MultivariateDriftAlert: "multivariate", PerformanceEstimateAlert: "performance"}[event_type]
        return event_type(id=cloudevents.event_id(self.model_id, self.version, detector, name, window.index),
                          subject=self.model_id, time=cloudevents.rfc3339(window.end_ts), data=data)

    def episodes_json(self) -> str:
        return json.dumps({**self.episodes, EVIDENCE: self.evidence})

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
        numbers_only = batch.shared.get(NUMBERS_ONLY, ())
        for key, items in batch_prediction_groups(session, batch).items():
            monitor = self._monitor(session, *key)
            if monitor is None:
                continue
            rows, ts = monitor.encode([event for _, event in items], numbers_only=key in numbers_only)
            for window in monitor.window.add(rows, ts):
                results, alerts = monitor.evaluate(window)
                repo.add_window_results(session, results)
                for alert in alerts:
                    record_alert(session, self.alerts_topic, alert)
                    if (self.policy is not None and monitor.config.retrain_on_data_drift
                            and isinstance(alert, DatasetDriftAlert) and alert.data.severity == SIGNIFICANT):
                        self.policy.consider(session, alert, monitor.config, reason="data drift")
            repo.save_drift_state(session, *key, monitor.state_columns(), monitor.episodes_json(),
                                  exists=monitor.stored)
            monitor.stored = True

    def _monitor(self, session: Session, model_id: str, version: str) -> ModelVersionMonitor | None:
        monitor = self._monitors.get((model_id, version))
        if monitor is None:
            row = session.get(registry.ModelVersion, (model_id, version))
            if row is None:
                return None
            accuracy = (1.0 - row.baseline_error_mean if row.task == "classification"
                        and row.baseline_error_mean is not None else None)
            monitor = ModelVersionMonitor(
                model_id, version, ReferenceProfile.model_validate_json(row.profile),
                DriftConfig.model_validate_json(row.drift_config), repo.drift_state(session, model_id, version),
                accuracy)
            self._monitors[(model_id, version)] = monitor
        return monitor
