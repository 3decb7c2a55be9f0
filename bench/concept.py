"""Concept-drift detection under production conditions: Undertow against river's PageHinkley and ADWIN.

    .venv/bin/python bench/concept.py [--seeds 3] [--labels 100000] [--matched-labels 200000]
                                      [--shapes stationary gradual ...]
    .venv/bin/python bench/concept.py --episode-false-alarms [--seeds 5] [--labels 300000]
    .venv/bin/python bench/concept.py --pt-false-alarms 100000000 [--pt-rates 1 0.2 5]

The third form checks the prediction-time CUSUMs' thresholds, which are calibrated per version on its
traffic (``models/drift/prediction_time_calibration.py``), against their promise of one false alarm per
``cusum_false_alarm_every`` labels: each task's stationary stream (first seed) at each rate of predictions
per second sets its baseline as the monitor does, and the settled thresholds are counted on that many
simulated stationary labels (its errors resampled, against its settled baseline, at its traffic).

The second form counts the alarms after the first on streams that step once and stay (plateaus of +0.5,
+1.0 and +3.0 sd, and +1.0 sd made by half the predictions 2 sd up): inside Undertow's episode the
detectors against its own level, river's after their restart; every one is a false alarm.

Error streams as a monitor sees them in production, per seed:

* one prediction a second; each label arrives after a lognormal delay
  (median 5 minutes, sigma 1.0: a quarter after 2.5 min, 1 % after 52 min)
  and the detectors see the labels in **arrival order**;
* the version's validation estimate comes from 5,000 validation errors, and
  the production error is 5-15 % above it (drawn per seed);
* streams: stationary; abrupt (+1.5 validation sd at 40 % of the stream);
  successive changes of growing size (+0.5, +1.0, +2.0 sd at 25, 50, 75 %);
  successive local changes of 0.5 sd each (at 25, 50, 75 %: a region of the
  inputs whose regression errors are 2 sd up grows from a quarter of the
  predictions to half and three quarters); a recovery (+1.5 sd at 40 %, down
  to +0.5 sd at 70 %);
  gradual (0 to +1.5 sd over 20 % of the stream from 40 %); recurring
  (+1.5 sd during 40-55 % and 70-85 %);
* regression (|error| of a normal residual), classification (0/1
  misclassification, 10 % validation error rate; the same changes in sd
  units of the 0/1 error), and a scored classifier (calibrated scores of a
  binary model; the concept moves by labels contradicting the scores, the
  same changes in sd units of the log loss; Undertow watches the 0/1 error
  and the log loss, river the log loss).

Undertow: ``ErrorStreamMonitor`` with ``DriftConfig()`` defaults, the validation
baseline and error sample, ``update(error, metric, label_ts=arrival, prediction_ts)``;
its alarms are ``started``, ``escalated`` and ``improved`` alerts (``deployment_gap`` is
counted apart). river: ``PageHinkley()`` and ``ADWIN()`` with default parameters on the
raw errors in arrival order; every ``drift_detected`` is an alarm; "matched",
the same detectors made as quiet as Undertow (PageHinkley's smallest
threshold, ADWIN's largest delta, that raise no alarm on the stationary
streams of these seeds, ``--matched-labels`` long: twice the changing
streams by default, as a zero on few labels says little about a rate of
one per millions). Two yardsticks no one can run. One is
told the change's size (a step's height, a ramp's slope) and the level
before it, not its time: on a step the prediction-time CUSUM with k at half
the step (for normal errors the optimal detector of a known step at an
unknown time), on a ramp the likelihood ratio of the known slope for normal
errors maximised over start times;
its threshold is the highest value it reached on the stationary streams.
The oracle is told each change's time and shape and the level before it, and
alarms when the weighted sum of the arrived errors against that shift (the
likelihood ratio's statistic for a mean shift of normal errors) exceeds the
highest value it reached on the stationary streams of the same seeds: a
yardstick for what knowing the change is worth, not a proven bound (its
score is not optimal for 0/1 errors or log loss, and its threshold is fitted
to these seeds).

Per change: delay = alarm (label arrival time) minus the change's prediction
time, for the first alarm at or after the change and before the next one; the
floor beside it is when the 10th label of a post-change prediction arrived (no
honest detector alarms much earlier). False alarms: alarms before the first
change (all alarms on the stationary stream), per 10,000 labels. Alerts per
change: alarms from the first change on, divided by the number of changes.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from undertow.models.drift.config import DriftConfig
from undertow.models.reference import error_sample
from undertow.worker.monitor.concept import ErrorStreamMonitor

DELAY_MEDIAN_S, DELAY_SIGMA = 300.0, 1.0
VALIDATION_ROWS = 5000
FLOOR_LABELS = 10
ALARMS = ("started", "escalated", "improved")  # Undertow's alerts that say a change (a fall: improved)
DETECTORS = (
    "Undertow",
    "river PageHinkley()",
    "river ADWIN()",
    "river PageHinkley, matched",
    "river ADWIN, matched",
    "told the size and the level, not the time",
    "oracle (knows change, shape, baseline)",
)
# Fine grids (thresholds about 10 % apart, deltas 20 %), from the defaults towards quieter: PageHinkley's delay
# grows about in proportion to its threshold, so a coarse grid would overstate what matching costs it.
MATCHED_THRESHOLDS = tuple(sorted({float(f"{50 * 1.1**k:.2g}") for k in range(45)}))  # 50 ... 3,300
MATCHED_DELTAS = tuple(sorted({float(f"{0.002 * 0.8**k:.2g}") for k in range(60)}, reverse=True))  # 0.002 ... 4e-9


@dataclass(frozen=True)
class Shape:
    name: str
    changes: tuple[float, ...]  # change points, as fractions of the stream
    # A local change: the regression errors of a share shift / local of the predictions (a region of the
    # inputs) rise by ``local`` sd, instead of all errors by ``shift``. (0/1 errors and log losses drawn
    # independently per label are the same mixture either way.)
    local: float | None = None

    def shift(self, u: np.ndarray) -> np.ndarray: ...  # each shape defines it


class Stationary(Shape):
    def shift(self, u):
        return np.zeros_like(u)


class Abrupt(Shape):
    def shift(self, u):
        return np.where(u >= 0.4, 1.5, 0.0)


class Successive(Shape):
    def shift(self, u):
        return 0.5 * (u >= 0.25) + 1.0 * (u >= 0.5) + 2.0 * (u >= 0.75)


class SuccessiveLocal(Shape):
    def shift(self, u):
        return 0.5 * ((u >= 0.25).astype(float) + (u >= 0.5) + (u >= 0.75))


class Recovery(Shape):
    def shift(self, u):
        return np.where(u >= 0.7, 0.5, np.where(u >= 0.4, 1.5, 0.0))


class Gradual(Shape):
    def shift(self, u):
        return np.clip((u - 0.4) / 0.2, 0, 1) * 1.5


class Recurring(Shape):
    def shift(self, u):
        return np.where(((u >= 0.4) & (u < 0.55)) | ((u >= 0.7) & (u < 0.85)), 1.5, 0.0)


SHAPES = [
    Stationary("stationary", ()),
    Abrupt("abrupt +1.5 sd", (0.4,)),
    Successive("successive +0.5, +1.0, +2.0 sd", (0.25, 0.5, 0.75)),
    SuccessiveLocal("successive_local +0.5 sd three times (a region growing)", (0.25, 0.5, 0.75), local=2.0),
    Recovery("recovery +1.5 sd, then down to +0.5 sd", (0.4, 0.7)),
    Gradual("gradual to +1.5 sd over 20 %", (0.4,)),
    Recurring("recurring +1.5 sd, twice", (0.4, 0.7)),
]


def stream(shape: Shape, task: str, n: int, seed: int):
    """(validation errors, production errors in prediction order, prediction times, arrival times, gap)."""
    rng = np.random.default_rng(seed)
    gap = rng.uniform(0.05, 0.15)
    u = np.arange(n) / n
    if task == "regression":
        validation = np.abs(rng.normal(0, 1, VALIDATION_ROWS))
        sd = validation.std()
        shift = shape.shift(u)
        if shape.local is not None:  # the region: a share shift / local of the predictions, local sd up
            shift = np.where(rng.random(n) < shift / shape.local, shape.local, 0.0)
        errors = np.abs(rng.normal(0, 1, n)) * (1 + gap) + shift * sd
    elif task == "classification":
        rate = 0.10
        sd = np.sqrt(rate * (1 - rate))
        validation = (rng.random(VALIDATION_ROWS) < rate).astype(float)
        p = np.clip(rate * (1 + gap) + shape.shift(u) * sd, 0, 1)
        errors = (rng.random(n) < p).astype(float)
    else:
        return _scored_stream(shape, n, rng, gap, u)
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(DELAY_MEDIAN_S), DELAY_SIGMA, n)
    return validation, errors, predicted, arrived, gap, None


def _scored_stream(shape: Shape, n: int, rng, gap: float, u: np.ndarray):
    """A calibrated binary model: score p of the positive class; a share f of labels drawn against the
    scores (q = p + f (1 - 2p)) raises the expected log loss linearly in f, so f is set from the wanted
    shift in log-loss sd and the production gap."""
    scores = rng.beta(1, 4, n)

    def loss_of(p, y):
        return -np.log(np.where(y, p, 1 - p))

    v_scores = rng.beta(1, 4, VALIDATION_ROWS)
    v_labels = rng.random(VALIDATION_ROWS) < v_scores
    v_loss = loss_of(v_scores, v_labels)
    validation = ((v_scores >= 0.5) != v_labels).astype(float)
    slope = float(np.mean((1 - 2 * v_scores) * (np.log(1 - v_scores) - np.log(v_scores))))
    flip = (gap * v_loss.mean() + shape.shift(u) * v_loss.std()) / slope
    labels = rng.random(n) < np.clip(scores + flip * (1 - 2 * scores), 0, 1)
    errors = ((scores >= 0.5) != labels).astype(float)
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(DELAY_MEDIAN_S), DELAY_SIGMA, n)
    return validation, errors, predicted, arrived, gap, loss_of(scores, labels)


@functools.lru_cache(maxsize=2)  # the matched detectors' length and the yardsticks'
def stationary_streams(task: str, n: int, seeds: int) -> list[tuple]:
    """The stationary stream of every seed, on which the matched and the oracle's thresholds are set."""
    return [stream(SHAPES[0], task, n, 1000 * seed + 7) for seed in range(seeds)]


