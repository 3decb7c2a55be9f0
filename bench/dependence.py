"""Dependence drift: the pairwise test (undertow.drift.dependence) against the PCA reconstruction check
(undertow.drift.multivariate) in the same run, on normal, heavy-tailed and real-data features.

    .venv/bin/python bench/dependence.py [--seeds 3] [--datasets normal heavy "breast cancer" ...] [--quick]

Per stream and seed, a version is registered on a reference of 5,000 rows and fed windows of 1,000
predictions straight into ``ModelVersionMonitor`` (``DriftConfig()``, every check on, as the monitor runs
them):

* **change**: 20,000 stationary predictions, then 10,000 in which one pair of inputs (x0 and x1 for the
  synthetic streams; for a real dataset its pair with the smallest reference correlation) is re-paired
  on a Gaussian copula of correlation 0.5: within each window, the second feature's values are reordered
  to follow 0.5 times the first's normal score plus noise, so each feature's values in the window (its
  marginal) are exactly those it had. Delay: windows from the change to the check's first alert
  (1 = the first changed window), "missed" if none in the 10 windows;
* **stationary**: 100,000 predictions: episodes started by each check (false alarms per 100,000);
* **calibration**: the test alone at a budget loose enough to count (one alarm per 100 windows), per seed
  on 5 more references with 200 stationary windows each (every window tested against one reference shares
  its sampling error, so one reference alarms more or less often than promised: the promise holds over
  references): windows over the threshold (at most 10 per seed promised), against the same test taking each
  pair's variance as the Gaussian 1 (a plain Fisher z);
* **cost**: microseconds per window of 1,000 of each check's statistic with 10, 50 and 200 normal
  features (the dependence test on the first ``dependence_max_features``, 50 by default, and at the cap's
  largest value, 100), and the registration's profiling of the pairs.

Streams: ``normal`` (10 independent N(0, 1)); ``heavy`` (10 features on a t copula with 3 degrees of
freedom and correlation 0.3, 0 between x0 and x1: lognormal, cubed-t and exponential marginals, tail
dependence); and the
real-data streams of bench/real_streams.py (rows of scikit-learn's and river's bundled datasets drawn with
replacement: ties, skew, discrete values).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_streams
from undertow.models.drift.config import DriftConfig
from undertow.models.drift.dependence import DependenceTest
from undertow.models.profile import build_profile, profile_dependence
from undertow.worker.monitor.data_drift import ModelVersionMonitor

WINDOW, REFERENCE, CHANGE, AFTER, STATIONARY, RHO = 1000, 5000, 20_000, 10_000, 100_000, 0.5
LOOSE = 100  # the calibration's budget: one alarm per this many windows
CALIBRATION_REFERENCES, CALIBRATION_WINDOWS = 5, 200  # per seed: references, and windows tested against each
SYNTHETIC = ("normal", "heavy")
DEFAULT_STREAMS = (*SYNTHETIC, *real_streams.DATASETS)


def _normal(rng, n: int) -> np.ndarray:
    return rng.normal(size=(n, 10))


def _heavy(rng, n: int) -> np.ndarray:
    k = 10
    cov = np.full((k, k), 0.3) + 0.7 * np.eye(k)
    cov[0, 1] = cov[1, 0] = 0.0  # the pair that will change: uncorrelated (yet dependent: one t copula)
    t = rng.multivariate_normal(np.zeros(k), cov, n) / np.sqrt(rng.chisquare(3, n) / 3)[:, None]
    return np.column_stack([np.exp(t[:, :4]), t[:, 4:7] ** 3, -np.log(1 - _t3_cdf(t[:, 7:]))])


def _t3_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.stats import t

    return np.asarray(t.cdf(x, 3))


class Source:
    """A stream's features: a name, its column names and a draw of n seeded rows."""

    def __init__(self, name: str):
        self.name = name
        if name in SYNTHETIC:
            self.features = tuple(f"x{j}" for j in range(10))
            self._draw = _normal if name == "normal" else _heavy
        else:
            data = real_streams.load(name)
            self.features = data.features
            self._draw = lambda rng, n: real_streams.draw(data, np.zeros(n), rng)

    def draw(self, rng, n: int) -> np.ndarray:
        return self._draw(rng, n)


