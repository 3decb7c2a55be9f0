"""Detection quality of Undertow's data-drift checks against a plain KS / chi-square baseline.

Seven seeded synthetic streams (four independent N(0, 1) features x0..x3, a
categorical ``region``, prediction = x @ weights, as ``worker.dev.sample``), each
with a known change point (event 20,000). The reference is 5,000 rows of the
pre-change distribution drawn with a different seed. Every stream is drawn
``--seeds`` times (default 5); the table aggregates over the seeds.

* Undertow: ``ModelVersionMonitor`` with ``DriftConfig()`` defaults and a
  profile from ``models.profile.build_profile``, fed ``PredictionEvent``
  objects in batches of 500 through ``encode`` -> ``window.add`` ->
  ``evaluate``, as ``DataDriftStage.apply`` does. Counted: alerts with
  ``episode == "started"`` on input features (not ``__prediction__``), and
  dataset-level "started" alerts.
* Baseline: tumbling windows of 1,000 events; ``scipy.stats.ks_2samp`` of every
  numeric feature against the same 5,000 reference rows and
  ``scipy.stats.chisquare`` of region counts against the reference shares
  (floored at 1e-4 so an unseen category is testable); an alarm for every
  window and feature with p < 0.01 (no episodes).

Metrics per stream and detector:

* delay: end of the window (events since the stream start) of the first alarm
  on the drifted feature after the change point, minus the change point;
* false alarms /10k: alarms before the change point or on a feature that did
  not drift, per 10,000 events of the stream;
* alarms on drifted feature: alarms on it after the change point (1 is ideal
  for a persistent drift: one episode, no repeats).

Concept drift (second table): error streams from river's
``river.datasets.synth.FriedmanDrift`` regression data. Per stream and seed a
``GradientBoostingRegressor`` is trained on the first 5,000 rows (pre-drift),
the next 5,000 pre-drift rows give the baseline error (mean, sd and
``models.reference.error_sample``), and the following 100,000 rows are the
monitored stream of |y - prediction| errors, with the change point at its
event 50,000 (the stationary stream puts the drift positions past its end).
Every event has a label. The same error stream feeds

* Undertow: ``worker.monitor.concept.ErrorStreamMonitor`` with ``DriftConfig()``
  defaults, ``update(error, "absolute_error", i)``; an alarm is a returned
  alert (the start of an episode); the detector named in it fired first;
* river ``PageHinkley()`` and river ``ADWIN()`` with their default parameters
  on the raw errors; an alarm is every ``drift_detected``.

Metrics: delay = first alarm at or after the change point minus the change
point, in events (= labels here); the same with labels arriving 2,000
predictions late, in prediction time; false alarms per 10,000 pre-change
events (all events for the stationary stream); repeated alarms = alarms
after the first post-change one.

The real-data section runs the same detectors on rows of datasets bundled with scikit-learn and river
(``bench/real_streams.py``: skewed, heavy-tailed and tied features), shifted by re-weighting the rows:
stationary, abrupt, gradual on one feature's rank and gradual on the class mix.

The third section (``bench/drift_rules.py``) measures the alert rules:
flapping, gradual drift, correlation-only drift and accuracy estimated
before labels, against per-window KS with Bonferroni and PSI > 0.2.

    .venv/bin/python bench/detection.py [--seeds N] [--concept-seeds N] [--only data|real|rules|concept]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from scipy.stats import chisquare, ks_2samp

from undertow.models.drift.config import DriftConfig
from undertow.models.profile import PREDICTION_FEATURE, build_profile
from undertow.models.reference import error_sample
from undertow.worker.dev.sample import REGION_SHARES, REGIONS, START, rfc3339
from undertow.worker.monitor.concept import ErrorStreamMonitor
from undertow.worker.monitor.data_drift import ModelVersionMonitor
from undertow.worker.runtime.events import PredictionEvent

N_FEATURES = 4
NUMERIC = [f"x{i}" for i in range(N_FEATURES)]
WEIGHTS = np.linspace(1.0, 0.2, N_FEATURES)
REFERENCE_ROWS = 5000
CHANGE = 20_000
BATCH = 500
ALPHA = 0.01  # baseline significance
BASELINE_WINDOW = 1000


@dataclass
class Stream:
    name: str
    n: int
    drifted: str | None  # feature that drifts, None = stationary
    x_mean: Callable | None = None  # (event index array) -> mean of x0
    x_sd: float = 1.0  # sd of x0 after the change
    region_shares: tuple | None = None  # shares after the change (over REGIONS)
    new_region_share: float = 0.0  # share of a never-seen category after the change


STREAMS = [
    Stream("stationary", 100_000, None),
    Stream("mean shift 1.0 sd", 50_000, "x0", x_mean=lambda i: np.where(i >= CHANGE, 1.0, 0.0)),
    Stream("mean shift 0.25 sd", 50_000, "x0", x_mean=lambda i: np.where(i >= CHANGE, 0.25, 0.0)),
    Stream("variance x2 (sd 1 -> 2)", 50_000, "x0", x_sd=2.0),
    Stream("unseen category 30%", 50_000, "region", new_region_share=0.3),
    Stream("category shares north .4->.1, west .1->.4", 50_000, "region", region_shares=(0.1, 0.3, 0.2, 0.4)),
    Stream(
        "gradual 0 -> 1.5 sd over 20k", 50_000, "x0", x_mean=lambda i: np.clip((i - CHANGE) / 20_000, 0.0, 1.0) * 1.5
    ),
]


def generate(stream: Stream, n: int, seed: int, pre_change_only: bool = False):
    """Features (n, 4), regions (n,), predictions (n,)."""
    rng = np.random.default_rng(seed)
    index = np.arange(n)
    after = np.zeros(n, bool) if pre_change_only or stream.drifted is None else index >= CHANGE
    x = rng.normal(size=(n, N_FEATURES))
    if not pre_change_only:
        if stream.x_mean is not None:
            x[:, 0] += stream.x_mean(index)
        x[after, 0] *= stream.x_sd
    regions = rng.choice(np.array(REGIONS), size=n, p=REGION_SHARES).astype(object)
    if stream.region_shares is not None:
        regions[after] = rng.choice(np.array(REGIONS), size=int(after.sum()), p=stream.region_shares)
    if stream.new_region_share:
        regions[after & (rng.random(n) < stream.new_region_share)] = "atlantis"
    return x, regions, x @ WEIGHTS


def to_events(x, regions, prediction) -> list[PredictionEvent]:
    values = x.round(6).tolist()
    preds = prediction.round(6).tolist()
    return [
        PredictionEvent.model_validate(
            {
                "event_id": f"e{i}",
                "model_id": "bench",
                "ts": rfc3339(START + timedelta(seconds=i)),
                "features": {**dict(zip(NUMERIC, values[i])), "region": regions[i]},
                "prediction": preds[i],
            }
        )
        for i in range(len(values))
    ]


@dataclass
class Alarms:
    """Alarm positions (window end, in events) per feature."""

    by_feature: dict[str, list[int]] = field(default_factory=dict)

    def add(self, feature: str, end: int) -> None:
        self.by_feature.setdefault(feature, []).append(end)

    def metrics(self, stream: Stream, dataset: bool = False) -> tuple[int | None, float, int]:
        """Delay (None: not detected), false alarms per 10k events, alarms on the drifted feature."""
        change = CHANGE if stream.drifted else math.inf
        true_alarms = [
            e for f, ends in self.by_feature.items() for e in ends if (dataset or f == stream.drifted) and e > change
        ]
        false_alarms = sum(len(ends) for ends in self.by_feature.values()) - len(true_alarms)
        delay = min(true_alarms) - CHANGE if true_alarms else None
        return delay, false_alarms / stream.n * 10_000, len(true_alarms)


def summarise(stream: Stream, runs: list[tuple[int | None, float, int]]) -> tuple[str, str, str]:
    """Over seeds: median delay (min-max, detected/seeds), mean false alarms, mean alarms (min-max)."""
    false_rate = f"{np.mean([r[1] for r in runs]):.2f}"
    if stream.drifted is None:
        return "—", false_rate, "—"
    delays = [r[0] for r in runs if r[0] is not None]
    hits = [r[2] for r in runs]

    def spread(v, fmt):
        return f" ({fmt(min(v))}–{fmt(max(v))})" if len(runs) > 1 and min(v) != max(v) else ""

    delay = "not detected" if not delays else f"{np.median(delays):,.0f}" + spread(delays, "{:,}".format)
    if delays and len(delays) < len(runs):
        delay += f", {len(delays)}/{len(runs)} detected"
    return delay, false_rate, f"{np.mean(hits):.1f}" + spread(hits, str)


def run_undertow(stream, profile, events) -> tuple[Alarms, Alarms, list[float]]:
    monitor = ModelVersionMonitor("bench", "1", profile, DriftConfig())
    start_epoch = START.timestamp()
    features, datasets, drifted_psi = Alarms(), Alarms(), []
    for b in range(0, len(events), BATCH):
        rows, ts = monitor.encode(events[b : b + BATCH])
        for window in monitor.window.add(rows, ts):
            end = int(round(window.end_ts - start_epoch)) + 1  # one event per second from START
            results, alerts = monitor.evaluate(window)
            if stream.drifted and end > CHANGE:
                drifted_psi += [r["psi"] for r in results if r["feature"] == stream.drifted]
            for alert in alerts:  # CloudEvent models since the alerts became typed
                data = alert.data
                if data.episode != "started":
                    continue
                if alert.type == "undertow.drift.dataset":
                    datasets.add("__dataset__", end)
                elif alert.type == "undertow.drift.data":  # per input feature (not prediction, multivariate)
                    features.add(data.feature, end)
    return features, datasets, drifted_psi


def run_baseline(x, regions, ref_x, ref_regions) -> Alarms:
    known = list(dict.fromkeys(ref_regions.tolist()))
    ref_counts = np.array([np.sum(ref_regions == c) for c in known], float)
    alarms = Alarms()
    for start in range(0, len(x) - BASELINE_WINDOW + 1, BASELINE_WINDOW):
        end = start + BASELINE_WINDOW
        for j, name in enumerate(NUMERIC):
            if ks_2samp(x[start:end, j], ref_x[:, j]).pvalue < ALPHA:
                alarms.add(name, end)
        window = regions[start:end]
        categories = known + sorted(set(window.tolist()) - set(known))
        observed = np.array([np.sum(window == c) for c in categories], float)
        shares = np.maximum(np.append(ref_counts, np.zeros(len(categories) - len(known))) / ref_counts.sum(), 1e-4)
        expected = shares / shares.sum() * observed.sum()
        if chisquare(observed, expected).pvalue < ALPHA:
            alarms.add("region", end)
    return alarms


def run_stream(stream: Stream, k: int, seed: int) -> dict:
    """Alarm metrics of every detector on one seeded realisation of the stream."""
    ref_x, ref_regions, ref_pred = generate(stream, REFERENCE_ROWS, seed=10_000 + 100 * seed + k, pre_change_only=True)
    profile = build_profile(
        {
            **{name: ref_x[:, j].round(6).tolist() for j, name in enumerate(NUMERIC)},
            "region": ref_regions.tolist(),
            PREDICTION_FEATURE: ref_pred.round(6).tolist(),
        }
    )
    x, regions, prediction = generate(stream, stream.n, seed=100 * seed + k)
    events = to_events(x, regions, prediction)
    t0 = time.perf_counter()
    features, datasets, drifted_psi = run_undertow(stream, profile, events)
    seconds = time.perf_counter() - t0
    baseline = run_baseline(x, regions, ref_x, ref_regions)
    return {
        "Undertow (feature)": features.metrics(stream),
        "Undertow (dataset)": datasets.metrics(stream, True),
        "KS/chi² p<0.01 baseline": baseline.metrics(stream),
        "seconds": seconds,
        "psi": drifted_psi,
        "undrifted": sum(len(e) for f, e in features.by_feature.items() if f != stream.drifted),
    }


def data_section(seeds: int) -> None:
    started = time.perf_counter()
    config = DriftConfig()
    table = [
        "| stream | detector | delay (events) | false alarms /10k | alarms on drifted feature |",
        "|---|---|---:|---:|---:|",
    ]
    notes = []
    for k, stream in enumerate(STREAMS):
        runs = [run_stream(stream, k, seed) for seed in range(seeds)]
        for detector in ("Undertow (feature)", "Undertow (dataset)", "KS/chi² p<0.01 baseline"):
            delay, false_rate, hits = summarise(stream, [run[detector] for run in runs])
            table.append(f"| {stream.name} | {detector} | {delay} | {false_rate} | {hits} |")
        psi = np.concatenate([run["psi"] for run in runs]) if stream.drifted else None
        rate = stream.n * len(runs) / sum(run["seconds"] for run in runs)
        notes.append(
            f"- {stream.name}: Undertow encode+window+evaluate {rate:,.0f} events/s; started alerts on "
            f"undrifted input features: {sum(run['undrifted'] for run in runs)}"
            + (
                f"; PSI of {stream.drifted} in post-change windows: median {np.median(psi):.3f}, "
                f"min {psi.min():.3f}, max {psi.max():.3f}"
                if psi is not None
                else ""
            )
        )
    print(f"# Drift detection: Undertow vs. per-window KS / chi-square ({seeds} seeds per stream)\n")
    print("\n".join(table))
    print("\nDelay: median over seeds (min–max); false alarms: mean over seeds; alarms: mean (min–max).\n")
    print("\n".join(notes))
    print(
        f"\nUndertow ran with the default `DriftConfig()`: {config.model_dump()}. That is tumbling count "
        f"windows of {config.window_size} predictions per model version; a feature is 'moderate' when "
        f"PSI >= {config.psi_moderate} and 'significant' when PSI >= {config.psi_significant}, in both cases "
        f"only if its KS or chi-square p-value is below alpha={config.alpha} (the p-value vetoes noise, the "
        f"effect size decides); an episode starts with the first non-stable window and ends after "
        f"{config.end_after} stable windows in a row; dataset drift needs >= {config.dataset_share:.0%} of "
        f"the input features drifted in one window. Change point at event {CHANGE:,} (except stationary); "
        f"reference {REFERENCE_ROWS:,} pre-change rows, other seed. Total {time.perf_counter() - started:.0f} s."
    )


# --- Real-data features: the same detectors on rows of bundled datasets (bench/real_streams.py) -------------

REAL_STREAMS = (  # (name, shape, kind, size): change at CHANGE, gradual ones over 20,000 predictions
    ("stationary", "stationary", "feature", 0.0),
    ("abrupt, tilt 0.25 on one feature", "abrupt", "feature", 0.25),
    ("gradual, tilt 0 -> 0.5 on one feature over 20k", "gradual", "feature", 0.5),
    ("gradual, class mix 0 -> 0.5 over 20k", "gradual", "class mix", 0.5),
)
REAL_N = 50_000


def real_events(features: tuple[str, ...], x: np.ndarray) -> list[PredictionEvent]:
    values = x.tolist()
    return [
        PredictionEvent.model_validate(
            {
                "event_id": f"e{i}",
                "model_id": "bench",
                "ts": rfc3339(START + timedelta(seconds=i)),
                "features": dict(zip(features, row)),
                "prediction": 0.0,
            }
        )
        for i, row in enumerate(values)
    ]


def run_real_baseline(features: tuple[str, ...], x: np.ndarray, ref_x: np.ndarray) -> Alarms:
    alarms = Alarms()
    for start in range(0, len(x) - BASELINE_WINDOW + 1, BASELINE_WINDOW):
        for j, name in enumerate(features):
            if ks_2samp(x[start : start + BASELINE_WINDOW, j], ref_x[:, j]).pvalue < ALPHA:
                alarms.add(name, start + BASELINE_WINDOW)
    return alarms


def run_real_stream(name: str, shape: str, kind: str, size: float, k: int, seed: int) -> dict:
    """Alarm metrics on one seeded stream of a dataset's rows; every input feature counts as drifted
    (each one correlated with the shifted rows moves)."""
    import real_streams

    data = real_streams.load(name)
    ref_x = real_streams.reference(data, REFERENCE_ROWS, np.random.default_rng(10_000 + 100 * seed + k))
    profile = build_profile({f: ref_x[:, j].tolist() for j, f in enumerate(data.features)})
    n = 100_000 if shape == "stationary" else REAL_N
    x = real_streams.stream(data, n, 100 * seed + k, shape, CHANGE, 20_000, size, kind)
    stream = Stream(shape, n, None if shape == "stationary" else "*")
    features, datasets, _ = run_undertow(stream, profile, real_events(data.features, x))
    baseline = run_real_baseline(data.features, x, ref_x)
    return {
        "Undertow (feature)": _any_feature(features).metrics(stream),
        "Undertow (dataset)": datasets.metrics(stream, True),
        "KS p<0.01 baseline": _any_feature(baseline).metrics(stream),
    }


def _any_feature(alarms: Alarms) -> Alarms:
    """All features' alarms as the drifted one's (``Stream.drifted == "*"``)."""
    merged = Alarms()
    for ends in alarms.by_feature.values():
        for end in ends:
            merged.add("*", end)
    return merged


def real_section(seeds: int) -> None:
    import real_streams

    started = time.perf_counter()
    table = [
        "| dataset | stream | detector | delay (events) | false alarms /10k | alarms after the change |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name in real_streams.DATASETS:
        for k, (label, shape, kind, size) in enumerate(REAL_STREAMS):
            runs = [run_real_stream(name, shape, kind, size, k, seed) for seed in range(seeds)]
            stream = Stream(label, 0, None if shape == "stationary" else "*")
            for detector in runs[0]:
                delay, false_rate, hits = summarise(stream, [run[detector] for run in runs])
                table.append(f"| {name} | {label} | {detector} | {delay} | {false_rate} | {hits} |")
    print(f"\n# Real-data features: Undertow vs. per-window KS ({seeds} seeds per stream)\n")
    print("\n".join(table))
    print(
        f"\nRows of bundled datasets (bench/real_streams.py) re-weighted by exponential tilting; reference "
        f"{REFERENCE_ROWS:,} rows drawn before any shift, other seed; change at event {CHANGE:,}. An alarm on "
        f"any input feature after the change counts (the re-weighted rows move every feature correlated with "
        f"the tilted one); before it, or on the stationary stream, it is false. Baseline: scipy's ks_2samp of "
        f"every feature per window of {BASELINE_WINDOW:,}, p < {ALPHA} (no correction for the number of "
        f"features). Total {time.perf_counter() - started:.0f} s."
    )


# --- Concept drift: detectors on the error stream of a regression model -------------------------------------

TRAIN_ROWS = 5000  # pre-drift rows the model is fitted on
BASELINE_ROWS = 5000  # further pre-drift rows: baseline error mean, sd and error sample
CONCEPT_N = 100_000  # monitored events per stream
CONCEPT_CHANGE = 50_000  # change point, as an index into the monitored stream
LABEL_LAG = 2000  # predictions between a prediction and its label in the late-label variant
FIRST = TRAIN_ROWS + BASELINE_ROWS  # dataset index of the first monitored event
AT = FIRST + CONCEPT_CHANGE  # dataset index of the change point
NEVER = 10**9  # a drift position beyond every stream


@dataclass
class ConceptStream:
    name: str
    drift_type: str  # FriedmanDrift's drift_type
    position: tuple  # FriedmanDrift's position (dataset indices)
    transition_window: int = 0
    drifted: bool = True


CONCEPT_STREAMS = [
    ConceptStream("stationary (gra, drift positions past the end)", "gra", (NEVER, NEVER + 1), drifted=False),
    ConceptStream("abrupt global (gra): features swapped", "gra", (AT, NEVER)),
    ConceptStream(
        "gradual (gsg): old/new concept 50:50 for 10k, then new", "gsg", (AT, NEVER), transition_window=10_000
    ),
    ConceptStream(
        "abrupt local expanding (lea): regions grow at +0, +10k, +20k", "lea", (AT, AT + 10_000, AT + 20_000)
    ),
]
CONCEPT_DETECTORS = ("Undertow ErrorStreamMonitor", "river PageHinkley()", "river ADWIN()")


def friedman(stream: ConceptStream, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 10) and targets of the first FIRST + CONCEPT_N rows of the seeded stream."""
    from river.datasets import synth

    data = synth.FriedmanDrift(
        drift_type=stream.drift_type, position=stream.position, transition_window=stream.transition_window, seed=seed
    )
    n = FIRST + CONCEPT_N
    x, y = np.empty((n, 10)), np.empty(n)
    for i, (features, target) in enumerate(data.take(n)):
        x[i] = [features[j] for j in range(10)]
        y[i] = target
    return x, y