def _quiet(make, task: str, n: int, seeds: int) -> bool:
    """Whether the detector ``make()`` raises no alarm on the stationary stream of any seed (in arrival order)."""
    for _, errors, _, arrived, _, losses in stationary_streams(task, n, seeds):
        detector = make()
        watched = errors if losses is None else losses
        for i in np.argsort(arrived, kind="stable"):
            detector.update(float(watched[i]))
            if detector.drift_detected:
                return False
    return True


def matched_threshold(task: str, n: int, seeds: int) -> float:
    """The smallest PageHinkley threshold with no alarm on the stationary streams of every seed: river's
    detector as quiet as Undertow on these streams, for the comparison of delays at equal cost (NaN if
    none tried is quiet)."""
    from river.drift import PageHinkley

    return next(
        (t for t in MATCHED_THRESHOLDS if _quiet(functools.partial(PageHinkley, threshold=t), task, n, seeds)), math.nan
    )


def matched_delta(task: str, n: int, seeds: int) -> float:
    """The largest ADWIN delta (confidence) with no alarm on the stationary streams of every seed (NaN if none)."""
    from river.drift import ADWIN

    return next((d for d in MATCHED_DELTAS if _quiet(functools.partial(ADWIN, delta=d), task, n, seeds)), math.nan)


