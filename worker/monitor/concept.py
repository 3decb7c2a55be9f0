"""The concept-drift stage: join labels to predictions, watch the error stream,
ask for retraining.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from pydantic_core import to_json
from sqlalchemy.orm import Session

from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import (MIN_CALIBRATION_SAMPLE, Cusum, PageHinkley, PredictionTimeCusum, RollingMean,
                                    cusum_threshold, cusum_threshold_from, sample_skewness)
from undertow.models.drift.errors import MISCLASSIFICATION, prediction_error, score_loss
from undertow.storage import repo
from undertow.worker.monitor.alerts import record_alert
from undertow.worker.monitor.join_buffer import JoinBuffer, Waiting
from undertow.worker.monitor.model_events import batch_champions
from undertow.worker.monitor.registration import FORGOTTEN
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.events import LabelEvent, PredictionEvent
from undertow.worker.runtime.output_events import Baseline, ConceptDrift, ConceptDriftAlert

log = logging.getLogger(__name__)

REFINE_EVERY = 1000  # labels between refinements of a production baseline
# Join buffers held in memory across batches; beyond it those of models not in the batch are dropped
# (restored from join_pending when their model comes back), so memory does not grow with the model count.
MAX_BUFFERS_IN_MEMORY = 10_000
TREND_SIGMAS = 2.5  # the newest labels this far above the baseline's: a change, not more of the baseline


class ErrorStreamMonitor:
    """Detectors and drift episodes of one model version's error stream.

    1. **Production baseline.** The version's first ``production_baseline_labels``
       errors estimate its production level and spread; the detectors are
       silent meanwhile. If production is worse than the validation estimate
       by more than ``deployment_gap_margin`` (relative, and significant at
       2 standard errors), one ``deployment_gap`` alert says so; a gap not
       yet significant is tested again at each refinement of the baseline
       (at 2.5 standard errors, for the repeated looks). From then on
       errors enter the detectors in units of the *production* baseline, and
       the CUSUM thresholds are calibrated on those production errors (allowing
       for the baseline being an estimate, and tightened for the smaller
       allowance as it refines: at each doubling of its first labels and once
       it settles on ``production_refine_labels``), so a
       stationary stream stays silent whatever its level. (With
       ``production_baseline_labels = 0`` the validation baseline is used.)
    2. **Change detection.** Page-Hinkley and the rolling means in
       label-arrival order, and two CUSUMs in prediction time (labels counted
       at their prediction's time, however late they come), one tuned to a
       step of 2k and one to a step of k, each at its own calibrated
       threshold. The first to
       fire starts an episode: one ``started`` alert, with the estimated
       start of the change in prediction time.
    3. **Escalation.** Inside an episode the next ``rolling_window`` errors
       estimate the episode's own level; an upper CUSUM against that level
       raises an ``escalated`` alert when the error rises significantly
       again, and then the level is estimated anew. An episode cannot hide
       a second, larger change.
    4. **End.** The episode ends (an ``ended`` alert) once the rolling mean
       has stayed within one standard error of the baseline for a whole
       window of evaluations, at least a window of labels after it began;
       then every detector starts afresh. A new version has its own monitor.
    5. **Log loss.** Where a classifier sends its scores, the log loss of the
       true class is a second stream with the same rules (``update_log_loss``):
       it moves before the 0/1 error does when the model grows unsure or
       confidently wrong. No validation estimate exists for it, so its
       baseline is production's first labels (at least 1,000) and it has no
       ``deployment_gap``; its alerts say ``metric: log_loss``.
    """

    def __init__(self, model_id: str, version: str, config: DriftConfig, mean: float | None, sd: float | None,
                 state=None, error_sample: list[float] | None = None, stream: str = "error"):
        self.model_id, self.version, self.config, self.stream = model_id, version, config, stream
        # None where no validation estimate exists (log loss): the production baseline alone counts.
        self.validation = None if mean is None else (mean, _floored_sd(mean, sd))
        self.stored = state is not None
        self.labels, self.error_sum, self.in_episode = 0, 0.0, False
        self.episode_started_label: int | None = None
        self.episodes, self.silenced_alarms, self.calm_evaluations = 0, 0, 0
        blob = json.loads(state.detectors) if state is not None else {}
        if blob and "detectors" not in blob:  # state written before the production baseline existed
            blob = {"detectors": blob, "production": {"mean": mean, "sd": sd, "errors": None}}
        production = blob.get("production") or (
            {"mean": mean, "sd": sd, "errors": None} if config.production_baseline_labels == 0 and mean is not None
            else {"mean": None, "sd": None, "errors": []})
        self.collected: list[float] | None = production["errors"]  # None once the baseline is set
        self.baseline_labels: int | None = production.get("labels")  # what a production baseline rests on
        # Cautious learning: while no episode is open the production baseline keeps learning from
        # further labels, up to production_refine_labels, so its estimate (and the thresholds that
        # allow for its error) tighten; sums of the errors since the baseline began.
        self.refine = production.get("refine")
        # The first labels of the production baseline (count, mean): a refinement compares the newest with
        # them. Its own key, so state written here still loads in versions before it. None in older state.
        self.first_labels: list | None = production.get("first_labels")
        # A gap too small to be significant on the first labels is tested again as the baseline refines.
        self.gap_pending: bool = production.get("gap_pending", False)
        self.validation_sample = error_sample
        # The CUSUM thresholds ahead, [labels, k's, k/2's] each, for when the refining baseline reaches
        # those labels: the smaller allowance they earn, calibrated with the first labels, on the same
        # errors, while those are at hand. State from before kept one pair, for when it settles.
        self.tighten_at: list[list[float]] | None = production.get("tighten_at")
        if self.tighten_at is None and production.get("settled_thresholds") is not None:
            self.tighten_at = [[config.production_refine_labels, *production["settled_thresholds"]]]
        self.cusum_h: float | None = production.get("cusum_h")
        self.small_cusum_h: float | None = production.get("small_cusum_h")
        if self.cusum_h is not None and self.small_cusum_h is None:
            self.small_cusum_h = self._small_threshold_for_old_state(production.get("labels"))
        # The baseline errors' skewness, for the rolling means' thresholds (None: state from before it, or
        # a validation baseline without its sample: thresholds for normal errors, as then).
        self.skewness: float | None = production.get("skewness")
        if (state is None and config.production_baseline_labels == 0 and error_sample
                and len(error_sample) >= MIN_CALIBRATION_SAMPLE):
            self.skewness = sample_skewness(np.array(error_sample))
        if production["mean"] is None:
            self.mean, self.sd = self.validation or (0.0, 1.0)  # placeholders until the baseline is set
        else:
            self.mean, self.sd = production["mean"], _floored_sd(production["mean"], production["sd"])
        # While the production baseline is collected the detectors are silent, and are rebuilt (and
        # calibrated) once it is set: calibrating the placeholders would be wasted.
        self._build_detectors(error_sample if self.collected is None else None)
        episode = blob.get("episode") or {}
        self.level_z: list[float] = episode.get("level_z", [])
        self.level: float | None = episode.get("level")
        self.level_from: float | None = episode.get("level_from")  # prediction time the level is measured from
        self.escalation: Cusum | None = None
        self.escalation_pt: PredictionTimeCusum | None = None
        if self.level is not None:
            self._start_escalation()
            self.escalation.load(episode["escalation"])
            self.escalation_pt.load(episode["escalation_pt"])
        if state is not None:
            self.labels, self.error_sum, self.in_episode = state.labels, state.error_sum, state.in_episode
            self.episode_started_label, self.episodes = state.episode_started_label, state.episodes
            self.silenced_alarms, self.calm_evaluations = state.silenced_alarms, state.calm_evaluations
            for name, numbers in blob["detectors"].items():
                if name in self.detectors:  # state written before has an arrival-order "cusum" as well
                    self.detectors[name].load(numbers)
        loss_state = blob.get("log_loss")
        self.log_loss: ErrorStreamMonitor | None = None if loss_state is None else self._log_loss_monitor(
            SimpleNamespace(**loss_state))

    def _log_loss_monitor(self, state=None) -> "ErrorStreamMonitor":
        config = self.config.model_copy(update={
            "production_baseline_labels": max(self.config.production_baseline_labels, 1000)})
        return ErrorStreamMonitor(self.model_id, self.version, config, None, None, state, stream="log_loss")

    def _small_threshold_for_old_state(self, baseline_labels: int | None) -> float:
        """The k/2 CUSUM's threshold for state written before it existed (the production errors are gone).

        The calibrated k threshold scaled as the normal-theory thresholds of the two reference values are,
        and at least the calibration on the validation sample against its own level, with the same
        allowance for an estimated baseline (0/1 errors need more than the normal ratio gives; calibrating
        against the production level instead would set it too low when production is worse).
        """
        k, every = self.config.cusum_k, self.config.cusum_false_alarm_every
        scaled = self.cusum_h * cusum_threshold(k / 2, every) / cusum_threshold(k, every)
        if (self.validation is None or not self.validation_sample
                or len(self.validation_sample) < MIN_CALIBRATION_SAMPLE):
            return scaled
        reference_z = _reference_z(self.validation_sample, *self.validation, baseline_labels)
        return max(scaled, cusum_threshold_from(reference_z, k / 2, every))

    def update_log_loss(self, loss: float, label_ts: float,
                        prediction_ts: float | None = None) -> list[ConceptDriftAlert]:
        """Feed the log loss of one labelled prediction whose scores were sent; the alerts it raises."""
        if self.log_loss is None:
            self.log_loss = self._log_loss_monitor()
        return self.log_loss.update(loss, "log_loss", label_ts, prediction_ts)

    def _build_detectors(self, reference_errors: list[float] | None) -> None:
        """Fresh detectors; the CUSUM thresholds are calibrated once per baseline on its errors (with those
        it tightens to as it refines), then kept.

        A production baseline is estimated from a few labels, so it is off by about one standard
        error; the thresholds allow for that (calibrated as if the errors sat 2 standard errors
        above it: the promised false-alarm rate then holds for about 39 baselines in 40).
        """
        c = self.config
        estimated_from = self.baseline_labels
        reference_z = None if not reference_errors else _reference_z(reference_errors, self.mean, self.sd,
                                                                       estimated_from)
        if self.cusum_h is None:
            self.cusum_h = cusum_threshold_from(reference_z, c.cusum_k, c.cusum_false_alarm_every)
        if self.small_cusum_h is None:
            self.small_cusum_h = cusum_threshold_from(reference_z, c.cusum_k / 2, c.cusum_false_alarm_every)
        # No CUSUM in arrival order: on the benchmark's 150 changes under varying label delays it started
        # no episode before the prediction-time ones, and on long stationary streams it raised a third of
        # the false alarms.
        self.detectors = {
            "page_hinkley": PageHinkley(c.ph_delta, c.ph_threshold),
            "rolling_mean": RollingMean(c.rolling_window, c.rolling_step, c.rolling_sigmas, estimated_from,
                                        self.skewness or 0.0),
            # Slow, gradual changes: a mean over a longer window notices a smaller shift, and is nearer
            # normal (less skewed by 0/1 or heavy-tailed errors), so a lower threshold keeps its false alarms.
            "rolling_mean_long": RollingMean(c.rolling_long_window, c.rolling_step, c.rolling_long_sigmas,
                                             estimated_from, self.skewness or 0.0, weights="linear"),
            # At an arrival-order CUSUM's threshold: in prediction time it alarms less often on the same
            # stream, so the promised false-alarm rate holds.
            "prediction_time_cusum": PredictionTimeCusum(c.cusum_k, self.cusum_h, c.pt_bucket_seconds,
                                                         c.pt_horizon_buckets),
            "prediction_time_cusum_small": PredictionTimeCusum(c.cusum_k / 2, self.small_cusum_h,
                                                               c.pt_bucket_seconds, c.pt_horizon_buckets),
        }
        # Split once here, not per label; arrival order first, as the names above (the first to fire is reported).
        self._in_arrival_order = [(name, d) for name, d in self.detectors.items()
                                  if not isinstance(d, PredictionTimeCusum)]
        self._in_prediction_time = [(name, d) for name, d in self.detectors.items()
                                    if isinstance(d, PredictionTimeCusum)]

    def _start_escalation(self) -> None:
        """Upper CUSUMs (arrival order and prediction time) against the episode's own level."""
        c = self.config
        self.level = float(np.mean(self.level_z))
        self.escalation = Cusum(c.cusum_k, c.cusum_false_alarm_every,
                                reference_z=np.array(self.level_z) - self.level if len(self.level_z) >= 100 else None)
        self.escalation_pt = PredictionTimeCusum(c.cusum_k, self.escalation.h, c.pt_bucket_seconds,
                                                 c.pt_horizon_buckets)

    def update(self, error: float, metric: str, label_ts: float,
               prediction_ts: float | None = None) -> list[ConceptDriftAlert]:
        """Feed one error (at its label's and its prediction's event time); the alerts it raises."""
        self.labels += 1
        self.error_sum += error
        if self.collected is not None:
            return self._collect_baseline(error, metric, label_ts)
        gap_alerts = self._refine_baseline(error, metric, label_ts) if (
            self.refine is not None and not self.in_episode) else []
        z = (error - self.mean) / self.sd
        predicted_at = label_ts if prediction_ts is None else prediction_ts
        fired = []
        for name, detector in self._in_arrival_order:
            detector.update(z)
            if detector.drift_detected:
                fired.append(name)
        for name, detector in self._in_prediction_time:
            detector.update(z, predicted_at)
            if detector.drift_detected:
                fired.append(name)
        if self.in_episode:
            self.silenced_alarms += len(fired)
            return self._during_episode(z, metric, label_ts, predicted_at)
        if not fired:
            return gap_alerts
        self.in_episode, self.episode_started_label = True, self.labels
        self.gap_pending = False  # a gap measured across a change would be the change's, not the deployment's
        self.episodes += 1
        self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None
        name = fired[0]
        detector = self.detectors[name]
        change = self._change_ts(name)
        self.level_from = change if change is not None else predicted_at
        if isinstance(detector, RollingMean):
            value, threshold = detector.value, detector.threshold
        else:
            value, threshold = detector.statistic, getattr(detector, "h", self.config.ph_threshold)
        reported = "prediction_time_cusum" if name.startswith("prediction_time_cusum") else name
        return [*gap_alerts, self._alert(reported, "started", value, threshold, metric, label_ts, change=change)]

    def _change_ts(self, fired: str) -> float | None:
        """When the change began, in prediction time: the estimate of the prediction-time CUSUM that fired,
        else of the one for steps of 2k, else of the one for steps of k (None while all sit at 0)."""
        first = [fired] if fired.startswith("prediction_time_cusum") else []
        for name in (*first, "prediction_time_cusum", "prediction_time_cusum_small"):
            if self.detectors[name].change_ts is not None:
                return self.detectors[name].change_ts
        return None

    def _collect_baseline(self, error: float, metric: str, label_ts: float) -> list[ConceptDriftAlert]:
        self.collected.append(error)
        if len(self.collected) < self.config.production_baseline_labels:
            return []
        errors = np.array(self.collected)
        self.collected, self.baseline_labels = None, errors.size
        mean, sd = float(errors.mean()), float(errors.std())
        if self.config.production_refine_labels > errors.size:
            self.refine = [int(errors.size), float(errors.sum()), float((errors ** 2).sum())]
            self.first_labels = [int(errors.size), mean]
        # Calibrate on the (larger) validation sample standardised by its own level, and on the production
        # errors: a thousand errors say little about the tail, which sets a CUSUM's false-alarm rate.
        self.mean, self.sd = mean, _floored_sd(mean, sd)
        self.skewness = sample_skewness(errors)
        self.cusum_h, self.small_cusum_h = self._thresholds(errors, errors.size)
        if self.refine is not None:
            self.tighten_at = [[labels, *self._thresholds(errors, labels)] for labels in self._milestones(errors.size)]
        self._build_detectors(None)
        log.info("%s@%s: production baseline of the %s from %d labels: %.4g (sd %.4g); validation %s",
                 self.model_id, self.version, self.stream, errors.size, mean, sd,
                 "unknown" if self.validation is None else f"{self.validation[0]:.4g}")
        alerts = self._deployment_gap(errors.size, 2.0, metric, label_ts)
        self.gap_pending = not alerts and self.validation is not None and self.refine is not None
        return alerts

    def _thresholds(self, errors: np.ndarray, labels: int) -> tuple[float, float]:
        """The CUSUM thresholds (k, k/2) for a production baseline resting on ``labels`` labels: the larger
        of those for its first ``errors`` and, where there is one, for the validation sample, each
        standardised by its own level and spread (the shape of the errors; where the baseline may lie is
        the allowance's business: two standard errors, 0.063 baseline sd on 1,000 labels, 0.02 on 10,000)."""
        mean = float(errors.mean())
        samples = [_reference_z(errors, mean, _floored_sd(mean, float(errors.std())), labels)]
        if (self.validation is not None and self.validation_sample
                and len(self.validation_sample) >= MIN_CALIBRATION_SAMPLE):
            samples.insert(0, _reference_z(self.validation_sample, *self.validation, labels))
        every = self.config.cusum_false_alarm_every
        return (_threshold_for_all(samples, self.config.cusum_k, every),
                _threshold_for_all(samples, self.config.cusum_k / 2, every))

    def _settles_on(self, labels: int) -> int:
        """How many labels a baseline set on ``labels`` rests on when it settles: refinements come every
        ``REFINE_EVERY`` labels, and the first at or past ``production_refine_labels`` is the last."""
        return REFINE_EVERY * math.ceil(max(self.config.production_refine_labels, labels + 1) / REFINE_EVERY)

    def _milestones(self, labels: int) -> list[int]:
        """The label counts at which the CUSUM thresholds of a refining baseline set on ``labels`` tighten:
        the refinement at or past each doubling of ``labels``, and the one it settles on. The allowance
        for an estimated baseline shrinks with the square root of its labels, so a change that comes
        while the baseline still refines is met by thresholds that have kept up."""
        settles, doubled, points = self._settles_on(labels), 2 * labels, set()
        while doubled < settles:
            points.add(REFINE_EVERY * math.ceil(doubled / REFINE_EVERY))
            doubled *= 2
        return [*sorted(points - {settles}), settles]

    def _deployment_gap(self, labels: int, sigmas: float, metric: str, label_ts: float) -> list[ConceptDriftAlert]:
        """One alert if the production baseline exceeds the validation estimate by more than the margin (a
        practical difference) and by ``sigmas`` standard errors of the difference (not chance; the standard
        error counts the validation estimate's own, from its sample, beside the production baseline's)."""
        if self.validation is None:
            return []
        validation_mean, validation_sd = self.validation
        gap = self.mean - validation_mean
        variance = self.sd ** 2 / labels
        if self.validation_sample:
            variance += validation_sd ** 2 / len(self.validation_sample)
        if gap > self.config.deployment_gap_margin * abs(validation_mean) and gap > sigmas * math.sqrt(variance):
            return [self._alert("production_baseline", "deployment_gap", self.mean,
                                validation_mean * (1 + self.config.deployment_gap_margin), metric, label_ts,
                                unit="error", baseline=self.validation, severity="moderate")]
        return []

    def _refine_baseline(self, error: float, metric: str, label_ts: float) -> list[ConceptDriftAlert]:
        n, total, squares = self.refine
        n, total, squares = n + 1, total + error, squares + error * error
        self.refine = [n, total, squares]
        if n % REFINE_EVERY:
            return []
        # The labels since the last refinement against the first ones (state from before this rule: against
        # all before them). A deployment's level is there from its first label; if the newest are clearly
        # higher, a change is under way, and taking it in would report it as a gap and hide it from the
        # detectors. The baseline then stays as it was and stops refining.
        before, mean_before = self.baseline_labels, self.mean
        newest = n - before  # at least one: n has grown past the labels the baseline rests on
        first_n, first_mean = self.first_labels or (before, mean_before)
        if ((total - mean_before * before) / newest - first_mean
                > TREND_SIGMAS * self.sd * math.sqrt(1 / newest + 1 / first_n)):
            self.refine, self.gap_pending, self.tighten_at = None, False, None
            log.info("%s@%s: the newest %d labels of the production baseline are above its first %d: a change, "
                     "not the deployment's level; the baseline stays at %.4g", self.model_id, self.version,
                     newest, first_n, self.mean)
            return []
        self.mean = total / n
        self.sd = _floored_sd(self.mean, math.sqrt(max(squares / n - self.mean ** 2, 0.0)))
        self.baseline_labels = n
        for name in ("rolling_mean", "rolling_mean_long"):
            self.detectors[name].set_baseline_labels(n)
        alerts = []
        if self.gap_pending:
            # Tested again at every refinement: 2.5 standard errors allow for the repeated looks.
            alerts = self._deployment_gap(n, 2.5, metric, label_ts)
            self.gap_pending = not alerts
        if self.tighten_at and self.tighten_at[0][0] <= n:
            self._tighten_thresholds(n)
        if n >= self.config.production_refine_labels:
            # Settled: counts past it (none, as calibrated) are never reached.
            self.refine, self.gap_pending, self.tighten_at = None, False, None
            log.info("%s@%s: production baseline settled on %d labels: error %.4g (sd %.4g)", self.model_id,
                     self.version, n, self.mean, self.sd)
        return alerts

    def _tighten_thresholds(self, labels: int) -> None:
        """The CUSUMs take the thresholds for the baseline's ``labels`` and keep their sums: the allowance
        for an estimated baseline shrinks with the square root of its labels, and with it the threshold a
        small shift must reach. Never a looser one: calibrations on different allowances need not be
        monotonic to the last digit."""
        due = [t for t in self.tighten_at if t[0] <= labels]
        self.tighten_at = self.tighten_at[len(due):] or None
        self.cusum_h, self.small_cusum_h = min(self.cusum_h, due[-1][1]), min(self.small_cusum_h, due[-1][2])
        for name, h in (("prediction_time_cusum", self.cusum_h), ("prediction_time_cusum_small", self.small_cusum_h)):
            self.detectors[name].h = h

    def _during_episode(self, z: float, metric: str, label_ts: float,
                        prediction_ts: float) -> list[ConceptDriftAlert]:
        alerts = []
        if self.level is None:
            # The episode's level from predictions made after the change began: late labels of
            # earlier predictions would pull it down and make the next rise look like an escalation.
            if self.level_from is None or prediction_ts >= self.level_from:
                self.level_z.append(z)
            if len(self.level_z) >= self.config.rolling_window:
                self._start_escalation()
        else:
            self.escalation.update(z - self.level)
            self.escalation_pt.update(z - self.level, prediction_ts)
            fired = self.escalation if self.escalation.drift_detected else (
                self.escalation_pt if self.escalation_pt.drift_detected else None)
            if fired is not None:
                change = self.escalation_pt.change_ts
                alerts.append(self._alert("escalation_cusum", "escalated", fired.statistic, fired.h, metric,
                                          label_ts, change=change))
                self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None
                self.level_from = change if change is not None else prediction_ts
        rolling = self.detectors["rolling_mean"]
        # Hysteresis: the episode ends only once the rolling mean has stayed within one standard
        # error of the baseline for a whole window of evaluations; a drift sitting near the
        # threshold would otherwise start episode after episode.
        if rolling.evaluated:
            self.calm_evaluations = self.calm_evaluations + 1 if rolling.value <= rolling.calm_level else 0
        if (self.calm_evaluations >= math.ceil(rolling.window / rolling.step)
                and self.labels - self.episode_started_label >= rolling.window):
            log.info("%s@%s: concept drift episode ended after %d labels", self.model_id, self.version,
                     self.labels - self.episode_started_label)
            alerts.append(self._alert("rolling_mean", "ended", rolling.value, rolling.calm_level, metric, label_ts,
                                      severity="stable"))
            self.in_episode, self.episode_started_label, self.calm_evaluations = False, None, 0
            self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None
            self._build_detectors(None)
        return alerts

    def _alert(self, name: str, episode: str, value: float, threshold: float | None, metric: str, label_ts: float,
               unit: str = "baseline_sd", baseline: tuple[float, float] | None = None,
               severity: str = "significant", change: float | None = None) -> ConceptDriftAlert:
        recent = self.detectors["rolling_mean"].mean
        mean, sd = baseline or (self.mean, self.sd)
        data = ConceptDrift(
            model_id=self.model_id, model_version=self.version, detector=name, metric=metric, value=value,
            threshold=threshold, unit=unit, baseline=Baseline(mean=mean, sd=sd),
            recent_mean_error=None if recent is None else self.mean + self.sd * recent,
            detected_at=cloudevents.rfc3339(label_ts), label_count=self.labels, severity=severity, episode=episode,
            change_started_at=None if change is None else cloudevents.rfc3339(change))
        kind = "concept" if self.stream == "error" else f"concept_{self.stream}"
        return ConceptDriftAlert(
            id=cloudevents.event_id(self.model_id, self.version, kind, name if episode == "started" else episode,
                                    self.labels),
            subject=self.model_id, time=cloudevents.rfc3339(label_ts), data=data)

    def state_values(self) -> dict:
        production = {"mean": None if self.collected is not None else self.mean,
                      "sd": None if self.collected is not None else self.sd, "errors": self.collected,
                      "cusum_h": self.cusum_h, "small_cusum_h": self.small_cusum_h, "labels": self.baseline_labels,
                      "refine": self.refine, "first_labels": self.first_labels, "gap_pending": self.gap_pending,
                      "tighten_at": self.tighten_at, "skewness": self.skewness}
        episode = {"level_z": self.level_z, "level": self.level, "level_from": self.level_from,
                   "escalation": None if self.escalation is None else self.escalation.state(),
                   "escalation_pt": None if self.escalation_pt is None else self.escalation_pt.state()}
        blob = {"detectors": {name: d.state() for name, d in self.detectors.items()},
                "production": production, "episode": episode}
        if self.log_loss is not None:
            blob["log_loss"] = self.log_loss.state_values()
        return {"labels": self.labels, "error_sum": self.error_sum, "in_episode": self.in_episode,
                "episode_started_label": self.episode_started_label, "episodes": self.episodes,
                "silenced_alarms": self.silenced_alarms, "calm_evaluations": self.calm_evaluations,
                "detectors": _to_json(blob)}


def _reference_z(errors, mean: float, sd: float, estimated_from: int | None) -> np.ndarray:
    """Reference errors in baseline units, raised by the 2 standard errors an estimated baseline may be off by."""
    z = (np.array(errors) - mean) / sd
    return z + 2.0 / math.sqrt(estimated_from) if estimated_from else z


def _threshold_for_all(samples: list[np.ndarray], k: float, every: float) -> float:
    """A CUSUM threshold that keeps its false-alarm rate for errors distributed like each sample: the
    largest of theirs. From the second sample on, one chain solve where the threshold so far holds."""
    h = 0.0
    for z in samples:
        h = cusum_threshold_from(z, k, every, at_least=h)
    return h


def _floored_sd(mean: float, sd: float) -> float:
    return max(sd, 1e-9, abs(mean) * 1e-6)  # a perfect score must not divide by zero


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

    def __init__(self, alerts_topic: str, policy: RetrainPolicy, join_ttl_seconds: float,
                 join_max_pending: int, pairs_retention: int, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.alerts_topic = alerts_topic
        self.policy = policy
        self.join_ttl_seconds = join_ttl_seconds
        self.join_max_pending = join_max_pending
        self.pairs_retention = pairs_retention
        self._monitors: dict[tuple[str, str], ErrorStreamMonitor | None] = {}
        self._buffers: dict[str, JoinBuffer] = {}
        self._recent_models: set[str] = set()  # buffers that keep the last batch's fields
        self._classifiers: dict[tuple[str, str | None], bool] = {}  # per version: are its labels classes?

    def reset(self) -> None:
        self._monitors.clear()
        self._classifiers.clear()
        self._buffers.clear()
        self._recent_models.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        for model_id in batch.shared.get(FORGOTTEN, ()):  # their rows were deleted by the registration stage
            self._buffers.pop(model_id, None)
            self._recent_models.discard(model_id)
        by_model: dict[str, list] = defaultdict(list)
        for item in batch.events:  # (position, event): the batch's own tuples, not new ones
            by_model[item[1].model_id].append(item)
        if not by_model:
            return
        champion = batch_champions(session, batch)
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
                alerts = monitor.update(pair.error, pair.metric, pair.label_ts, pair.prediction_ts)
                if pair.score_loss is not None and pair.metric == MISCLASSIFICATION:
                    alerts += monitor.update_log_loss(pair.score_loss, pair.label_ts, pair.prediction_ts)
                for alert in alerts:
                    self._raise(session, alert, monitor.config)
        self._save_buffers(session, set(by_model))
        for key in touched:
            monitor = self._monitors[key]
            repo.save_concept_state(session, *key, monitor.state_values(), exists=monitor.stored)
            monitor.stored = True

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
        if len(self._buffers) > MAX_BUFFERS_IN_MEMORY:
            self._buffers = {model_id: self._buffers[model_id] for model_id in models}

    def _join(self, session: Session, model_id: str, events: list, champion: str | None) -> list[Pair]:
        buffer = self._buffers.get(model_id)
        if buffer is None:
            buffer = self._buffers[model_id] = JoinBuffer.restore(session, model_id)
        stats = buffer.stats
        watermark = stats["watermark_ts"]
        matches: list[tuple[str, Waiting, Waiting]] = []
        taken: list[Waiting] = []
        expired = {"prediction": 0, "label": 0}
        for position, event in events:
            epoch = event.epoch
            watermark = epoch if watermark is None or epoch > watermark else watermark
            eid = event.event_id
            if isinstance(event, PredictionEvent):
                kind, other, version = "prediction", "label", event.model_version or champion
            elif isinstance(event, LabelEvent):
                kind, other, version = "label", "prediction", None
            else:
                continue
            if buffer.waits(kind, eid):
                continue  # a retry beyond the duplicate horizon, still waiting
            partner = buffer.take(other, eid)
            if partner is not None and partner.ts < watermark - self.join_ttl_seconds:
                partner = None  # expired: decided per event, so batch boundaries cannot change a join
                expired[other] += 1
            if partner is None:
                payload = position.value.decode() if position.value else event.model_dump_json()
                buffer.add(kind, eid, version, epoch, event, payload)
            else:
                taken.append(partner)
                this = Waiting(-1, version, epoch, event, None)  # joined on arrival: never stored
                matches.append((eid, this, partner) if kind == "prediction" else (eid, partner, this))
        buffer.load_fields(session, taken)
        pairs = [_pair(model_id, stats["joined"] + i, eid, prediction, label,
                       self._is_classifier(session, model_id, prediction.version))
                 for i, (eid, prediction, label) in enumerate(matches)]
        stats["expired_predictions"] += expired["prediction"]
        stats["expired_labels"] += expired["label"]
        stats["joined"] += len(pairs)
        stats["watermark_ts"] = watermark
        repo.add_pairs(session, [pair[:-1] for pair in pairs])  # all but the metric
        if pairs and stats["joined"] > self.pairs_retention:  # none to trim before: skip the statement
            repo.trim_pairs(session, model_id, stats["joined"] - self.pairs_retention)
        if watermark is not None:
            self._bound(buffer, watermark)
        stats["pending_predictions"] = buffer.pending("prediction")
        stats["pending_labels"] = buffer.pending("label")
        buffer.flush(session)
        return pairs

    def _is_classifier(self, session: Session, model_id: str, version: str | None) -> bool:
        """Whether the version's task is classification (its numeric labels are classes); read once."""
        key = (model_id, version)
        found = self._classifiers.get(key)
        if found is None:
            row = None if version is None else session.get(registry.ModelVersion, key)
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
        if alert.data.episode in ("started", "escalated"):
            self.policy.consider(session, alert, config, reason=f"concept drift ({alert.data.episode})")


class Pair(NamedTuple):
    """A ``labelled_pairs`` row (its columns in order), then the metric of its error for the detectors.

    A tuple, not a dict: a batch's pairs go to the insert as they are, where dicts cost as much to build
    and to take apart again as the insert itself.
    """

    model_id: str
    seq: int
    event_id: str
    version: str | None
    prediction_ts: float
    label_ts: float
    features: str
    prediction: str  # JSON scalar
    label: str  # JSON scalar
    error: float
    score_loss: float | None  # the log loss of the true class, where scores were sent
    metric: str


def _pair(model_id: str, seq: int, event_id: str, prediction: Waiting, label: Waiting, classes: bool) -> Pair:
    p, target = _fields(prediction.fields), _fields(label.fields)["label"]
    error, metric = prediction_error(p["prediction"], target, classes)
    return Pair(model_id, seq, event_id, prediction.version, prediction.ts, label.ts, _to_json(p["features"]),
                _json_scalar(p["prediction"]), _json_scalar(target), error, score_loss(p.get("scores"), target),
                metric)


def _json_scalar(value) -> str:
    """A prediction or label as JSON. Numbers print as JSON already (events hold no NaN or infinities):
    repr is 4 times faster than the encoder, which strings still need for their escapes."""
    if value.__class__ is float or value.__class__ is int:
        return repr(value)
    return _to_json(value)


def _to_json(value) -> str:
    """pydantic-core's encoder: 4 times faster than json.dumps on floats (half a TypeAdapter's cost, with
    the same bytes). Infinity and NaN as json.dumps writes them, for detector state; events hold none."""
    return to_json(value, inf_nan_mode="constants").decode()


def _fields(fields: PredictionEvent | LabelEvent | dict) -> dict:
    """The event's fields: the event itself while in memory, its stored JSON once read back."""
    return fields if isinstance(fields, dict) else fields.__dict__