def concept_alarms(errors: list[float], mean: float, sd: float, sample: list[float]) -> dict:
    """Alarm indices of every detector on one error stream, and what Undertow did."""
    from river.drift import ADWIN
    from river.drift import PageHinkley as RiverPageHinkley

    ours = ErrorStreamMonitor("bench", "1", DriftConfig(), mean, sd, error_sample=sample)
    ph, adwin = RiverPageHinkley(), ADWIN()
    alarms: dict[str, list[int]] = {name: [] for name in CONCEPT_DETECTORS}
    first_detector: dict[int, str] = {}
    in_episode_at_change = False
    t0 = time.perf_counter()
    for i, error in enumerate(errors):
        if i == CONCEPT_CHANGE:
            in_episode_at_change = ours.in_episode
        for alert in ours.update(error, "absolute_error", float(i)):
            if alert.data.episode == "started":
                alarms[CONCEPT_DETECTORS[0]].append(i)
                first_detector[i] = alert.data.detector
    seconds = time.perf_counter() - t0
    for detector, name in ((ph, CONCEPT_DETECTORS[1]), (adwin, CONCEPT_DETECTORS[2])):
        for i, error in enumerate(errors):
            detector.update(error)
            if detector.drift_detected:
                alarms[name].append(i)
    return {
        "alarms": alarms,
        "first_detector": first_detector,
        "in_episode_at_change": in_episode_at_change,
        "silenced": ours.silenced_alarms,
        "episodes": ours.episodes,
        "seconds": seconds,
    }