def oracle_statistics(shape: Shape, watched: np.ndarray, order: np.ndarray, n: int) -> list[np.ndarray]:
    """Per change, in label arrival order: the standardised weighted sum of the arrived errors of a
    detector told the change's time and shape (the shift it adds, up to the next change) and the level
    before it (estimated on the 10,000 predictions before it): the likelihood ratio's statistic for a
    mean shift of normal errors."""
    u = np.arange(n) / n
    out = []
    for j, c in enumerate(shape.changes):
        start = int(c * n)
        end = int(shape.changes[j + 1] * n) if j + 1 < len(shape.changes) else n
        before = watched[max(0, start - 10_000) : start]
        weight = np.zeros(n)
        weight[start:end] = shape.shift(u[start:end]) - shape.shift(u[start - 1 : start])[0]
        w = weight[order]
        numerator = np.cumsum(w * (watched[order] - before.mean()) / before.std())
        spread = np.sqrt(np.cumsum(w**2))
        out.append(np.divide(numerator, spread, out=np.full(n, -np.inf), where=spread > 0))
    return out


def stationary_highs(statistics, shape: Shape, task: str, n: int, seeds: int) -> list[float]:
    """Per change: the largest value ``statistics(watched, arrival order)`` reaches on the stationary streams
    of these seeds, the threshold of a yardstick with no false alarm there."""
    highs = []
    for _, errors, _, arrived, _, losses in stationary_streams(task, n, seeds):
        watched = errors if losses is None else losses
        highs.append([float(np.max(s)) for s in statistics(watched, np.argsort(arrived, kind="stable"))])
    return [max(h[j] for h in highs) for j in range(len(shape.changes))]


