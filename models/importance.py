"""How much the model leans on each input: permutation importance on the version's held-out rows, measured
once at registration, so a dataset-drift alert can put the drifted inputs that matter to the model first.

Each input's values are shuffled among the rows (scikit-learn's ``permutation_importance``: seeded, a few
repeats) and the score's loss is its importance: accuracy for a classifier, mean absolute error otherwise.
Stored as shares summing to 1 (a negative importance, noise, counts as 0).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from undertow.models import training
from undertow.models.profile import PREDICTION_FEATURE, ReferenceProfile

log = logging.getLogger(__name__)

IMPORTANCE_ROWS = 1000  # held-out rows used; more change the shares little and cost a predict each
REPEATS = 3
SEED = 0


def importance_shares(
    model: Any, test_set: dict[str, Any] | None, profile: ReferenceProfile, task: str | None
) -> dict[str, float] | None:
    """Each input's share of the model's permutation importance; None without held-out rows, or when the
    model cannot be scored on them (logged: the registration goes on without it)."""
    from sklearn.inspection import permutation_importance

    if not test_set or not test_set.get("features") or not test_set.get("targets"):
        return None
    # A trainer's test set has features and targets only; a registered reference's also the predictions.
    keep = [i for i, y in enumerate(test_set["targets"]) if y is not None]
    keep = keep[:: max(1, len(keep) // IMPORTANCE_ROWS)][:IMPORTANCE_ROWS]
    schema = {name: f.kind for name, f in profile.features.items() if name != PREDICTION_FEATURE}
    frame = training.to_frame([test_set["features"][i] for i in keep], schema)
    targets = np.array([test_set["targets"][i] for i in keep])
    scoring = "accuracy" if task == "classification" else "neg_mean_absolute_error"
    try:
        with warnings.catch_warnings():
            # A model fitted on arrays warns at every predict on named columns: 30 lines saying nothing here.
            warnings.filterwarnings("ignore", message="X has feature names", category=UserWarning)
            found = permutation_importance(model, frame, targets, scoring=scoring, n_repeats=REPEATS, random_state=SEED)
    except Exception as exc:  # noqa: BLE001 - the model's own failure: importance is an extra, not a gate
        log.warning("permutation importance not measured (%s: %s)", type(exc).__name__, exc)
        return None
    positive = np.clip(np.nan_to_num(found.importances_mean), 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        return None
    return {name: round(float(value / total), 6) for name, value in zip(schema, positive)}