def concept_metrics(alarms: list[int], drifted: bool) -> tuple[int | None, float, int]:
    """Delay (None: no alarm at or after the change), false alarms per 10k pre-change events, repeats."""
    change = CONCEPT_CHANGE if drifted else CONCEPT_N
    before = [i for i in alarms if i < change]
    after = [i for i in alarms if i >= change]
    delay = after[0] - change if after else None
    return delay, len(before) / change * 10_000, max(len(after) - 1, 0)


def run_concept_stream(stream: ConceptStream, k: int, seed: int) -> dict:
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = friedman(stream, seed=1000 * (seed + 1) + k)
    model = GradientBoostingRegressor(random_state=seed).fit(x[:TRAIN_ROWS], y[:TRAIN_ROWS])
    errors = np.abs(y[TRAIN_ROWS:] - model.predict(x[TRAIN_ROWS:]))
    baseline, monitored = errors[:BASELINE_ROWS], errors[BASELINE_ROWS:]
    mean, sd = float(baseline.mean()), float(baseline.std())
    result = concept_alarms(monitored.tolist(), mean, sd, error_sample(baseline))
    result["metrics"] = {name: concept_metrics(a, stream.drifted) for name, a in result["alarms"].items()}
    ours = result["alarms"][CONCEPT_DETECTORS[0]]
    post = [i for i in ours if i >= CONCEPT_CHANGE] if stream.drifted else []
    result["first"] = result["first_detector"][post[0]] if post else None
    result["false_by"] = [
        result["first_detector"][i] for i in ours if i < (CONCEPT_CHANGE if stream.drifted else CONCEPT_N)
    ]
    result["baseline"] = (mean, sd)
    cut = CONCEPT_CHANGE if stream.drifted else CONCEPT_N
    result["shift_sd"] = [float((monitored[:cut].mean() - mean) / sd)] + [
        float((monitored[a : a + 10_000].mean() - mean) / sd) for a in range(CONCEPT_CHANGE, CONCEPT_N, 10_000)
    ]
    return result


