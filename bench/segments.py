"""Drift per segment: what segmenting a version costs the monitor's two per-prediction stages.

    .venv/bin/python bench/segments.py [--predictions 20000] [--repeats 2] [--batch 2000] [--top 20]
    .venv/bin/python bench/segments.py --false-alarms 4 [--predictions 40000] [--window-size 500]

A version is registered on 5,000 rows of the sample stream (4 numeric inputs, ``region`` with 4 values at
40/30/20/10 %), once unsegmented and once with ``--segment-by region`` (``--top`` segments kept, every one
watched). The data-drift and concept stages (``DataDriftStage``, ``ConceptStage``) then take the same
predictions, each followed by its label, in batches of ``--batch`` on a fresh SQLite file, each batch in its
own transaction as the runner commits them; parsing is done before the clock starts. Printed: seconds and
predictions per second of each, per repeat, and the segmented run's share more.

``--false-alarms N``: N seeds of a stationary stream (the reference's distribution, other draws) through the
segmented version instead, windows of ``--window-size``: the episodes started by the whole stream and by the
segments, by type.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from undertow.models import registry
from undertow.models.dataset import read_table
from undertow.models.reference import load_reference
from undertow.models.segments import build_segmentation
from undertow.storage import db
from undertow.worker.dev.sample import SampleStream, encode, write_reference_csv
from undertow.worker.monitor.concept import ConceptStage
from undertow.worker.monitor.data_drift import DataDriftStage
from undertow.worker.monitor.retrain_policy import RetrainPolicy
from undertow.worker.runtime.batch import Batch, Position
from undertow.worker.runtime.events import parse_label, parse_prediction


def _engine(segmented: bool, top: int, seed: int = 5, window_size: int = 1000):
    workdir = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    engine = db.make_engine(f"sqlite:///{workdir / 'bench.db'}")
    db.migrate(engine)
    path = workdir / "reference.csv"
    write_reference_csv(SampleStream(seed=seed), path, 5000)
    reference = load_reference(path, target="target", prediction="prediction")
    segments = (
        build_segmentation(read_table(path), ["region"], reference.profile, top, "target", "prediction")
        if segmented
        else None
    )
    with db.make_session_factory(engine).begin() as session:
        registry.register(
            session,
            model_id="housing",
            profile=reference.profile,
            artifacts_dir=workdir,
            drift_config=registry.DriftConfig(window_size=window_size),
            baseline_error=reference.baseline_error,
            error_sample=reference.error_sample,
            segments=segments,
        )
    return engine


def _stages(engine):
    policy = RetrainPolicy("retrain")
    stages = [
        DataDriftStage("alerts", policy),
        ConceptStage("alerts", policy, join_ttl_seconds=86_400, join_max_pending=10**6, pairs_retention=10**6),
    ]
    return stages, db.make_session_factory(engine)


def _events(predictions: int, seed: int) -> list:
    events = []
    for prediction, label in SampleStream(seed=seed).events(predictions):
        events += [parse_prediction(encode(prediction), 1 << 20), parse_label(encode(label), 1 << 20)]
    return events


def _feed(engine, events: list, batch: int) -> None:
    stages, sessions = _stages(engine)
    for start in range(0, len(events), 2 * batch):
        records = Batch(events=[(Position("t", 0, i), e) for i, e in enumerate(events[start : start + 2 * batch])])
        with sessions.begin() as session:
            for stage in stages:
                stage.apply(session, records)


def run(segmented: bool, predictions: int, batch: int, top: int) -> float:
    engine = _engine(segmented, top)
    events = _events(predictions, 5)
    started = time.perf_counter()
    _feed(engine, events, batch)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def false_alarms(seeds: int, predictions: int, batch: int, top: int, window_size: int) -> None:
    """Episodes started on stationary streams: the whole stream's, and the segments' (by segment)."""
    whole: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    for seed in range(1, seeds + 1):
        engine = _engine(True, top, seed, window_size)
        _feed(engine, _events(predictions, seed + 100), batch)
        with engine.connect() as conn:
            for (value,) in conn.execute(text("SELECT cloudevent FROM alerts")):
                alert = json.loads(value)
                if alert["data"]["episode"] != "started":
                    continue
                kind = alert["type"].removeprefix("undertow.")
                if alert["data"].get("segment"):
                    segments[f"{kind} in {','.join(alert['data']['segment'].values())}"] += 1
                else:
                    whole[kind] += 1
        engine.dispose()
    print(
        f"{seeds} stationary streams of {predictions:,} predictions with labels, windows of {window_size}: "
        f"whole stream {sum(whole.values())} episodes {dict(whole)}; segments {sum(segments.values())} {dict(segments)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000, help="predictions per batch (each with its label)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--false-alarms", type=int, metavar="SEEDS", help="stationary streams instead of the cost")
    parser.add_argument("--window-size", type=int, default=500, help="with --false-alarms")
    args = parser.parse_args()
    if args.false_alarms:
        false_alarms(args.false_alarms, args.predictions, args.batch, args.top, args.window_size)
        return
    for repeat in range(args.repeats):
        plain = run(False, args.predictions, args.batch, args.top)
        segmented = run(True, args.predictions, args.batch, args.top)
        print(
            f"repeat {repeat + 1}: unsegmented {plain:.2f} s ({args.predictions / plain:,.0f} predictions/s), "
            f"segmented {segmented:.2f} s ({args.predictions / segmented:,.0f} predictions/s): "
            f"+{segmented / plain - 1:.0%}"
        )


if __name__ == "__main__":
    main()
