"""An episode whose errors are skewed: a drift confined to a fifth of the inputs puts a fifth of the errors
10-16 baseline sd above the rest. Its level stays, so nothing but the start may be alerted."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from undertow.models.drift.config import DriftConfig
from undertow.models.reference import error_sample
from undertow.worker.dev.sample import START, SampleStream
from undertow.worker.monitor.concept.monitor import ErrorStreamMonitor


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("seed", [40, 41, 43])
def test_a_local_step_that_stays_raises_one_started_and_no_improved(seed):
    """Before the episode's level was a clipped location, the mean of such errors put the downward CUSUMs'
    clipped steps a sd a label above zero: "improved" every 1,500-2,000 labels at a threshold of 800."""
    x, _, prediction, label = SampleStream(seed=seed).rows(5000)
    reference = np.abs(label - prediction)
    monitor = ErrorStreamMonitor(
        "m", "1", DriftConfig(), float(reference.mean()), float(reference.std()), None, error_sample(reference)
    )
    alerts = []
    for i, (p, y) in enumerate(SampleStream(seed=seed).events(12_000)):
        moved = y["label"] + (5.0 if i >= 4000 and p["features"]["x2"] > 0.8 else 0.0)
        error = abs(moved - p["prediction"])
        alerts += [(i, a.data) for a in monitor.update(error, "absolute_error", _epoch(y["ts"]), _epoch(p["ts"]))]
    assert [(d.episode, 4000 <= i < 4100) for i, d in alerts] == [("started", True)]
    # The change began at prediction 4,000, one a second from START.
    assert abs(_epoch(alerts[0][1].change_started_at) - START.timestamp() - 4000) < 600
