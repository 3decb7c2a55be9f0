"""The ingest hot path's faster code gives what the plain code gave, to the bit.

``_replay`` (the prediction-time calibration's simulation) was rewritten for speed: buckets as rows,
only the rows a label raised checked against h. The reference below is the code it replaced, kept as the
specification: the alarm counts must agree exactly, since they set each version's thresholds, which
recorded alerts and stored state pin.
"""

from __future__ import annotations

import numpy as np
import pytest

from undertow.models.drift import detectors
from undertow.models.drift.prediction_time_calibration import _replay


def _reference_replay(steps, buckets, counted, h, window) -> tuple[int, int]:
    streams = steps.shape[1]
    suffix = np.zeros((streams, window))
    plain = np.zeros(streams)
    floor = np.full(streams, np.iinfo(np.int64).min)
    newest, alarms, arrival_order = int(buckets[0]), 0, 0
    for step, bucket, count in zip(steps, buckets.tolist(), counted.tolist(), strict=True):
        plain = np.maximum(plain + step, 0.0)
        plain_fired = plain > h
        if plain_fired.any():
            arrival_order += int(plain_fired.sum()) if count else 0
            plain[plain_fired] = 0.0
        if bucket > newest:
            shift = min(bucket - newest, window)
            suffix[:, : window - shift] = suffix[:, shift:]
            suffix[:, window - shift :] = 0.0
            newest = bucket
        column = bucket - newest + window - 1
        if column < 0:
            continue
        live = np.where(floor <= bucket, step, 0.0)
        suffix[:, : column + 1] += live[:, None]
        fired = suffix.max(axis=1) > h
        if fired.any():
            alarms += int(fired.sum()) if count else 0
            suffix[fired] = 0.0
            floor[fired] = newest
    return alarms, arrival_order


def _stream(seed: int, labels: int = 800, streams: int = 24):
    rng = np.random.default_rng(seed)
    window = int(rng.integers(2, 40))
    # 0/1-like errors (a lattice, where ties with h are likeliest) and continuous ones, k subtracted
    steps = (
        np.where(rng.random((labels, streams)) < 0.15, 2.3, -0.6)
        if seed % 2
        else rng.normal(-0.3, 1, (labels, streams))
    )
    buckets = np.sort(rng.integers(0, labels // 4, labels))
    late = rng.random(labels) < 0.3  # some labels of older buckets, out of order
    buckets[late] = np.maximum(buckets[late] - rng.integers(0, 3 * window, late.sum()), 0)
    counted = rng.random(labels) > 0.2
    h = rng.uniform(0.5, 6.0, streams)
    return steps, buckets, counted, h, window


@pytest.mark.parametrize("seed", range(12))
def test_replay_matches_the_plain_replay(seed):
    steps, buckets, counted, h, window = _stream(seed)
    assert _replay(steps, buckets, counted, h, window) == _reference_replay(steps, buckets, counted, h, window)


@pytest.mark.parametrize("h", [0.0, -0.5])
def test_replay_at_thresholds_not_above_zero(h):
    """The fast check relies on every stored sum being at most h; at h <= 0 the whole window is checked."""
    steps, buckets, counted, _, window = _stream(3)
    thresholds = np.full(steps.shape[1], h)
    assert _replay(steps, buckets, counted, thresholds, window) == _reference_replay(
        steps, buckets, counted, thresholds, window
    )


def test_blas_controller_is_built_once():
    assert detectors._blas() is detectors._blas()