def summarise_concept(stream: ConceptStream, runs: list[tuple[int | None, float, int]]) -> tuple[str, str, str, str]:
    """Over seeds: delay, delay with late labels (median (min-max), detected/seeds), false alarms, repeats."""

    def spread(v, fmt):
        return f" ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 and min(v) != max(v) else ""

    rates = [r[1] for r in runs]
    false_rate = f"{np.mean(rates):.2f}" + spread(rates, "{:.2f}".format)
    if not stream.drifted:
        return "—", "—", false_rate, "—"
    delays = [r[0] for r in runs if r[0] is not None]

    def fmt_delay(values: list[int]) -> str:
        if not values:
            return "not detected"
        text = f"{np.median(values):,.0f}" + spread(values, "{:,}".format)
        return text + (f", {len(values)}/{len(runs)} detected" if len(values) < len(runs) else "")

    repeats = [r[2] for r in runs]
    return (
        fmt_delay(delays),
        fmt_delay([d + LABEL_LAG for d in delays]),
        false_rate,
        f"{np.mean(repeats):.1f}" + spread(repeats, str),
    )


def concept_section(seeds: int) -> None:
    from collections import Counter

    started = time.perf_counter()
    config = DriftConfig()
    table = [
        "| stream | detector | delay (events = labels) | delay in prediction time, labels 2,000 late | "
        "false alarms /10k | repeated alarms | Undertow: first detector |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    notes = []
    for k, stream in enumerate(CONCEPT_STREAMS):
        runs = [run_concept_stream(stream, k, seed) for seed in range(seeds)]
        for name in CONCEPT_DETECTORS:
            delay, late, false_rate, repeats = summarise_concept(stream, [run["metrics"][name] for run in runs])
            first = "—"
            if name == CONCEPT_DETECTORS[0] and stream.drifted:
                counts = Counter(run["first"] or "none" for run in runs)
                first = ", ".join(f"{d} {c}/{len(runs)}" for d, c in counts.most_common())
            table.append(f"| {stream.name} | {name} | {delay} | {late} | {false_rate} | {repeats} | {first} |")
        shift = np.median([run["shift_sd"] for run in runs], axis=0)
        means = [run["baseline"][0] for run in runs]
        sds = [run["baseline"][1] for run in runs]
        false_by = Counter(d for run in runs for d in run["false_by"])
        rate = CONCEPT_N * len(runs) / sum(run["seconds"] for run in runs)
        text = (
            f"- {stream.name}: baseline |error| mean {np.median(means):.3f}, sd {np.median(sds):.3f} "
            f"(median over seeds); mean error shift in baseline sd, median over seeds: "
            f"{'pre-change' if stream.drifted else 'whole stream'} {shift[0]:+.3f}"
        )
        if stream.drifted:
            text += "; post-change per 10k: " + ", ".join(f"{v:+.2f}" for v in shift[1:])
            at_change = sum(run["in_episode_at_change"] for run in runs)
            if at_change:
                text += (
                    f"; Undertow was inside a (false) episode at the change point in {at_change}/{len(runs)} "
                    f"seeds, so no new alert could start there"
                )
        else:
            chance = {
                name: [
                    next((i - CONCEPT_CHANGE for i in run["alarms"][name] if i >= CONCEPT_CHANGE), None) for run in runs
                ]
                for name in CONCEPT_DETECTORS
            }
            text += (
                "; first alarm at or after event 50,000 although nothing changed (the 'delay' chance alone "
                "would give), per seed: "
                + "; ".join(f"{name}: {[d if d is not None else '-' for d in v]}" for name, v in chance.items())
            )
        text += (
            f"; Undertow false alerts by first detector: "
            f"{dict(false_by) if false_by else 'none'}; Undertow episodes started "
            f"{[run['episodes'] for run in runs]}, alarms silenced inside episodes "
            f"{[run['silenced'] for run in runs]}; ErrorStreamMonitor {rate:,.0f} labels/s"
        )
        notes.append(text)
    print(
        f"\n# Concept drift: Undertow's error-stream monitor vs. river PageHinkley / ADWIN ({seeds} seeds per stream)\n"
    )
    print("\n".join(table))
    print(
        "\nDelay: median over seeds (min–max), over the seeds that detected; false alarms /10k: mean "
        "(min–max); repeated alarms: mean (min–max).\n"
    )
    print("\n".join(notes))
    print(
        f"\nStreams: river FriedmanDrift (10 uniform features, y = Friedman function + N(0, 1)); a "
        f"GradientBoostingRegressor (sklearn defaults) fitted on rows 0–{TRAIN_ROWS - 1:,}; rows "
        f"{TRAIN_ROWS:,}–{FIRST - 1:,} give the baseline error; rows {FIRST:,}–{FIRST + CONCEPT_N - 1:,} are "
        f"the monitored {CONCEPT_N:,} events, change point at monitored event {CONCEPT_CHANGE:,} (dataset "
        f"index {AT:,}). 'gsg' is river's gradual drift: during the transition window each row follows the old "
        f"or the new concept with probability 1/2, so the mean error jumps halfway at once. 'lea' changes only "
        f"small regions of the input space at first (~1.6% of rows), then larger ones (~5%, ~18%)."
    )
    print(
        f"\nUndertow: `ErrorStreamMonitor` with `DriftConfig()` (ph_delta={config.ph_delta}, "
        f"ph_threshold={config.ph_threshold}, cusum_k={config.cusum_k}, cusum_false_alarm_every="
        f"{config.cusum_false_alarm_every:,.0f}, rolling_window={config.rolling_window}, rolling_step="
        f"{config.rolling_step}, rolling_sigmas={config.rolling_sigmas}), errors standardised by the baseline "
        f"mean and sd, CUSUM calibrated on the baseline error sample; an alarm is an alert (episode start); "
        f"alarms inside an episode are silenced and not counted here. river detectors: default parameters "
        f"on the raw |error| (PageHinkley: min_instances=30, delta=0.005, threshold=50, alpha=0.9999, "
        f"mode='both'; ADWIN: delta=0.002); every drift_detected counts."
    )
    print(
        f"\nLate labels: if the label of prediction i arrives with prediction i + {LABEL_LAG:,} (in order), "
        f"every detector sees exactly the same error sequence, only later; an alarm on the label of "
        f"prediction j is raised at prediction j + {LABEL_LAG:,}. So the delay in prediction time is the "
        f"label delay + {LABEL_LAG:,}, and false alarms and repeats do not change. This is derived, not "
        f"re-simulated (lost labels are not modelled here; see bench/memory.py for the joined pipeline). "
        f"Total {time.perf_counter() - started:.0f} s."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="realisations of every data-drift stream (default 5)")
    parser.add_argument(
        "--concept-seeds", type=int, default=5, help="realisations of every concept-drift stream (default 5)"
    )
    parser.add_argument("--only", choices=("data", "real", "rules", "concept"), help="run one section only")
    args = parser.parse_args(argv)
    if args.only in (None, "data"):
        data_section(args.seeds)
    if args.only in (None, "real"):
        real_section(args.seeds)
    if args.only in (None, "rules"):
        import drift_rules  # the alert rules: flapping, gradual, correlation-only, accuracy before labels

        print()
        drift_rules.main(args.seeds)
    if args.only in (None, "concept"):
        concept_section(args.concept_seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