def change_sizes(shape: Shape, task: str, n: int) -> list[tuple[str, float]]:
    """Per change, measured on the first seed's stream against the level of the 10,000 predictions before
    it, in that level's sd: ("step", its size) or ("ramp", its slope per prediction)."""
    u = np.arange(n) / n
    _, errors, _, _, _, losses = stream(shape, task, n, 7)
    watched = errors if losses is None else losses
    sizes = []
    for c in shape.changes:
        start = int(c * n)
        before, after = watched[start - 10_000 : start], watched[start : start + 10_000]
        rise = (after.mean() - before.mean()) / before.std()
        shift = shape.shift(u[start : start + 10_000])
        sizes.append(("step", float(rise)) if np.allclose(shift, shift[0]) else ("ramp", float(rise / 4999.5)))
    return sizes


def told_size_statistics(
    shape: Shape, watched: np.ndarray, order: np.ndarray, n: int, sizes: list[tuple[str, float]]
) -> list[np.ndarray]:
    """Per change, in label arrival order: the statistic of a detector told the change's size and the level
    before it (estimated on the 10,000 predictions before it) but not when it comes; it watches from
    10,000 predictions before the change. A step: the prediction-time CUSUM with k at half the step (for
    normal errors the optimal detector of a known step at an unknown time, Moustakides 1986). A ramp: the
    likelihood ratio of the known slope for normal errors, maximised over start times a minute apart."""
    from undertow.models.drift.detectors import PredictionTimeCusum

    out = []
    for c, (kind, size) in zip(shape.changes, sizes):
        start = int(c * n)
        before = watched[start - 10_000 : start]
        mean, sd = before.mean(), before.std()
        window = (order >= start - 10_000) & (order < start + 10_000)
        at = np.flatnonzero(window)
        t = order[at].astype(float)
        z = (watched[order[at]] - mean) / sd
        best = np.zeros(at.size)
        if kind == "step":  # a fall watched as a rise of -z
            sign, size = (1.0, size) if size > 0 else (-1.0, -size)
            cusum = PredictionTimeCusum(k=size / 2, h=math.inf, bucket_seconds=60.0, horizon=720, clip=max(5.0, size))
            for j in range(at.size):
                cusum.update(sign * float(z[j]), float(t[j]))
                best[j] = cusum.statistic
        else:
            for tau in np.arange(start - 10_000, start + 10_000, 60.0):
                d = np.maximum(t - tau, 0.0)
                np.maximum(best, np.cumsum(size * d * z - 0.5 * (size * d) ** 2), out=best)
        statistic = np.zeros(n)
        statistic[at] = best
        out.append(_carry_forward(statistic, at))
    return out


