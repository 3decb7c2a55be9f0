"""The prediction-time calibration's factor over a grid of traffics, for the CUSUMs of k and k/2.

``ProductionBaseline._measure_factors`` skips the k/2 CUSUM's simulation where the k CUSUM's factor is 1,
on the evidence that the k/2 factor is never the larger. This prints both factors for 2 bucket widths,
4 error shapes (the 0/1 error at 11.5 %, a half-normal absolute error, a heavy-tailed loss, normal
errors), 8 label-delay distributions and 4 rates (labels a bucket), and counts the traffics where the
k/2 factor exceeds the k one (it should print 0) and where the k one is 1.

    .venv/bin/python bench/pt_factor_sweep.py [--seed S]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from undertow.models.drift.prediction_time_calibration import Traffic, prediction_time_factor


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    errors = {
        "0/1 at 11.5 %": _standardised((rng.random(2000) < 0.115).astype(float)),
        "half-normal": _standardised(np.abs(rng.normal(size=2000))),
        "heavy tail": _standardised(rng.exponential(size=2000) ** 1.5),
        "normal": _standardised(rng.normal(size=2000)),
    }
    delays = {
        "none": np.zeros(2000),
        "300 s": np.full(2000, 300.0),
        "exp 60 s": rng.exponential(60, 2000),
        "exp 600 s": rng.exponential(600, 2000),
        "lognormal 200 s, 1.5": rng.lognormal(np.log(200), 1.5, 2000),
        "lognormal 300 s, 1": rng.lognormal(np.log(300), 1.0, 2000),
        "uniform 0-2 h": rng.uniform(0, 7200, 2000),
        "lognormal 1 h, 2": rng.lognormal(np.log(3600), 2.0, 2000),
    }
    larger = ones = total = 0
    print(f"{'bucket':>6}  {'errors':<14} {'delays':<22} " + "  ".join(f"{r:>9}" for r in (2.5, 4, 8, 16)))
    for bucket in (20.0, 60.0):
        for error_name, z in errors.items():
            for delay_name, d in delays.items():
                cells = []
                for per_bucket in (2.5, 4, 8, 16):
                    traffic = Traffic(per_bucket / bucket, d, np.full(d.size, 1.0 / d.size))
                    k = prediction_time_factor(z, 0.5, traffic, bucket, args.seed)
                    small = prediction_time_factor(z, 0.25, traffic, bucket, args.seed + 1)
                    total, ones, larger = total + 1, ones + (k == 1.0), larger + (small > k)
                    cells.append(f"{k:4.2f}/{small:4.2f}")
                print(f"{bucket:6.0f}  {error_name:<14} {delay_name:<22} " + "  ".join(cells), flush=True)
    print(f"traffics {total}; k factor 1 in {ones}; k/2 factor above the k one in {larger}")
    return 0 if larger == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
