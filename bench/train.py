"""Training and gate time of a retrain, at 10k, 50k and 100k labelled pairs.

    .venv/bin/python bench/train.py [--sizes 10000 50000 100000] [--seed 0]

Per size, in the same run: the trainer's candidate build (the default
recipe's pipeline fitted on the training part, scored on the held-out part,
profiled, test set kept) against the bare estimator fitted on a numeric
matrix of the same rows (no preprocessing, no bookkeeping), and the gate's
paired bootstrap (1,000 resamples) against ``scipy.stats.bootstrap`` with
``paired=True`` on the same differences. Prints seconds and ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.ensemble import HistGradientBoostingRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from undertow.models import candidate, gate, training
from undertow.worker.dev.sample import SampleStream


def pairs(n: int, seed: int):
    x, regions, _, label = SampleStream(seed=seed).rows(n)
    rows = [{"x0": a, "x1": b, "x2": c, "x3": d, "region": str(r)} for (a, b, c, d), r in zip(x.tolist(), regions)]
    return rows, label.tolist(), np.arange(n, dtype=float), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    schema = {"x0": "numeric", "x1": "numeric", "x2": "numeric", "x3": "numeric", "region": "categorical"}
    print(f"{'pairs':>8} {'build s':>8} {'bare fit s':>10} {'ratio':>6} {'gate s':>7} {'scipy s':>8} {'ratio':>6}")
    for n in args.sizes:
        rows, targets, times, x = pairs(n, args.seed)
        split = training.split_by_time(times, 0.25, 0.02, 500)
        started = time.perf_counter()
        built = candidate.build_version(
            training.default_pipeline(schema, "regression"), rows, targets, schema, "regression", split
        )
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        HistGradientBoostingRegressor(max_iter=200, random_state=42).fit(
            x[split.train], np.asarray(targets)[split.train]
        )
        bare_s = time.perf_counter() - started
        champion = built.holdout_errors + np.random.default_rng(args.seed).normal(0.01, 0.05, built.holdout_errors.size)
        big = np.tile(built.holdout_errors, max(1, n // max(built.holdout_errors.size, 1)))[:n]  # gate cost at n pairs
        champion_big = np.tile(champion, max(1, n // max(champion.size, 1)))[:n]
        started = time.perf_counter()
        gate.judge(champion_big, big, gate.GateRules(), champion_sha256="a", candidate_sha256="b", own_test=None)
        gate_s = time.perf_counter() - started
        started = time.perf_counter()
        stats.bootstrap(
            (champion_big, big),
            lambda a, b, axis=-1: (a - b).mean(axis=axis),
            paired=True,
            n_resamples=1000,
            method="percentile",
            random_state=args.seed,
            batch=50,
        )
        scipy_s = time.perf_counter() - started
        print(
            f"{n:>8} {build_s:>8.2f} {bare_s:>10.2f} {build_s / bare_s:>6.2f} {gate_s:>7.3f} {scipy_s:>8.3f} "
            f"{gate_s / scipy_s:>6.2f}"
        )


if __name__ == "__main__":
    main()