def _carry_forward(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` set at positions ``at``; every other position takes the value at the last of them before it."""
    filled = np.zeros(values.size, dtype=int)
    filled[at] = at
    return values[np.maximum.accumulate(filled)]


def run(
    shape: Shape,
    task: str,
    n: int,
    seed: int,
    config: DriftConfig,
    matched: tuple[float, float],
    oracle: list[float],
    told: tuple[list, list[float]],
) -> dict:
    from river.drift import ADWIN, PageHinkley

    validation, errors, predicted, arrived, gap, losses = stream(shape, task, n, seed)
    order = np.argsort(arrived, kind="stable")
    metric = "absolute_error" if task == "regression" else "misclassification"
    ours = ErrorStreamMonitor(
        "bench", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    ph, adwin = PageHinkley(), ADWIN()
    alarms = {name: [] for name in DETECTORS}
    phases = dict.fromkeys(ALARMS, 0)
    gaps = 0
    started = time.perf_counter()
    for i in order:
        alerts = ours.update(float(errors[i]), metric, float(arrived[i]), float(predicted[i]))
        if losses is not None:
            alerts += ours.update_log_loss(float(losses[i]), float(arrived[i]), float(predicted[i]))
        for alert in alerts:
            if alert.data.episode in ALARMS:
                alarms[DETECTORS[0]].append(float(arrived[i]))
                phases[alert.data.episode] += 1
            gaps += alert.data.episode == "deployment_gap"
    seconds = time.perf_counter() - started
    watched = errors if losses is None else losses
    for detector, name in (
        (ph, DETECTORS[1]),
        (adwin, DETECTORS[2]),
        (PageHinkley(threshold=matched[0]), DETECTORS[3]),
        (ADWIN(delta=matched[1]), DETECTORS[4]),
    ):
        for i in order:
            detector.update(float(watched[i]))
            if detector.drift_detected:
                alarms[name].append(float(arrived[i]))
    sizes, thresholds = told
    for statistic, threshold, c in zip(
        told_size_statistics(shape, watched, order, n, sizes), thresholds, shape.changes
    ):
        above = np.flatnonzero((statistic > threshold) & (arrived[order] >= c * n))
        if above.size:
            alarms[DETECTORS[5]].append(float(arrived[order[above[0]]]))
    for z, threshold in zip(oracle_statistics(shape, watched, order, n), oracle):
        above = np.flatnonzero(z > threshold)
        if above.size:
            alarms[DETECTORS[6]].append(float(arrived[order[above[0]]]))
    changes = [c * n for c in shape.changes]
    floors = [float(np.sort(arrived[int(c) :])[FLOOR_LABELS - 1]) - c for c in changes]
    result = {
        "gap": gap,
        "deployment_gaps": gaps,
        "phases": phases,
        "labels_per_s": n / seconds,
        "floors": floors,
        "detectors": {},
    }
    for name, times in alarms.items():
        first = changes[0] if changes else float("inf")
        false = [t for t in times if t < first]
        delays = []
        for j, c in enumerate(changes):
            end = changes[j + 1] if j + 1 < len(changes) else float("inf")
            hit = [t for t in times if c <= t < end]
            delays.append(hit[0] - c if hit else None)
        after = [t for t in times if t >= first]
        result["detectors"][name] = {
            "false_per_10k": len(false) / (min(first, n)) * 10_000 if false else 0.0,
            "false": len(false),
            "delays": delays,
            "per_change": len(after) / len(changes) if changes else None,
        }
    return result


@dataclass(frozen=True)
class Plateau(Shape):
    """One step at 2 % of the stream, then the level stays: every alarm after the first is a false one."""

    size: float = 1.0

    def shift(self, u):
        return np.where(u >= 0.02, self.size, 0.0)


PLATEAUS = [
    Plateau("plateau +0.5 sd", (0.02,), size=0.5),
    Plateau("plateau +1.0 sd", (0.02,), size=1.0),
    Plateau("plateau +1.0 sd, local (half the predictions 2 sd up)", (0.02,), local=2.0, size=1.0),
    Plateau("plateau +3.0 sd", (0.02,), size=3.0),
]


def episode_false_alarms(seeds: int, n: int) -> None:
    """Alarms after the first on streams that step once and stay: inside Undertow's episode its detectors
    against the episode's level (``escalated``, ``improved``), river's detectors after their restart."""
    from river.drift import ADWIN, PageHinkley

    print(
        "| task | stream | labels after the step | Undertow escalated / improved | river PageHinkley() "
        "| river ADWIN() |"
    )
    print("|---|---|---:|---:|---:|---:|")
    started = time.perf_counter()
    for task in ("regression", "classification", "scored classification (log loss)"):
        for shape in PLATEAUS:
            if shape.local is not None and task != "regression":
                continue  # a mixture of 0/1 errors (or of label flips) is the plain step
            extra = {"escalated": 0, "improved": 0, "ph": 0, "adwin": 0}
            for seed in range(seeds):
                validation, errors, predicted, arrived, _, losses = stream(shape, task, n, 1000 * seed + 7)
                order = np.argsort(arrived, kind="stable")
                metric = "absolute_error" if task == "regression" else "misclassification"
                ours = ErrorStreamMonitor(
                    "bench",
                    "1",
                    DriftConfig(),
                    float(validation.mean()),
                    float(validation.std()),
                    error_sample=error_sample(validation),
                )
                watched = errors if losses is None else losses
                ph, adwin, alarms = PageHinkley(), ADWIN(), {"ph": 0, "adwin": 0}
                for i in order:
                    alerts = ours.update(float(errors[i]), metric, float(arrived[i]), float(predicted[i]))
                    if losses is not None:
                        alerts += ours.update_log_loss(float(losses[i]), float(arrived[i]), float(predicted[i]))
                    for alert in alerts:
                        if alert.data.episode in ("escalated", "improved"):
                            extra[alert.data.episode] += 1
                    ph.update(float(watched[i]))
                    adwin.update(float(watched[i]))
                    alarms["ph"] += ph.drift_detected and arrived[i] >= 0.02 * n
                    alarms["adwin"] += adwin.drift_detected and arrived[i] >= 0.02 * n
                extra["ph"] += max(alarms["ph"] - 1, 0)
                extra["adwin"] += max(alarms["adwin"] - 1, 0)
            print(
                f"| {task} | {shape.name} | {seeds} x {0.98 * n:,.0f} | {extra['escalated']} / {extra['improved']} | "
                f"{extra['ph']} | {extra['adwin']} |"
            )
    print(f"\n{seeds} seeds, {n:,} labels per stream. Total {time.perf_counter() - started:.0f} s.")


def pt_false_alarms(labels: int, rates: list[float], config: DriftConfig) -> None:
    """Alarms of the prediction-time CUSUMs at the thresholds a version sets for its traffic, counted on
    ``labels`` simulated stationary labels per task, rate and CUSUM."""
    from undertow.models.drift.prediction_time_calibration import Traffic, _window, simulate

    print("| task | predictions/s | CUSUM | factor | threshold | alarms | per 10 M labels |")
    print("|---|---:|---|---:|---:|---:|---:|")
    started, n = time.perf_counter(), 40_000
    for task in ("regression", "classification", "scored classification (log loss)"):
        for rate in rates:
            validation, errors, _, _, _, losses = stream(SHAPES[0], task, n, 7)
            rng = np.random.default_rng(11)
            predicted = np.arange(n) / rate
            delays = rng.lognormal(np.log(DELAY_MEDIAN_S), DELAY_SIGMA, n)
            arrived = predicted + delays
            order = np.argsort(arrived, kind="stable")
            metric = "absolute_error" if task == "regression" else "misclassification"
            ours = ErrorStreamMonitor(
                "bench",
                "1",
                config,
                float(validation.mean()),
                float(validation.std()),
                error_sample=error_sample(validation),
            )
            for i in order[:2000]:  # both streams' baselines set (the log loss's on its first 1,000)
                ours.update(float(errors[i]), metric, float(arrived[i]), float(predicted[i]))
                if losses is not None:
                    ours.update_log_loss(float(losses[i]), float(arrived[i]), float(predicted[i]))
            watched = [(metric, ours.error, errors)]
            if losses is not None:
                watched.append(("log_loss", ours.log_loss, losses))
            traffic = Traffic(rate, delays, np.full(n, 1 / n))
            for name, error_stream, values in watched:
                baseline = error_stream.baseline
                settled = values[order[: config.production_refine_labels]]
                z = (values - settled.mean()) / settled.std()
                tighten = baseline.tighten_at[-1] if baseline.tighten_at else (0, *baseline.calibrated_thresholds())
                for j, (k, h) in enumerate(((config.cusum_k, tighten[1]), (config.cusum_k / 2, tighten[2]))):
                    window = _window(traffic, config.pt_bucket_seconds, h, k) or 160
                    alarms = counted = 0
                    while counted < labels:
                        a, _, c = simulate(
                            z,
                            k,
                            h,
                            traffic,
                            config.pt_bucket_seconds,
                            window,
                            1000 + counted % 997 + j,
                            labels_per_stream=20_000,
                        )
                        alarms, counted = alarms + a, counted + c
                    factor = (baseline.pt_factors or (1.0, 1.0))[j]
                    print(
                        f"| {task}, {name} | {rate:g} | k {k:g} | {factor:.1f} | {h:.2f} | {alarms} | "
                        f"{alarms / counted * 1e7:.2f} |",
                        flush=True,
                    )
    print(f"\n{labels:,} labels per row. Total {time.perf_counter() - started:.0f} s.")


def fmt_delays(values: list) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "missed"
    text = f"{np.median(got):,.0f} s"
    return text + (f" ({len(got)}/{len(values)})" if len(got) < len(values) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument(
        "--matched-labels",
        type=int,
        default=None,
        metavar="N",
        help="labels of the stationary streams on which the matched detectors must stay quiet "
        "(default: twice --labels)",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="NAME",
        choices=[shape.name.split()[0] for shape in SHAPES],
        help="only these streams (first word of the name), e.g. --shapes stationary",
    )
    parser.add_argument(
        "--episode-false-alarms",
        action="store_true",
        help="instead: alarms after the first on streams that step once and stay (plateaus)",
    )
    parser.add_argument(
        "--pt-false-alarms",
        type=int,
        default=0,
        metavar="LABELS",
        help="instead: the prediction-time CUSUMs' false alarms at their calibrated thresholds, on this many "
        "simulated stationary labels per task, rate and CUSUM",
    )
    parser.add_argument(
        "--pt-rates", type=float, nargs="+", default=[1.0], help="predictions per second for --pt-false-alarms"
    )
    args = parser.parse_args()
    if args.pt_false_alarms:
        pt_false_alarms(args.pt_false_alarms, args.pt_rates, DriftConfig())
        return
    if args.episode_false_alarms:
        episode_false_alarms(args.seeds, args.labels)
        return
    shapes = [shape for shape in SHAPES if not args.shapes or shape.name.split()[0] in args.shapes]
    matched_labels = 2 * args.labels if args.matched_labels is None else args.matched_labels
    if matched_labels < 1:
        parser.error("--matched-labels must be at least 1")
    config = DriftConfig()
    started = time.perf_counter()
    print(
        "| task | stream | detector | delay per change (median over seeds) | label floor | false alarms "
        "(total over seeds) | /10k labels | alarms per change |"
    )
    print("|---|---|---|---|---|---:|---:|---:|")
    notes = []
    for task in ("regression", "classification", "scored classification (log loss)"):
        threshold = matched_threshold(task, matched_labels, args.seeds)
        delta = matched_delta(task, matched_labels, args.seeds)
        matched = (
            MATCHED_THRESHOLDS[-1] if math.isnan(threshold) else threshold,
            MATCHED_DELTAS[-1] if math.isnan(delta) else delta,
        )
        notes.append(
            f"- {task}: river PageHinkley, matched = PageHinkley(threshold={matched[0]}), the smallest "
            f"threshold, and river ADWIN, matched = ADWIN(delta={matched[1]:g}), the largest delta, "
            f"without a false alarm on the stationary streams of these seeds ({matched_labels:,} labels each)"
            + (
                ""
                if not (math.isnan(threshold) or math.isnan(delta))
                else " (NOT QUIET: none tried was; the strictest is used)"
            )
        )
        for shape in shapes:
            oracle = stationary_highs(
                functools.partial(oracle_statistics, shape, n=args.labels), shape, task, args.labels, args.seeds
            )
            sizes = change_sizes(shape, task, args.labels) if shape.changes else []
            told = (
                sizes,
                stationary_highs(
                    functools.partial(told_size_statistics, shape, n=args.labels, sizes=sizes),
                    shape,
                    task,
                    args.labels,
                    args.seeds,
                ),
            )
            runs = [
                run(shape, task, args.labels, 1000 * seed + 7, config, matched, oracle, told)
                for seed in range(args.seeds)
            ]
            floors = [fmt_delays([r["floors"][j] for r in runs]) for j in range(len(shape.changes))]
            for name in DETECTORS:
                per = [r["detectors"][name] for r in runs]
                delays = [fmt_delays([p["delays"][j] for p in per]) for j in range(len(shape.changes))]
                per_change = [p["per_change"] for p in per if p["per_change"] is not None]
                print(
                    f"| {task} | {shape.name} | {name} | {', '.join(delays) or '—'} | {', '.join(floors) or '—'} "
                    f"| {sum(p['false'] for p in per)} | {np.mean([p['false_per_10k'] for p in per]):.2f} | "
                    f"{np.mean(per_change):.1f} |"
                    if per_change
                    else f"| {task} | {shape.name} | {name} | — | — | {sum(p['false'] for p in per)} | "
                    f"{np.mean([p['false_per_10k'] for p in per]):.2f} | — |"
                )
            gaps = ", ".join(f"{r['gap']:.0%}" for r in runs)
            phases = {phase: sum(r["phases"][phase] for r in runs) for phase in ALARMS}
            notes.append(
                f"- {task}, {shape.name}: production error above validation by {gaps}; deployment_gap alerts "
                f"{[r['deployment_gaps'] for r in runs]}; Undertow's alarms over seeds {phases}; "
                f"Undertow {np.mean([r['labels_per_s'] for r in runs]):,.0f} labels/s"
            )
    print()
    print("\n".join(notes))
    print(
        f"\n{args.seeds} seeds, {args.labels:,} labels per stream, label delays lognormal (median "
        f"{DELAY_MEDIAN_S:.0f} s, sigma {DELAY_SIGMA}); Undertow DriftConfig(): production baseline "
        f"{config.production_baseline_labels} labels, deployment gap margin {config.deployment_gap_margin:.0%}, "
        f"CUSUM k {config.cusum_k}, one false alarm per {config.cusum_false_alarm_every:,.0f} labels, "
        f"prediction-time buckets {config.pt_bucket_seconds:.0f} s x {config.pt_horizon_buckets}. "
        f"Total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
