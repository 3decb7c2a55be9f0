"""Data-drift alert rules against the per-window baselines: flapping, gradual drift, correlation-only drift,
and accuracy estimated before labels (run by bench/detection.py, or alone).

    .venv/bin/python bench/drift_rules.py [--seeds 5] [--real-seeds N] [--datasets NAME ...]
        [--only normal|real] [--stationary-seeds N]

Streams of four N(0, 1) features x0..x3 (reference: 5,000 rows), windows of
1,000 predictions, fed to ``ModelVersionMonitor`` (``DriftConfig()``) as the
monitor does. Baselines, on the same windows and statistics: **KS-Bonferroni**
(an alarm for a window in which any feature's KS p-value is below
0.01 / 4) and **PSI > 0.2** (an alarm for a window in which any feature's PSI
exceeds 0.2). Undertow runs at its default evidence budget (at most one
false alarm per 250 windows of a model), at KS-Bonferroni's (one per 100
windows: 0.01 per window) and **quiet** (one per 5,000), for delays at three
costs, and **per input only** (the default without the evidence across
inputs, as before it). An alarm of Undertow's is an episode started on an
input feature or on the dataset (the evidence across inputs raises a dataset
alert; for x0's ramp, one whose evidence x0 carries most of).

* flapping: x0 shifted by 0.43 and 0.6 sd in turn (PSI about 0.19 and 0.33,
  around the 0.25 boundary) for 30 windows, then 5 windows back to normal:
  alerts on x0 until the episode ends;
* gradual: x0 moving linearly to +0.5 sd over 5,000, 10,000 or 20,000
  predictions from prediction 20,000: delay of the first alarm on x0;
* stationary: 100,000 predictions: false alarms (episodes started on input features; windows in which a
  baseline alarms);
* correlation: x0 and x1 correlated +0.8, then -0.8 from prediction 20,000
  (marginals unchanged): delay of the multivariate alert; alarms of the
  per-feature baselines;
* accuracy: a calibrated classifier (P(y=1) = sigmoid(3 x)) whose input
  shifts from mean 1.5 to 0 at prediction 20,000, one prediction a second,
  labels 3 hours late: the window whose estimate raised the alert, against
  the arrival of the first label of the shifted period, and the estimate's
  error against the realised accuracy per window;
* real-data features (``--real-seeds``, ``--datasets``): rows of datasets bundled with scikit-learn and
  river (bench/real_streams.py: skewed, heavy-tailed, tied), re-weighted by exponential tilting: gradual on
  one feature's rank over 5,000, 10,000 and 20,000 predictions, on the class mix and on one feature's
  spread over 10,000, abrupt, and stationary; delay of the first alarm on any input feature (every feature
  correlated with the shifted rows moves), against KS-Bonferroni over the dataset's features.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import real_streams
from undertow.models.drift.config import DriftConfig
from undertow.models.profile import build_profile
from undertow.worker.monitor.data_drift import ModelVersionMonitor
from undertow.worker.runtime.events import PredictionEvent

WINDOW, CHANGE, FEATURES = 1000, 20_000, ("x0", "x1", "x2", "x3")
START = datetime(2026, 11, 1, tzinfo=UTC)
LABEL_DELAY_S = 3 * 3600
VARIANTS = (
    ("Undertow", {}),
    ("Undertow, budget 100", {"evidence_false_alarm_windows": 100}),
    ("Undertow, quiet (5,000)", {"evidence_false_alarm_windows": 5000}),
)
# The default rules without the evidence across inputs (the dataset alert ``"rule": "cumulative"``), as before
# it: what it adds. Turned off in the bench only (an infinite threshold), not a setting of the product.
PER_INPUT = "Undertow, per input only"


def _events(rows: np.ndarray, start: int, predictions=None, scores=None, names=FEATURES) -> list[PredictionEvent]:
    names = names[: rows.shape[1]]
    return [
        PredictionEvent.model_construct(
            event_id=f"e{start + i}",
            model_id="m",
            model_version=None,
            ts=START + timedelta(seconds=start + i),
            features=dict(zip(names, map(float, row))),
            prediction=0.0 if predictions is None else predictions[i],
            scores=None if scores is None else scores[i],
        )
        for i, row in enumerate(rows)
    ]


def _monitor(profile, config: dict, **kwargs) -> ModelVersionMonitor:
    """The monitor of a variant (``config``: DriftConfig fields, or ``None`` for ``PER_INPUT``)."""
    monitor = ModelVersionMonitor("m", "1", profile, DriftConfig(**(config or {})), **kwargs)
    if config is None:
        monitor.combined.threshold = math.inf
    return monitor


def _variants(per_input: bool = True):
    return VARIANTS + ((PER_INPUT, None),) if per_input else VARIANTS


def _run(monitor: ModelVersionMonitor, blocks, names=FEATURES) -> list[tuple[int, list, list]]:
    """(window index, alerts, result rows) per window; ``blocks`` yields (rows, predictions, scores)."""
    out, sent = [], 0
    for rows, predictions, scores in blocks:
        encoded, ts = monitor.encode(_events(rows, sent, predictions, scores, names))
        sent += rows.shape[0]
        for window in monitor.window.add(encoded, ts):
            results, alerts = monitor.evaluate(window)
            out.append((window.index, alerts, results))
    return out


def _baselines(windows, names=FEATURES) -> dict[str, list[int]]:
    """Windows in which KS-Bonferroni and PSI > 0.2 alarm, per feature: {detector: [(window, feature)]}."""
    ks, psi = [], []
    for index, _, results in windows:
        for r in results:
            if r["feature"] not in names:
                continue
            if r["ks_pvalue"] is not None and r["ks_pvalue"] < 0.01 / len(names):
                ks.append((index, r["feature"]))
            if r["psi"] > 0.2:
                psi.append((index, r["feature"]))
    return {"KS-Bonferroni": ks, "PSI > 0.2": psi}


def _profile(rng, rows: np.ndarray | None = None):
    rows = rng.normal(size=(5000, 4)) if rows is None else rows
    return build_profile({name: rows[:, j].tolist() for j, name in enumerate(FEATURES[: rows.shape[1]])})


def _blocks(matrix: np.ndarray):
    for start in range(0, matrix.shape[0], WINDOW):
        yield matrix[start : start + WINDOW], None, None


def flapping(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    profile = _profile(rng)
    shifts = [0.43 if i % 2 else 0.6 for i in range(30)] + [0.0] * 5
    matrix = np.vstack([rng.normal(size=(WINDOW, 4)) + np.array([s, 0, 0, 0]) for s in shifts])
    windows = _run(ModelVersionMonitor("m", "1", profile, DriftConfig()), _blocks(matrix))
    ours = [a.data.episode for _, alerts, _ in windows for a in alerts if getattr(a.data, "feature", "") == "x0"]
    base = _baselines(windows)
    return {
        "Undertow": len([e for e in ours if e != "ended"]),
        **{name: len([1 for _, f in alarms if f == "x0"]) for name, alarms in base.items()},
    }


def gradual(seed: int, ramp: int) -> dict:
    rng = np.random.default_rng(seed)
    profile = _profile(rng)
    n = CHANGE + ramp + 10 * WINDOW
    shift = np.clip((np.arange(n) - CHANGE) / ramp, 0, 1) * 0.5
    matrix = rng.normal(size=(n, 4))
    matrix[:, 0] += shift
    delays = {}
    for name, config in _variants():
        windows = _run(_monitor(profile, config), _blocks(matrix))
        first = [
            (i + 1) * WINDOW
            for i, alerts, _ in windows
            for a in alerts
            if _input_started(a) and _names(a, "x0") and (i + 1) * WINDOW > CHANGE
        ]
        delays[name] = first[0] - CHANGE if first else None
        if name == "Undertow":
            base = _baselines(windows)
    for name, alarms in base.items():
        hits = [(i + 1) * WINDOW for i, f in alarms if f == "x0" and (i + 1) * WINDOW > CHANGE]
        delays[name] = hits[0] - CHANGE if hits else None
    return delays


def stationary(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    profile = _profile(rng)
    matrix = rng.normal(size=(100_000, 4))
    counts = {}
    for name, config in _variants():
        windows = _run(_monitor(profile, config), _blocks(matrix))
        counts[name] = sum(1 for _, alerts, _ in windows for a in alerts if _input_started(a))
        if name == "Undertow":
            base = _baselines(windows)
    for name, alarms in base.items():
        counts[name] = len({i for i, _ in alarms})
    return counts


def correlation(seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def rows(n, rho):
        x0 = rng.normal(size=n)
        return np.column_stack([x0, rho * x0 + np.sqrt(1 - rho**2) * rng.normal(size=n), rng.normal(size=(n, 2))])

    profile = _profile(rng, rows(5000, 0.8))
    matrix = np.vstack([rows(CHANGE, 0.8), rows(10 * WINDOW, -0.8)])
    windows = _run(ModelVersionMonitor("m", "1", profile, DriftConfig()), _blocks(matrix))
    multivariate = [
        (i + 1) * WINDOW
        for i, alerts, _ in windows
        for a in alerts
        if a.type == "undertow.drift.multivariate" and a.data.episode == "started"
    ]
    early = [w for w in multivariate if w <= CHANGE]
    late = [w for w in multivariate if w > CHANGE]
    base = _baselines(windows)
    return {
        "Undertow (multivariate)": late[0] - CHANGE if late else None,
        "false": len(early),
        **{name: len([1 for i, _ in alarms if (i + 1) * WINDOW > CHANGE]) for name, alarms in base.items()},
    }


def accuracy(seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def scored(n, mean):
        x = rng.normal(mean, 1, (n, 1))
        p = 1 / (1 + np.exp(-3 * x[:, 0]))
        predicted = np.where(p >= 0.5, "1", "0")
        truth = np.where(rng.random(n) < p, "1", "0")
        return x, predicted, [{"1": float(q), "0": float(1 - q)} for q in p], predicted == truth

    ref_x, ref_pred, _, ref_right = scored(5000, 1.5)
    profile = _profile(rng, ref_x)
    monitor = ModelVersionMonitor("m", "1", profile, DriftConfig(), accuracy=float(ref_right.mean()))
    before, after = scored(CHANGE, 1.5), scored(10 * WINDOW, 0.0)
    x = np.vstack([before[0], after[0]])
    predicted = [*before[1], *after[1]]
    scores = [*before[2], *after[2]]
    right = np.concatenate([before[3], after[3]])
    blocks = ((x[s : s + WINDOW], predicted[s : s + WINDOW], scores[s : s + WINDOW]) for s in range(0, len(x), WINDOW))
    windows = _run(monitor, blocks)
    flagged = [
        (i + 1) * WINDOW
        for i, alerts, _ in windows
        for a in alerts
        if a.type == "undertow.performance.estimated" and a.data.episode == "started"
    ]
    estimates = {
        i: a.data.value for i, alerts, _ in windows for a in alerts if a.type == "undertow.performance.estimated"
    }
    errors = []
    for i in range(len(x) // WINDOW):  # the estimate of every window, against what the labels later said
        confidence = np.array([max(s.values()) for s in scores[i * WINDOW : (i + 1) * WINDOW]])
        errors.append(abs(estimates.get(i, confidence.mean()) - right[i * WINDOW : (i + 1) * WINDOW].mean()))
    first_label = CHANGE + LABEL_DELAY_S  # one prediction a second: the first shifted prediction's label
    return {
        "flagged_at": flagged[0] if flagged else None,
        "false": len([f for f in flagged if f <= CHANGE]),
        "first_label": first_label,
        "mean_abs_error": float(np.mean(errors)),
        "max_abs_error": float(np.max(errors)),
    }


# --- Real-data features (bench/real_streams.py): gradual and abrupt shifts by re-weighting rows --------------

REAL_RAMPS = (5000, 10_000, 20_000)
REAL_SIZE = 0.5  # tilt of the gradual ramps: about +0.5 sd of the tilted feature's normal score, as x0's ramp
ABRUPT_SIZE = 0.25  # an abrupt shift half as large: 0.5 is in every detector's first window
REFERENCE_ROWS = 5000


def _real_monitor_windows(data, reference: np.ndarray, matrix: np.ndarray, config: dict | None):
    profile = build_profile({name: reference[:, j].tolist() for j, name in enumerate(data.features)})
    return _run(_monitor(profile, config), _blocks(matrix), data.features)


def _first_after(ends: list[int], change: int) -> int | None:
    after = [end for end in ends if end > change]
    return min(after) - change if after else None


def real_shift(name: str, seed: int, shape: str, ramp: int, kind: str = "feature") -> dict:
    """Delay of every detector's first alarm on any input feature after the change (every feature correlated
    with the tilted one moves too, so any is a true alarm), in predictions."""
    data = real_streams.load(name)
    rng = np.random.default_rng(seed)
    reference = real_streams.reference(data, REFERENCE_ROWS, rng)
    size = ABRUPT_SIZE if shape == "abrupt" else REAL_SIZE
    n = CHANGE + (0 if shape == "abrupt" else ramp) + 10 * WINDOW
    matrix = real_streams.stream(data, n, seed + 1, shape, CHANGE, ramp, size, kind)
    delays = {}
    for variant, config in _variants():
        windows = _real_monitor_windows(data, reference, matrix, config)
        started = [(i + 1) * WINDOW for i, alerts, _ in windows for a in alerts if _input_started(a)]
        delays[variant] = _first_after(started, CHANGE)
        if variant == "Undertow":
            base = _baselines(windows, data.features)
    for detector, alarms in base.items():
        delays[detector] = _first_after([(i + 1) * WINDOW for i, _ in alarms], CHANGE)
    return delays


def _input_started(alert) -> bool:
    """An episode started on an input feature, or on the dataset (the evidence across inputs, or the share of
    drifted inputs, which comes with those inputs' own alerts): an alarm either way."""
    return alert.type in ("undertow.drift.data", "undertow.drift.dataset") and alert.data.episode == "started"


def _names(alert, feature: str) -> bool:
    """The alert is about ``feature``: its own, or a dataset alert whose evidence it carries most of."""
    if alert.type == "undertow.drift.dataset":
        shares = alert.data.evidence_features
        return bool(shares) and shares[0].feature == feature
    return alert.data.feature == feature


def real_stationary(name: str, seed: int, n: int = 100_000) -> dict:
    """Alarms on a stationary stream: episodes started on any input feature; windows a baseline alarms in."""
    data = real_streams.load(name)
    rng = np.random.default_rng(seed)
    reference = real_streams.reference(data, REFERENCE_ROWS, rng)
    matrix = real_streams.stream(data, n, seed + 1, "stationary")
    counts = {}
    for variant, config in _variants():
        windows = _real_monitor_windows(data, reference, matrix, config)
        counts[variant] = sum(1 for _, alerts, _ in windows for a in alerts if _input_started(a))
        if variant == "Undertow":
            base = _baselines(windows, data.features)
    for detector, alarms in base.items():
        counts[detector] = len({i for i, _ in alarms})
    return counts


def _paired(ours: list, theirs: list) -> str:
    """Per seed, Undertow's delay against KS-Bonferroni's: earlier / same / later (a miss is latest)."""
    a = [math.inf if v is None else v for v in ours]
    b = [math.inf if v is None else v for v in theirs]
    return f"{sum(x < y for x, y in zip(a, b))}/{sum(x == y for x, y in zip(a, b))}/{sum(x > y for x, y in zip(a, b))}"


def delay_table(columns: dict[str, list[dict]], still: list[dict]) -> list[str]:
    """Median delay per column (and, for Undertow's rows, seeds earlier/same/later than KS-Bonferroni),
    false alarms per 100,000 stationary predictions (mean over seeds; total)."""
    names = list(still[0])
    lines = [
        "| detector | " + " | ".join(columns) + " | false alarms per 100k (total) |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for name in names:
        cells = []
        for runs in columns.values():
            cell = _median([r[name] for r in runs])
            if name.startswith("Undertow"):
                cell += f" [{_paired([r[name] for r in runs], [r['KS-Bonferroni'] for r in runs])}]"
            cells.append(cell)
        total = sum(c[name] for c in still)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total / len(still):.2f} ({total}) |")
    return lines


def per_seed(columns: dict[str, list[dict]], detectors=("Undertow", "KS-Bonferroni")) -> list[str]:
    """Every seed's delay, in windows of 1,000 (- = missed)."""
    return [
        f"  - {column}, {d}: " + " ".join("-" if r[d] is None else str(r[d] // WINDOW) for r in runs)
        for column, runs in columns.items()
        for d in detectors
    ]


def real_section(seeds: list[int], datasets: tuple[str, ...]) -> None:
    print(
        f"\n## Real-data features ({len(seeds)} seeds; rows re-weighted by exponential tilting, "
        f"bench/real_streams.py)\n\nDelay of the first alarm on any input feature after the change "
        f"(prediction {CHANGE:,}), median over seeds; [a/b/c]: seeds in which Undertow alarmed earlier / in the "
        f"same window / later than KS-Bonferroni (p < 0.01 / features, any feature). Gradual: tilt 0 -> "
        f"{REAL_SIZE} over the ramp, on one feature's rank, on the class mix or on one feature's spread; abrupt: "
        f"tilt {ABRUPT_SIZE} on the feature. False alarms: 100,000 stationary predictions per seed."
    )
    for name in datasets:
        data = real_streams.load(name)
        columns = {f"feature over {r:,}": [real_shift(name, s, "gradual", r) for s in seeds] for r in REAL_RAMPS}
        for kind in ("class mix", "spread"):
            columns[f"{kind} over 10,000"] = [real_shift(name, s, "gradual", 10_000, kind) for s in seeds]
        columns[f"abrupt {ABRUPT_SIZE}"] = [real_shift(name, s, "abrupt", 0) for s in seeds]
        still = [real_stationary(name, s) for s in seeds]
        moved = real_streams.shift_in_sd(data, REAL_SIZE)[data.tilted]
        print(f"\n### {name}: {len(data.features)} features, tilt on {data.tilted} ({moved:+.2f} sd at {REAL_SIZE})")
        print(f"\n{data.source}\n")
        print("\n".join(delay_table(columns, still)))
        print("\nPer seed, in windows:\n" + "\n".join(per_seed(columns)))


def _median(values) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "missed"
    text = f"{np.median(got):,.0f}"
    return text + (f" ({len(got)}/{len(values)})" if len(got) < len(values) else "")


def normal_section(seeds_: list[int], stationary_seeds: list[int] | None = None) -> None:
    flap = [flapping(s) for s in seeds_]
    print(
        "Flapping (x0's PSI alternating around 0.25 for 30 windows): alerts on x0 until the drift ends, "
        "median (max) over seeds"
    )
    print("| detector | alerts |\n|---|---:|")
    for name in flap[0]:
        print(f"| {name} | {np.median([f[name] for f in flap]):.0f} ({max(f[name] for f in flap)}) |")
    still = [stationary(s) for s in (stationary_seeds or seeds_)]
    print(
        "\nGradual drift of x0 to +0.5 sd: delay of the first alarm on x0 in predictions, median over seeds "
        "([a/b/c]: seeds in which Undertow alarmed earlier / in the same window / later than KS-Bonferroni); "
        f"false alarms on 100,000 stationary predictions per seed ({len(still)} seeds)\n"
    )
    ramps = {f"over {r:,}": [gradual(s, r) for s in seeds_] for r in (5000, 10_000, 20_000)}
    print("\n".join(delay_table(ramps, still)))
    print("\nPer seed, in windows:\n" + "\n".join(per_seed(ramps)))
    corr = [correlation(s) for s in seeds_]
    print("\nCorrelation-only drift (x0-x1 correlation +0.8 to -0.8, marginals unchanged)")
    print(
        f"- Undertow's multivariate check: delay {_median([c['Undertow (multivariate)'] for c in corr])} "
        f"predictions; false alarms before the change {sum(c['false'] for c in corr)}"
    )
    for name in ("KS-Bonferroni", "PSI > 0.2"):
        print(f"- {name}: alarms after the change (10 windows): {sum(c[name] for c in corr)} over {len(seeds_)} seeds")
    acc = [accuracy(s) for s in seeds_]
    print("\nAccuracy under covariate shift, labels 3 hours late (one prediction a second)")
    print(
        f"- estimate flagged the drop at prediction {_median([a['flagged_at'] for a in acc])} (median); the "
        f"first label of the shifted period arrives at prediction {acc[0]['first_label']:,}; false flags before "
        f"the shift {sum(a['false'] for a in acc)}"
    )
    print(
        f"- estimate against realised accuracy per window: mean |error| "
        f"{np.mean([a['mean_abs_error'] for a in acc]):.3f}, largest {max(a['max_abs_error'] for a in acc):.3f}"
    )


def main(
    seeds: int = 5,
    real_seeds: int | None = None,
    datasets: tuple[str, ...] = real_streams.DATASETS,
    only=None,
    stationary_seeds: int | None = None,
) -> None:
    started = time.perf_counter()
    seeds_ = [11 + 101 * s for s in range(seeds)]
    print(f"# Data-drift alert rules ({seeds} seeds; windows of {WINDOW:,}; Undertow = DriftConfig() defaults)\n")
    if only in (None, "normal"):
        normal_section(seeds_, None if stationary_seeds is None else [11 + 101 * s for s in range(stationary_seeds)])
    if only in (None, "real"):
        real_section([11 + 101 * s for s in range(seeds if real_seeds is None else real_seeds)], datasets)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--real-seeds", type=int, help="seeds of the real-data streams (default: --seeds)")
    parser.add_argument("--datasets", nargs="+", choices=real_streams.DATASETS, default=real_streams.DATASETS)
    parser.add_argument("--only", choices=("normal", "real"), help="one section only")
    parser.add_argument(
        "--stationary-seeds", type=int, help="seeds of the normals' stationary streams (default: --seeds)"
    )
    args = parser.parse_args()
    main(args.seeds, args.real_seeds, tuple(args.datasets), args.only, args.stationary_seeds)