def _repair(block: np.ndarray, a: int, b: int, rng) -> np.ndarray:
    """The block with feature b's values reordered to follow a on a Gaussian copula of correlation RHO."""
    out = block.copy()
    za = ndtri((rankdata(block[:, a]) - 0.5) / block.shape[0])
    target = RHO * za + np.sqrt(1 - RHO**2) * rng.normal(size=block.shape[0])
    out[np.argsort(target, kind="stable"), b] = np.sort(block[:, b])
    return out


def _monitor(source: Source, reference: np.ndarray) -> ModelVersionMonitor:
    profile = build_profile({name: reference[:, j].tolist() for j, name in enumerate(source.features)})
    return ModelVersionMonitor("m", "1", profile, DriftConfig())


def _windows(monitor: ModelVersionMonitor, source: Source, matrix: np.ndarray, start: int):
    """Each window's (index, alerts); the rows go in the monitor's column order (inputs by name)."""
    order = [source.features.index(name) for name in monitor.columns]
    for i in range(0, matrix.shape[0], WINDOW):
        rows = matrix[i : i + WINDOW][:, order]
        ts = start + i + np.arange(rows.shape[0], dtype=float)
        for window in monitor.window.add(rows, ts):
            yield window.index, monitor.evaluate(window)[1]


def _started(alerts, kind: str) -> bool:
    return any(a.type == kind and a.data.episode == "started" for a in alerts)


DEP, PCA = "undertow.drift.dependence", "undertow.drift.multivariate"


