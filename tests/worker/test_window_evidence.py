"""Evidence across the input features of a window (models/drift/evidence.py, CombinedEvidence): a drift that
moves every input a little, none enough for its own evidence, raises a dataset alert (``"rule": "cumulative"``)
naming the inputs that carry it; the per-feature alerts stay as they were."""

import json
import math

import numpy as np
import pytest

from tests.worker.test_data_drift_rules import _events
from undertow.models.drift.config import DriftConfig
from undertow.models.profile import build_profile
from undertow.worker.monitor.data_drift import ModelVersionMonitor
from undertow.worker.runtime.output_events import DatasetDrift, Window

NAMES = [f"x{j}" for j in range(10)]


def _windows(seed: int, shift: float, windows: int = 12) -> tuple[dict, list[np.ndarray]]:
    """A reference of 10 independent N(0, 1) inputs and windows of 1,000 in which every input's mean has moved
    by ``shift`` sd (0.05: a rank-sum z of about 1.4 per input and window, far below one input's threshold)."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(5000, len(NAMES)))
    return {n: list(reference[:, j]) for j, n in enumerate(NAMES)}, [
        rng.normal(size=(1000, len(NAMES))) + shift for _ in range(windows)
    ]


def _alerts(columns: dict, windows: list[np.ndarray], across: bool = True) -> list[tuple[int, object]]:
    monitor = ModelVersionMonitor("m", "1", build_profile(columns), DriftConfig())
    if not across:
        monitor.combined.threshold = math.inf
    out = []
    for i, matrix in enumerate(windows):
        rows, ts = monitor.encode(
            _events([dict(zip(NAMES, map(float, r))) for r in matrix], [0.0] * len(matrix), start=i * 1000)
        )
        for window in monitor.window.add(rows, ts):
            out += [(window.index, a) for a in monitor.evaluate(window)[1]]
    return out


def test_every_input_moving_a_little_raises_a_cumulative_dataset_alert_before_any_input_alerts():
    found = 0
    for seed in range(3):
        columns, windows = _windows(seed, 0.05)
        alerts = _alerts(columns, windows)
        dataset = [(i, a) for i, a in alerts if a.type == "undertow.drift.dataset" and a.data.episode == "started"]
        inputs = [i for i, a in alerts if a.type == "undertow.drift.data" and a.data.episode == "started"]
        if dataset and (not inputs or dataset[0][0] < min(inputs)):
            found += 1
            data = dataset[0][1].data
            assert data.rule == "cumulative" and data.severity == "moderate" and data.drifted_features == []
            # One false alarm per 250 windows of the model, its whole budget: the normal score of p = 1/250.
            assert data.evidence_z > data.evidence_threshold == pytest.approx(2.652069807902)
            named = [share.feature for share in data.evidence_features]
            assert set(named) <= set(NAMES) and len(named) >= 2  # several inputs carry it, largest first
            shares = [share.share for share in data.evidence_features]
            assert shares == sorted(shares, reverse=True) and (sum(shares) >= 0.9 or len(shares) == 10)
    assert found == 3


def test_the_per_input_alerts_are_the_same_with_and_without_the_evidence_across_inputs():
    for seed, shift in ((3, 0.05), (4, 0.0), (5, 0.15)):
        columns, windows = _windows(seed, shift)
        with_it = [(i, a.model_dump_json()) for i, a in _alerts(columns, windows) if a.type == "undertow.drift.data"]
        without = [(i, a.model_dump_json()) for i, a in _alerts(columns, windows, across=False)]
        assert with_it == [(i, a) for i, a in without if '"undertow.drift.data"' in a]
        if shift == 0.15:
            assert with_it  # a drift of 0.15 sd on every input: they alert on their own too


def test_a_dataset_alert_by_the_share_keeps_its_bytes_and_a_cumulative_one_says_what_carried_it():
    window = Window(index=3, start_ts="2026-11-01T00:00:00.000Z", end_ts="2026-11-01T00:16:40.000Z", n=1000)
    common = dict(model_id="m", model_version="1", severity="moderate", episode="started", window=window)
    by_share = json.loads(
        DatasetDrift(drifted_share=0.5, drifted_features=["a"], threshold=0.5, **common).model_dump_json()
    )
    assert not {"rule", "evidence_z", "evidence_threshold", "evidence_features"} & set(by_share)
    cumulative = json.loads(
        DatasetDrift(
            drifted_share=0.0,
            drifted_features=[],
            threshold=0.5,
            rule="cumulative",
            evidence_z=2.9,
            evidence_threshold=2.65,
            evidence_features=[{"feature": "a", "share": 0.6}, {"feature": "b", "share": 0.35}],
            **common,
        ).model_dump_json()
    )
    assert cumulative["rule"] == "cumulative" and [f["feature"] for f in cumulative["evidence_features"]] == ["a", "b"]
