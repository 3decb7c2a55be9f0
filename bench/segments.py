"""Drift per segment: what segmenting a version costs the monitor's two per-prediction stages.

    .venv/bin/python bench/segments.py [--predictions 20000] [--repeats 2] [--batch 2000] [--top 20]

A version is registered on 5,000 rows of the sample stream (4 numeric inputs, ``region`` with 4 values at
40/30/20/10 %), once unsegmented and once with ``--segment-by region`` (``--top`` segments kept, every one
watched). The data-drift and concept stages (``DataDriftStage``, ``ConceptStage``) then take the same
predictions, each followed by its label, in batches of ``--batch`` on a fresh SQLite file, each batch in its
own transaction as the runner commits them; parsing is done before the clock starts. Printed: seconds and
predictions per second of each, per repeat, and the segmented run's share more.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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


def _engine(segmented: bool, top: int):
    workdir = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    engine = db.make_engine(f"sqlite:///{workdir / 'bench.db'}")
    db.migrate(engine)
    path = workdir / "reference.csv"
    write_reference_csv(SampleStream(seed=5), path, 5000)
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
            baseline_error=reference.baseline_error,
            error_sample=reference.error_sample,
            segments=segments,
        )
    return engine


def run(segmented: bool, predictions: int, batch: int, top: int) -> float:
    engine = _engine(segmented, top)
    events = []
    for prediction, label in SampleStream(seed=5).events(predictions):
        events += [parse_prediction(encode(prediction), 1 << 20), parse_label(encode(label), 1 << 20)]
    policy = RetrainPolicy("retrain")
    stages = [
        DataDriftStage("alerts", policy),
        ConceptStage("alerts", policy, join_ttl_seconds=86_400, join_max_pending=10**6, pairs_retention=10**6),
    ]
    sessions = db.make_session_factory(engine)
    started = time.perf_counter()
    for start in range(0, len(events), 2 * batch):
        records = Batch(events=[(Position("t", 0, i), e) for i, e in enumerate(events[start : start + 2 * batch])])
        with sessions.begin() as session:
            for stage in stages:
                stage.apply(session, records)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000, help="predictions per batch (each with its label)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
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