def change_run(source: Source, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    reference = source.draw(rng, REFERENCE)
    monitor = _monitor(source, reference)
    pair = _quietest_pair(monitor, source)
    before = source.draw(rng, CHANGE)
    after = source.draw(rng, AFTER)
    after = np.vstack([_repair(after[i : i + WINDOW], *pair, rng) for i in range(0, AFTER, WINDOW)])
    first: dict[str, int | None] = {DEP: None, PCA: None}
    early = {DEP: 0, PCA: 0}
    for index, alerts in _windows(monitor, source, np.vstack([before, after]), 0):
        for kind in first:
            if not _started(alerts, kind):
                continue
            if index < CHANGE // WINDOW:
                early[kind] += 1
            elif first[kind] is None:
                first[kind] = index - CHANGE // WINDOW + 1
    return {"delay": first, "early": early, "pair": pair, "reference_r": _pair_r(monitor, source, pair)}


def _quietest_pair(monitor: ModelVersionMonitor, source: Source) -> tuple[int, int]:
    """x0, x1 for the synthetic streams; for a real dataset the tested pair with the smallest |correlation|."""
    test = monitor.dependence
    if source.name in SYNTHETIC or test is None:
        return 0, 1
    a, b = test.names[int(np.argmin(np.abs(test.reference)))]
    return source.features.index(a), source.features.index(b)


def _pair_r(monitor: ModelVersionMonitor, source: Source, pair: tuple[int, int]) -> float | None:
    test = monitor.dependence
    names = {source.features[pair[0]], source.features[pair[1]]}
    matches = [] if test is None else [k for k, p in enumerate(test.names) if set(p) == names]
    return float(test.reference[matches[0]]) if matches else None


def stationary_run(source: Source, seed: int) -> dict:
    rng = np.random.default_rng(10_000 + seed)
    reference = source.draw(rng, REFERENCE)
    monitor = _monitor(source, reference)
    stream = source.draw(rng, STATIONARY)
    started = {DEP: 0, PCA: 0}
    for _, alerts in _windows(monitor, source, stream, 0):
        for kind in started:
            started[kind] += _started(alerts, kind)
    # Calibration at a loose budget, the same windows: the test alone, and a plain Fisher z beside it.
    return {"started": started, "over": calibration(source, rng)}


def calibration(source: Source, rng) -> dict[str, int]:
    """Windows over the threshold at the loose budget, of CALIBRATION_REFERENCES x CALIBRATION_WINDOWS."""
    over = {"calibrated": 0, "plain Fisher z": 0}
    for _ in range(CALIBRATION_REFERENCES):
        reference = source.draw(rng, REFERENCE)
        pairs = profile_dependence({name: reference[:, j].tolist() for j, name in enumerate(source.features)})
        loose = DependenceTest(*pairs.first(DriftConfig().dependence_max_features), pairs.rows, LOOSE)
        plain = loose.at_budget(LOOSE, variance=1.0)
        columns = [source.features.index(name) for name in loose.features]
        for _ in range(CALIBRATION_WINDOWS):
            rows = source.draw(rng, WINDOW)[:, columns]
            over["calibrated"] += loose(rows).z > loose.threshold
            over["plain Fisher z"] += plain(rows).z > plain.threshold
    return over


def cost(features: int, repeats: int) -> dict[str, float]:
    """µs per window of 1,000: the dependence statistic (default cap and the largest), the PCA check's."""
    rng = np.random.default_rng(features)
    names = [f"x{j:03d}" for j in range(features)]
    reference = rng.normal(size=(REFERENCE, features))
    columns = {name: reference[:, j].tolist() for j, name in enumerate(names)}
    started = time.perf_counter()
    dependence = profile_dependence(columns)
    profiling = time.perf_counter() - started
    profile = build_profile(columns)
    window = rng.normal(size=(WINDOW, features))
    out = {"profile (s)": profiling}
    for label, cap in (("dependence, cap 50", 50), ("dependence, cap 100", 100)):
        test = DependenceTest(*dependence.first(cap), dependence.rows, 1e9)
        rows = window[:, [names.index(n) for n in test.features]]
        out[label] = _time(lambda t=test, r=rows: t(r), repeats)
    mv = profile.multivariate
    out["PCA"] = _time(lambda: mv.row_errors(window[:, [names.index(n) for n in mv.features]]).mean(), repeats)
    out["pairs (cap 50)"] = min(features, 50) * (min(features, 50) - 1) / 2
    return out


def _time(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best * 1e6


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_STREAMS))
    parser.add_argument("--quick", action="store_true", help="cost only with fewer repeats")
    args = parser.parse_args()
    if not args.quick:
        print(
            "| stream | pair (reference r) | dependence: delay, windows (per seed) | PCA: delay | dependence: false "
            "alarms per 100k | PCA: false alarms per 100k | calibration at 1 per 100 windows: calibrated, "
            f"plain Fisher z (windows over, of {CALIBRATION_REFERENCES * CALIBRATION_WINDOWS:,} per seed) |"
        )
        print("|---|---|---|---|---:|---:|---|")
        for name in args.datasets:
            source = Source(name)
            changes = [change_run(source, seed) for seed in range(args.seeds)]
            quiet = [stationary_run(source, seed) for seed in range(args.seeds)]
            pair = changes[0]["pair"]
            r = changes[0]["reference_r"]
            dep = [c["delay"][DEP] for c in changes]
            pca = [c["delay"][PCA] for c in changes]
            print(
                f"| {name} | {source.features[pair[0]]}, {source.features[pair[1]]} "
                f"({'-' if r is None else f'{r:+.2f}'}) | {_delays(dep)} | {_delays(pca)} | "
                f"{sum(q['started'][DEP] for q in quiet) / args.seeds:.1f} "
                f"(+{sum(c['early'][DEP] for c in changes)} before the changes) | "
                f"{sum(q['started'][PCA] for q in quiet) / args.seeds:.1f} "
                f"(+{sum(c['early'][PCA] for c in changes)}) | "
                f"{sum(q['over']['calibrated'] for q in quiet)}, {sum(q['over']['plain Fisher z'] for q in quiet)} "
                f"(promised at most {args.seeds * CALIBRATION_REFERENCES * CALIBRATION_WINDOWS // LOOSE}) |",
                flush=True,
            )
    print()
    print(
        "| features | pairs tested (cap 50) | dependence, cap 50 (µs / window) | dependence, cap 100 | PCA | "
        "profiling the pairs at registration (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for features in (10, 50, 200):
        c = cost(features, 5 if args.quick else 20)
        print(
            f"| {features} | {c['pairs (cap 50)']:.0f} | {c['dependence, cap 50']:,.0f} | "
            f"{c['dependence, cap 100']:,.0f} | {c['PCA']:,.0f} | {c['profile (s)']:.2f} |",
            flush=True,
        )


def _delays(values) -> str:
    shown = ", ".join("missed" if v is None else str(v) for v in values)
    return f"{shown} (median {_median(values) if any(v is not None for v in values) else 'missed'})"


if __name__ == "__main__":
    main()
