"""Error streams for the recorded concept states: numpy only, so the recording script (run against the code
that wrote a format) and the test (run against today's) draw the very same numbers."""

from __future__ import annotations

import numpy as np


def labelled_stream(kind: str, n: int, seed: int, gap: float = 0.1, shifts: dict | None = None):
    """(validation errors, [(error, log loss or None, label time, prediction time)] in arrival order).

    ``regression``: half-normal errors ``gap`` above the validation sample, ``shifts`` (prediction index ->
    added level in validation sd); ``scored``: a calibrated binary classifier's 0/1 error and log loss,
    ``shifts`` (index -> share of labels that contradict the scores). One prediction a second, labels after
    lognormal delays (median 5 min)."""
    rng = np.random.default_rng(seed)
    shifts = {int(k): v for k, v in (shifts or {}).items()}
    level = np.zeros(n)
    for start, shift in shifts.items():
        level[start:] += shift
    if kind == "regression":
        validation = np.abs(rng.normal(0, 1, 5000))
        errors = np.abs(rng.normal(0, 1, n)) * (1 + gap) + level * validation.std()
        losses = None
    else:
        p = rng.beta(1, 4, n)
        q = p + level * (1 - 2 * p)
        y = rng.random(n) < q
        errors = ((p >= 0.5) != y).astype(float)
        losses = -np.log(np.where(y, p, 1 - p))
        validation = ((rng.random(5000) < p[:5000]) != (p[:5000] >= 0.5)).astype(float)
    predicted = np.arange(n, dtype=float)
    arrived = predicted + rng.lognormal(np.log(300), 1.0, n)
    order = np.argsort(arrived, kind="stable")
    return validation, [
        (float(errors[i]), None if losses is None else float(losses[i]), float(arrived[i]), float(predicted[i]))
        for i in order
    ]
