"""False alarms of the rolling means at their default thresholds, counted on simulated stationary errors.

    .venv/bin/python bench/rolling_false_alarms.py [--labels 100000000] [--seed 0]

    .venv/bin/python bench/rolling_false_alarms.py --detector 2000 equal 4.0 --detector 500 equal 4.4

The monitor promises one false alarm per ``cusum_false_alarm_every`` labels
(10 M) per detector. The rolling means' thresholds are set in standard
errors of their window mean; this counts what they really do. Each rolling
mean of ``DriftConfig()`` (the short one, equal weights; the long one,
linear weights) and, for reference, the long one as it was (equal weights,
4.5), or the ``--detector WINDOW WEIGHTS SIGMAS`` given instead, runs over
``--labels`` stationary errors of four kinds: normal; |normal| (a
regressor's absolute error, skewness 1.0); 0/1 at a 10 % rate (a
classifier, 2.67); exponential (a stand-in for log loss, 2.0). Two ways:

* **known baseline**: streams of 10 M errors standardised by their exact
  mean and sd, at the threshold for their exact skewness: what the
  threshold itself does;
* **estimated baseline**, as the monitor has it: streams of 1 M errors,
  each standardised by the mean and sd of its own 10,000 baseline errors
  (a production baseline on its way to settling on 30,000), at the threshold for that estimate
  (``baseline_labels`` 10,000) and for the skewness of the first 1,000 of
  them. Baselines that happen to sit low raise more alarms, those that sit
  high fewer; the count is over all of them.

The window statistic is computed for every evaluation (every ``step``
labels once full) with the detector's own weights, checked against
``RollingMean.update`` on the first labels; a false alarm is a crossing of
the threshold from below (the monitor opens an episode there).

Printed per detector, kind and baseline: alarms, labels per alarm and that
as a multiple of the promise (at least 1: no more alarms than promised;
with ~20 alarms the count itself is uncertain by about a quarter).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import RollingMean, sample_skewness

KNOWN_STREAM, ESTIMATED_STREAM = 10_000_000, 1_000_000
BASELINE_LABELS, SKEWNESS_LABELS = 10_000, 1_000
ABS_NORMAL_MEAN, ABS_NORMAL_SD = math.sqrt(2 / math.pi), math.sqrt(1 - 2 / math.pi)
KINDS = {  # name: (standardised errors of n labels, exact skewness)
    "normal": (lambda rng, n: rng.standard_normal(n), 0.0),
    "|normal| (regression)": (
        lambda rng, n: (np.abs(rng.standard_normal(n)) - ABS_NORMAL_MEAN) / ABS_NORMAL_SD,
        math.sqrt(2) * (4 - math.pi) / (math.pi - 2) ** 1.5,
    ),
    "0/1 at 10 % (classification)": (lambda rng, n: ((rng.random(n) < 0.1) - 0.1) / 0.3, 0.8 / 0.3),
    "exponential (log loss)": (lambda rng, n: rng.exponential(1.0, n) - 1.0, 2.0),
}


def detectors(config: DriftConfig, given: list[list[str]] | None) -> dict[str, dict]:
    """The rolling means to count, as keyword arguments of RollingMean (without the skewness)."""
    step = config.rolling_step
    if given:
        return {
            f"{window} labels, {weights}, {sigmas}": {
                "window": int(window),
                "step": step,
                "sigmas": float(sigmas),
                "weights": weights,
            }
            for window, weights, sigmas in given
        }
    long = {"window": config.rolling_long_window, "step": step}
    return {
        f"rolling mean ({config.rolling_window}, {config.rolling_sigmas})": {
            "window": config.rolling_window,
            "step": step,
            "sigmas": config.rolling_sigmas,
        },
        f"long rolling mean ({config.rolling_long_window}, linear, {config.rolling_long_sigmas})": {
            **long,
            "sigmas": config.rolling_long_sigmas,
            "weights": "linear",
        },
        f"long, as before ({config.rolling_long_window}, equal, 4.5)": {**long, "sigmas": 4.5},
    }


def evaluations(z: np.ndarray, detector: RollingMean) -> np.ndarray:
    """The detector's value at each of its evaluations over the stream z (a fresh detector)."""
    window = detector.window
    kernel = np.full(window, 1 / window) if detector.kernel is None else detector.kernel
    values = fftconvolve(z, kernel[::-1], mode="valid")  # values[i]: the window ending at label window + i
    counts = np.arange(window, len(z) + 1)
    return values[counts % detector.step == 0]


def check(detector_kwargs: dict, rng) -> None:
    """The vectorised values are RollingMean's own."""
    z = rng.standard_normal(5_000)
    detector, seen = RollingMean(**detector_kwargs), []
    for value in z:
        detector.update(float(value))
        if detector.evaluated:
            seen.append(detector.value)
    np.testing.assert_allclose(evaluations(z, RollingMean(**detector_kwargs)), seen, atol=1e-9)


def false_alarms(values: np.ndarray, threshold: float) -> int:
    above = values > threshold
    return int(above[0]) + int(np.sum(above[1:] & ~above[:-1]))


def count(kwargs: dict, draw, skewness: float, labels: int, estimated: bool, rng) -> int:
    """False alarms on ``labels`` stationary errors, with a known or an estimated baseline."""
    alarms, done = 0, 0
    while done < labels:
        n = min(ESTIMATED_STREAM if estimated else KNOWN_STREAM, labels - done)
        z = draw(rng, n)
        if estimated:
            baseline = draw(rng, BASELINE_LABELS)
            z = (z - baseline.mean()) / baseline.std()
            detector = RollingMean(
                **kwargs, baseline_labels=BASELINE_LABELS, skewness=sample_skewness(baseline[:SKEWNESS_LABELS])
            )
        else:
            detector = RollingMean(**kwargs, skewness=skewness)
        alarms += false_alarms(evaluations(z, detector), detector.threshold)
        done += n
    return alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000_000, help="labels per detector and kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detector",
        nargs=3,
        action="append",
        metavar=("WINDOW", "WEIGHTS", "SIGMAS"),
        help="count this rolling mean instead of the defaults (repeatable)",
    )
    args = parser.parse_args()
    config = DriftConfig()
    promise = config.cusum_false_alarm_every
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        "| detector | errors | baseline | false alarms | labels per alarm | multiple of the promise |\n"
        "|---|---|---|---:|---:|---:|"
    )
    for name, kwargs in detectors(config, args.detector).items():
        check(kwargs, rng)
        for kind, (draw, skewness) in KINDS.items():
            for estimated in (False, True):
                alarms = count(kwargs, draw, skewness, args.labels, estimated, rng)
                per_alarm = args.labels / alarms if alarms else math.inf
                print(
                    f"| {name} | {kind} | {'estimated' if estimated else 'known'} | {alarms} | "
                    f"{per_alarm / 1e6:,.1f} M | {per_alarm / promise:.1f} |",
                    flush=True,
                )
    print(
        f"\n{args.labels:,} labels per detector, kind and baseline, seed {args.seed}; promise: one false alarm "
        f"per {promise:,.0f} labels. Total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
