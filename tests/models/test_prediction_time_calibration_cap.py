"""The prediction-time calibration at high traffic: simulated at the cap of labels per bucket, so its cost
stays bounded (the replay is a loop over labels) and a busier version gets the cap's smaller factor."""

from __future__ import annotations

import numpy as np

from undertow.models.drift.prediction_time_calibration import (
    MAX_LABELS_PER_BUCKET,
    Traffic,
    prediction_time_factor,
)


def test_traffic_above_the_cap_is_calibrated_as_the_cap():
    rng = np.random.default_rng(0)
    errors = (rng.random(5000) < 0.17).astype(float)
    z = (errors - errors.mean()) / errors.std()
    delays = rng.lognormal(np.log(300), 0.5, 1000)

    def factor(rate: float) -> float:
        traffic = Traffic(rate=rate, delays=delays, delay_weights=np.full(1000, 1e-3))
        return prediction_time_factor(z, 0.5, traffic, 60.0, seed=1)

    at_cap = factor(MAX_LABELS_PER_BUCKET / 60.0)
    assert factor(1000.0) == factor(10.0) == at_cap  # 8,000 labels a second cost what 1 does
    assert 1.0 < factor(0.2) < at_cap  # below the cap it is measured on the traffic itself
