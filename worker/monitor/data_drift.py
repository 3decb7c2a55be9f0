"""The data-drift stage: windows of predictions per model version, per-feature
PSI / KS / chi-square against the reference profile, window-level checks
(share of inputs drifting, PCA reconstruction, pairwise dependence, estimated
accuracy), episode-based alerts.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import operator
from collections import defaultdict

import numpy as np
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.dependence import MIN_WINDOW_ROWS as DEPENDENCE_MIN_ROWS
from undertow.models.drift.dependence import DependenceTest
from undertow.models.drift.drift_state import (
    CODEC,
    DATASET,
    DEPENDENCE,
    MULTIVARIATE,
    PERFORMANCE,
    CheckEpisode,
    DataDriftState,
    load_state,
)
from undertow.models.drift.episodes import CALM, MODERATE, SIGNIFICANT, STABLE, Episode, next_episode
from undertow.models.drift.evidence import (
    CombinedEvidence,
    CombinedVerdict,
    EvidenceAccumulator,
    evidence_threshold,
    window_z,
)
from undertow.models.drift.feature_verdict import FeatureVerdict, judge
from undertow.models.drift.stats import FeatureEvaluator, FeatureStats, evaluate_window
from undertow.models.drift.windows import ClosedWindow, WindowState
from undertow.models.profile import (
    KS_SAMPLE_SIZE,
    PREDICTION_FEATURE,
    DependenceProfile,
    NumericProfile,
    ReferenceProfile,
    dependence_from_rows,
)
from undertow.models.segments import Segment
from undertow.storage import repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.dataset_ranking import rank_drifted
from undertow.worker.monitor.model_events import batch_prediction_groups
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.monitor.schema import NUMBER_TYPES, NUMBERS_ONLY
from undertow.worker.monitor.spread.collect import SPREAD, SpreadCollector
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import PredictionEvent
from undertow.worker.runtime.output_events import (
    Alert,
    DataDrift,
    DataDriftAlert,
    DatasetDrift,
    DatasetDriftAlert,
    DependenceDrift,
    DependenceDriftAlert,
    DependencePair,
    EvidenceShare,
    MultivariateDrift,
    MultivariateDriftAlert,
    PerformanceEstimate,
    PerformanceEstimateAlert,
    PredictionDriftAlert,
    Window,
)

log = logging.getLogger(__name__)

CONFIDENCE = "__confidence__"  # a buffer column: the score the model gave its own prediction
MIN_SCORED_ROWS = 100
# C-level getters for encoding a batch's events column by column.
_FEATURES, _PREDICTION, _EPOCH = map(operator.attrgetter, ("features", "prediction", "epoch"))
_DETECTOR = {
    DataDriftAlert: "data",
    PredictionDriftAlert: "data",
    DatasetDriftAlert: "dataset",
    MultivariateDriftAlert: "multivariate",
    DependenceDriftAlert: "dependence",
    PerformanceEstimateAlert: "performance",
}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class ModelVersionMonitor:
    """Encoding, window and episodes of one model version."""

    def __init__(
        self,
        model_id: str,
        version: str,
        profile: ReferenceProfile,
        config: DriftConfig,
        state=None,
        accuracy: float | None = None,
        dependence: DependenceProfile | None = None,
        segment: Segment | None = None,
    ):
        """``dependence``: the reference's pairs when the profile has none (a version registered before
        profiles kept them), measured on rows stored with the version. ``segment``: the one segment of the
        version's predictions this monitor watches (``profile`` is then the segment's), named in its alerts."""
        self.model_id, self.version, self.config = model_id, version, config
        self.segment = segment
        self.stored = state is not None
        self._set_columns(profile)
        self.reference_rows = profile.rows
        self.importance = profile.importance  # ranks a dataset drift's inputs
        self.multivariate = profile.multivariate
        self._multivariate_columns = (
            None if self.multivariate is None else [self.columns.index(name) for name in self.multivariate.features]
        )
        self._set_dependence(profile.dependence or dependence)
        self.accuracy = accuracy
        saved = load_state(state, len(self.columns))
        # Classifiers with a validation accuracy get a confidence column for the performance estimate; a
        # buffered window keeps the layout it was stored with (one from before the column has none).
        buffered = state is not None and bool(state.buffer_ts)
        self.scored = accuracy is not None and (saved.confidence_column or not buffered)
        width = len(self.columns) + (saved.confidence_column if buffered else self.scored)
        self.window = WindowState(config, width) if state is None else WindowState.from_columns(config, width, state)
        self.episodes: dict[str, Episode] = dict(saved.episodes)
        self.checks: dict[str, CheckEpisode] = dict(saved.checks)
        inputs = sum(1 for name in self.columns if name != PREDICTION_FEATURE)
        self.evidence = EvidenceAccumulator(
            evidence_threshold(inputs, config.evidence_false_alarm_windows), dict(saved.evidence)
        )
        self.combined = CombinedEvidence(config.evidence_false_alarm_windows, dict(saved.dataset_evidence))

    def _set_columns(self, profile: ReferenceProfile) -> None:
        """Inputs in name order, then the prediction; the encoder of each and the numeric inputs' getter."""
        self.columns = sorted(name for name in profile.features if name != PREDICTION_FEATURE)
        if PREDICTION_FEATURE in profile.features:
            self.columns.append(PREDICTION_FEATURE)
        self.evaluators = [FeatureEvaluator(profile.features[name]) for name in self.columns]
        self._encoders = [
            None if isinstance(profile.features[name], NumericProfile) else ev.encoder.encode_many
            for name, ev in zip(self.columns, self.evaluators)
        ]
        self._numeric_columns = [
            j
            for j, (name, encoder) in enumerate(zip(self.columns, self._encoders))
            if encoder is None and name != PREDICTION_FEATURE
        ]
        # One getter for all of them (itemgetter needs at least one name, and gives a tuple from two on).
        self._numeric_values = (
            operator.itemgetter(*(self.columns[j] for j in self._numeric_columns))
            if len(self._numeric_columns) >= 2
            else None
        )

    def _set_dependence(self, profile: DependenceProfile | None) -> None:
        """The dependence test on the first ``dependence_max_features`` of the profile's inputs (none: off)."""
        self.dependence: DependenceTest | None = None
        count = self.config.dependence_max_features
        if profile is None or count < 2 or not set(profile.features) <= set(self.columns):
            return
        features, correlations, variances = profile.first(count)
        test = DependenceTest(
            features, correlations, variances, profile.rows, self.config.dependence_false_alarm_windows
        )
        if test.pairs:
            self.dependence = test
            self._dependence_columns = [self.columns.index(name) for name in features]

    def encode(self, events: list[PredictionEvent], numbers_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows of bucket codes / numbers (NaN = missing, or a string in a numeric column). ``numbers_only``:
        the schema stage found every event's features as registered, numeric ones numbers or nulls."""
        features = list(map(_FEATURES, events))
        out = np.empty((len(events), len(self.columns) + self.scored))
        numeric = self._encode_numeric(features, out, numbers_only)
        for j, (name, encoder) in enumerate(zip(self.columns, self._encoders)):
            if j not in numeric:
                values = (
                    list(map(_PREDICTION, events)) if name == PREDICTION_FEATURE else [f.get(name) for f in features]
                )
                out[:, j] = _encoded_column(values, encoder)
        if self.scored:
            out[:, -1] = [(e.scores or {}).get(str(e.prediction), math.nan) for e in events]
        ts = np.fromiter(map(_EPOCH, events), dtype=float, count=len(events))
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
        if not numbers_only and not NUMBER_TYPES.issuperset(map(type, values)):
            return set()
        out[:, columns] = np.array(values, dtype=float).reshape(-1, len(columns))  # None (a null) becomes NaN
        return set(columns)

    def evaluate(self, window: ClosedWindow) -> tuple[list[dict], list[Alert]]:
        """Result rows of the window, and the alerts (CloudEvents) it raises."""
        small = window.rows.shape[0] < (self.config.min_window_rows if self.config.window_seconds else 1)
        stats = evaluate_window(self.evaluators, window.rows[:, : len(self.columns)])
        zs: dict[str, float] = {}  # the inputs' window z, for the evidence across them
        verdicts = [self._judge(name, feature, small, zs) for name, feature in zip(self.columns, stats)]
        alerts = [self._feature_alert(verdict, window) for verdict in verdicts]
        combined = None
        if zs:
            rho = window.rows.shape[0] / (window.rows.shape[0] + min(self.reference_rows, KS_SAMPLE_SIZE))
            combined = self.combined.add(zs, rho)
        alerts.append(self._dataset_check(verdicts, window, small, combined))
        if not small:
            alerts += [
                self._multivariate_check(window),
                self._dependence_check(window),
                self._performance_estimate(window),
            ]
        return [self._result_row(verdict, window) for verdict in verdicts], [a for a in alerts if a]

    def _judge(self, name: str, stats: FeatureStats, small: bool, zs: dict[str, float]) -> FeatureVerdict:
        """The feature's verdict; an input's window z goes into ``zs``."""
        raised = False
        if name != PREDICTION_FEATURE and not small:
            # Evidence summed over windows: a drift too gradual for one window's PSI shows here first.
            rho = stats.n / (stats.n + min(self.reference_rows, KS_SAMPLE_SIZE))
            zs[name] = window_z(stats, self.reference_rows)
            raised = self.evidence.add(name, zs[name], rho)
        return judge(name, stats, self.config, small, raised)

    def _result_row(self, verdict: FeatureVerdict, window: ClosedWindow) -> dict:
        stats = verdict.stats
        return {
            "model_id": self.model_id,
            "version": self.version,
            "window_index": window.index,
            "feature": verdict.name,
            "start_ts": window.start_ts,
            "end_ts": window.end_ts,
            "n": stats.n,
            "psi": stats.psi,
            "ks_statistic": _finite(stats.ks_statistic),
            "ks_pvalue": _finite(stats.ks_pvalue),
            "chi2_statistic": stats.chi2_statistic,
            "chi2_pvalue": stats.chi2_pvalue,
            "missing_share": stats.missing_share,
            "severity": verdict.upper,
        }

    def _feature_alert(self, verdict: FeatureVerdict, window: ClosedWindow) -> Alert | None:
        stats, name = verdict.stats, verdict.name
        alert_type = DataDriftAlert if verdict.is_input else PredictionDriftAlert
        self.episodes[name], alert = self._transition(
            self.episodes.get(name, CALM),
            name,
            verdict.upper,
            verdict.lower,
            window,
            alert_type,
            DataDrift,
            dict(
                feature=name,
                psi=stats.psi,
                ks_statistic=_finite(stats.ks_statistic),
                ks_pvalue=_finite(stats.ks_pvalue),
                chi2_statistic=_finite(stats.chi2_statistic),
                chi2_pvalue=_finite(stats.chi2_pvalue),
                missing_share=stats.missing_share,
                rule=verdict.rule,
            ),
        )
        return alert

    def _dataset_check(
        self, verdicts: list[FeatureVerdict], window: ClosedWindow, small: bool, combined: CombinedVerdict | None
    ) -> Alert | None:
        """Dataset drift: the share of input features drifting (significant: significantly) reaches
        ``dataset_share``; or, while no input drifts on its own, the evidence across them (``combined``) crossed
        its threshold (moderate, ``"rule": "cumulative"``, for one window, as a feature's cumulative verdict)."""
        c, inputs = self.config, [verdict for verdict in verdicts if verdict.is_input]
        drifted = [verdict.name for verdict in inputs if verdict.upper != STABLE]
        share = len(drifted) / len(inputs) if inputs else 0.0
        significant_share = sum(verdict.upper == SIGNIFICANT for verdict in inputs) / len(inputs) if inputs else 0.0
        level = STABLE
        if inputs and not small and share >= c.dataset_share:
            level = SIGNIFICANT if significant_share >= c.dataset_share else MODERATE
        numbers: dict = dict(
            drifted_share=share,
            drifted_features=drifted,
            threshold=c.dataset_share,
            ranked=rank_drifted(inputs, drifted, self.importance),
        )
        upper = level
        # A drifting input raises its own alert: the same evidence again as a dataset alert would say nothing new.
        if not drifted and combined is not None and combined.raised:
            upper = MODERATE
            numbers.update(
                rule="cumulative",
                evidence_z=combined.z,
                evidence_threshold=combined.threshold,
                evidence_features=[EvidenceShare(feature=name, share=part) for name, part in _carrying(combined)],
            )
        self.episodes[DATASET], alert = self._transition(
            self.episodes.get(DATASET, CALM), DATASET, upper, level, window, DatasetDriftAlert, DatasetDrift, numbers
        )
        return alert

    def _multivariate_check(self, window: ClosedWindow) -> Alert | None:
        """Mean PCA reconstruction error of the window against the reference, in standard errors."""
        if self.multivariate is None:
            return None
        mv, c = self.multivariate, self.config
        errors = mv.row_errors(window.rows[:, self._multivariate_columns])
        z = (float(errors.mean()) - mv.error_mean) / (mv.error_sd / math.sqrt(errors.size))
        upper = SIGNIFICANT if z > c.multivariate_sigmas else STABLE
        lower = SIGNIFICANT if z > c.multivariate_sigmas * c.psi_exit_ratio else STABLE
        return self._check(
            MULTIVARIATE,
            upper,
            lower,
            z,
            window,
            MultivariateDriftAlert,
            MultivariateDrift,
            dict(
                features=mv.features,
                value=float(errors.mean()),
                reference=mv.error_mean,
                z=z,
                threshold=c.multivariate_sigmas,
            ),
        )

    def _dependence_check(self, window: ClosedWindow) -> Alert | None:
        """Each pair's rank correlation in the window against the reference (``models.drift.dependence``): a
        pair drifts when its |z| exceeds the threshold calibrated for the pairs (not noise), and its change of
        correlation decides the band, as PSI does for a feature; the lower band applies the exit ratio to both."""
        if self.dependence is None or window.rows.shape[0] < DEPENDENCE_MIN_ROWS:
            return None
        test, c = self.dependence, self.config
        result = test(window.rows[:, self._dependence_columns])
        bands = (c.dependence_moderate, c.dependence_significant)
        upper = _band(result.largest_change(test.threshold), *bands)
        lower = _band(result.largest_change(test.threshold * c.psi_exit_ratio), *bands, scale=c.psi_exit_ratio)
        return self._check(
            DEPENDENCE,
            upper,
            lower,
            result.z,
            window,
            DependenceDriftAlert,
            DependenceDrift,
            dict(
                pairs=[
                    DependencePair(features=list(p.features), reference=p.reference, value=p.value, z=p.z)
                    for p in result.top
                ],
                z=result.z,
                threshold=test.threshold,
                moderate=c.dependence_moderate,
                significant=c.dependence_significant,
                pairs_tested=test.pairs,
                features=list(test.features),
            ),
        )

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
        return self._check(
            PERFORMANCE,
            upper,
            lower,
            estimate,
            window,
            PerformanceEstimateAlert,
            PerformanceEstimate,
            dict(
                value=estimate, reference=self.accuracy, threshold=self.accuracy - gap, scored_rows=int(confidence.size)
            ),
        )

    def _check(
        self,
        name: str,
        upper: str,
        lower: str,
        value: float,
        window: ClosedWindow,
        event_type: type[Alert],
        data_type: type,
        numbers: dict,
    ) -> Alert | None:
        """A window-level check's episode, kept with the value of its last window."""
        previous = self.checks[name].episode if name in self.checks else CALM
        episode, alert = self._transition(previous, name, upper, lower, window, event_type, data_type, numbers)
        self.checks[name] = CheckEpisode(*episode, value)
        return alert

    def _transition(
        self,
        previous: Episode,
        name: str,
        upper: str,
        lower: str,
        window: ClosedWindow,
        event_type: type[Alert],
        data_type: type,
        numbers: dict,
    ) -> tuple[Episode, Alert | None]:
        """The episode after this window, and its alert if it started, escalated or ended."""
        episode, change = next_episode(previous, upper, lower, self.config.end_after)
        if change is None:
            return episode, None
        data = data_type(
            model_id=self.model_id,
            model_version=self.version,
            severity=episode.level if change != "ended" else STABLE,
            episode=change,
            **numbers,
            window=Window(
                index=window.index,
                start_ts=cloudevents.rfc3339(window.start_ts),
                end_ts=cloudevents.rfc3339(window.end_ts),
                n=int(window.rows.shape[0]),
            ),
            segment=None if self.segment is None else self.segment.values,
        )
        # A segment's windows are numbered on their own: its key keeps the ids apart from the whole stream's.
        where = () if self.segment is None else (self.segment.key,)
        return episode, event_type(
            id=cloudevents.event_id(self.model_id, self.version, _DETECTOR[event_type], name, window.index, *where),
            subject=self.model_id,
            time=cloudevents.rfc3339(window.end_ts),
            data=data,
        )

    def state_blob(self) -> tuple[str, int]:
        """The episodes, evidence and buffer layout to store, and their format number."""
        return CODEC.dump(
            DataDriftState.model_construct(
                episodes=self.episodes,
                checks=self.checks,
                evidence=self.evidence.recent,
                dataset_evidence=self.combined.recent,
                confidence_column=bool(self.scored),
            )
        )

    def state_columns(self) -> dict:
        return self.window.to_columns()


def _carrying(combined: CombinedVerdict, most: int = 10, part: float = 0.9) -> list[tuple[str, float]]:
    """The inputs that carry ``part`` of the combined evidence, largest share first (at most ``most``)."""
    out, total = [], 0.0
    for name, share in combined.shares[:most]:
        out.append((name, share))
        total += share
        if total >= part:
            break
    return out


def _band(change: float, moderate: float, significant: float, scale: float = 1.0) -> str:
    if change >= significant * scale:
        return SIGNIFICANT
    return MODERATE if change >= moderate * scale else STABLE


def _encoded_column(values: list, encoder) -> np.ndarray | list:
    """One column's values as numbers: a numeric one's (None, or a string, becomes NaN), a categorical
    one's bucket codes (``encoder``: ``CategoricalEncoder.encode_many``)."""
    if encoder is not None:
        return encoder(values)
    try:
        return np.array(values, dtype=float)  # None becomes NaN
    except (TypeError, ValueError):  # a string in a numeric column counts as missing
        return [v if v.__class__ in (int, float) else math.nan for v in values]


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
        # The pairs of versions registered before profiles kept them, measured from their test sets (about
        # a second with 50 inputs): a version's test set never changes, so they outlive a reset.
        self._measured_pairs: dict[tuple[str, str, int], DependenceProfile | None] = {}
        # Imported here: the segments' monitors are ModelVersionMonitors (worker.monitor.segments imports this).
        from undertow.worker.monitor.segments import SegmentDataDrift

        self._segments = SegmentDataDrift(alerts_topic)

    def reset(self) -> None:
        """Forget cached state; it is reloaded from the database (after a rewind or rebalance)."""
        self._monitors.clear()
        self._segments.reset()

    def apply(self, session: Session, batch: Batch) -> None:
        numbers_only = batch.shared.get(NUMBERS_ONLY, ())
        spread = batch.shared.get(SPREAD)
        for key, items in batch_prediction_groups(session, batch).items():
            monitor = self._monitor(session, *key)
            if monitor is None:
                continue
            if spread is not None and key[0] in spread.models:
                self._encode_for_merge(spread, key, monitor, items, key in numbers_only)
                continue
            rows, ts = monitor.encode([event for _, event in items], numbers_only=key in numbers_only)
            self.add_rows(session, key, monitor, rows, ts)
            self._segments.apply(session, key, [event for _, event in items], key in numbers_only)

    def add_rows(
        self, session: Session, key: tuple[str, str], monitor: ModelVersionMonitor, rows: np.ndarray, ts: np.ndarray
    ) -> None:
        """Encoded rows into the version's windows; each closed window evaluated, its results and alerts
        recorded; the state saved. Also the merge's entry for a spread model's rows."""
        for window in monitor.window.add(rows, ts):
            results, alerts = monitor.evaluate(window)
            repo.add_window_results(session, results)
            for alert in alerts:
                record_alert(session, self.alerts_topic, alert)
                if (
                    self.policy is not None
                    and monitor.config.retrain_on_data_drift
                    and isinstance(alert, DatasetDriftAlert)
                    and alert.data.severity == SIGNIFICANT
                ):
                    self.policy.consider(session, alert, monitor.config, reason="data drift")
        blob, state_format = monitor.state_blob()
        repo.save_drift_state(session, *key, monitor.state_columns(), blob, state_format, exists=monitor.stored)
        monitor.stored = True

    @staticmethod
    def _encode_for_merge(
        spread: SpreadCollector, key: tuple[str, str], monitor: ModelVersionMonitor, items: list, numbers_only: bool
    ) -> None:
        """A spread model's predictions, encoded per source partition for its partials: the windows are the
        merge's (its segments are not watched)."""
        by_partition: dict[int, list] = defaultdict(list)
        for position, event in items:
            by_partition[position.partition].append(event)
        for partition, events in by_partition.items():
            rows, ts = monitor.encode(events, numbers_only=numbers_only)
            spread.add_rows(key[0], partition, key[1], rows, ts)

    def monitor(self, session: Session, model_id: str, version: str) -> ModelVersionMonitor | None:
        return self._monitor(session, model_id, version)

    def _monitor(self, session: Session, model_id: str, version: str) -> ModelVersionMonitor | None:
        monitor = self._monitors.get((model_id, version))
        if monitor is None:
            row = registry.find_version(session, model_id, version)
            if row is None:
                return None
            accuracy = (
                1.0 - row.baseline_error_mean
                if row.task == "classification" and row.baseline_error_mean is not None
                else None
            )
            profile = ReferenceProfile.model_validate_json(row.profile)
            config = DriftConfig.model_validate_json(row.drift_config)
            # A version registered before profiles kept the pairs: measured once on its stored test set
            # (rows of its reference), when it has one.
            dependence = None
            if profile.dependence is None and row.test_set and config.dependence_max_features >= 2:
                key = (model_id, version, config.dependence_max_features)
                if key not in self._measured_pairs:
                    rows = json.loads(row.test_set)["features"]
                    self._measured_pairs[key] = dependence_from_rows(rows, profile, config.dependence_max_features)
                dependence = self._measured_pairs[key]
            monitor = ModelVersionMonitor(
                model_id,
                version,
                profile,
                config,
                repo.drift_state(session, model_id, version),
                accuracy,
                dependence,
            )
            self._monitors[(model_id, version)] = monitor
        return monitor
