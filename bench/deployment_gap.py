"""Deployment-gap alerts and early refinement stops of the production baseline, on simulated stationary streams.

    .venv/bin/python bench/deployment_gap.py [--runs 100] [--refine-labels 30000 10000]

Per run: 5,000 validation errors and a stationary production stream whose
error is 0 %, 4 % (below the 5 % margin), 10 % or 15 % above validation;
a classifier (0/1 errors at a 10 % rate) and a regression model
(half-normal errors, scaled). Each stream runs through
``ErrorStreamMonitor`` with ``DriftConfig()`` and only
``production_refine_labels`` changed, for ``--refine-labels`` plus 2,000
labels. Printed per case and refinement length: the share of runs that
raised a ``deployment_gap`` (the power of the gap test, or its false alarms
where production equals validation), that started a concept episode (none
should: the streams are stationary), and whose baseline stopped refining
early (the trend rule took chance for a change under way). Each row its
own seeds (scaled copies of one stream would repeat the trend rule's
outcome, which does not depend on scale), the same for every refinement
length, so the columns compare like with like.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from undertow.models.drift.config import DriftConfig
from undertow.models.reference import error_sample
from undertow.worker.monitor.concept import ErrorStreamMonitor

WORSE = (0.0, 0.04, 0.10, 0.15)
VALIDATION_ROWS = 5000


def stream(task: str, worse: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation errors, production errors) of one run."""
    rng = np.random.default_rng(seed)
    if task == "classifier":
        return ((rng.random(VALIDATION_ROWS) < 0.10).astype(float), (rng.random(n) < 0.10 * (1 + worse)).astype(float))
    return np.abs(rng.standard_normal(VALIDATION_ROWS)), np.abs(rng.standard_normal(n)) * (1 + worse)


def run(task: str, worse: float, refine: int, seed: int) -> tuple[bool, bool, bool]:
    """(deployment_gap raised, episode started, stopped refining early) for one run."""
    validation, production = stream(task, worse, refine + 2000, seed)
    config = DriftConfig(production_refine_labels=refine)
    metric = "misclassification" if task == "classifier" else "absolute_error"
    monitor = ErrorStreamMonitor(
        "m", "1", config, float(validation.mean()), float(validation.std()), error_sample=error_sample(validation)
    )
    episodes = {
        alert.data.episode
        for i, error in enumerate(production)
        for alert in monitor.update(float(error), metric, float(i), float(i))
    }
    stopped_early = monitor.refine is None and monitor.baseline_labels < refine  # not paused by an episode
    return "deployment_gap" in episodes, "started" in episodes, stopped_early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--refine-labels", type=int, nargs="+", default=[DriftConfig().production_refine_labels, 10_000]
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print("| model | production against validation | refine to | deployment_gap | started | stopped refining early |")
    print("|---|---|---:|---:|---:|---:|")
    for task in ("classifier", "regression"):
        for worse in WORSE:
            for refine in args.refine_labels:
                outcomes = np.array(
                    [run(task, worse, refine, 1000 * WORSE.index(worse) + seed) for seed in range(args.runs)]
                )
                gap, episode, early = outcomes.mean(axis=0)
                print(
                    f"| {task} | {worse:.0%} worse | {refine:,} | {gap:.0%} | {episode:.0%} | {early:.0%} |", flush=True
                )
    print(f"\n{args.runs} runs per row. Total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
