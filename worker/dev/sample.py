"""A seeded synthetic event stream, for the demo, tests and benchmarks.

Numeric features are independent normals, ``region`` is categorical; the
model's prediction is a linear function of the features and the label adds
noise. ``shift`` moves one numeric feature's mean by that many standard
deviations (data drift); ``concept_shift`` changes the label's relation to
the features without touching the inputs (concept drift).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

REGIONS = ("north", "south", "east", "west")
REGION_SHARES = (0.4, 0.3, 0.2, 0.1)
START = datetime(2026, 11, 1, tzinfo=UTC)


def rfc3339(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SampleStream:
    def __init__(self, n_features: int = 4, seed: int = 0, model_id: str = "housing"):
        self.n_features = n_features
        self.model_id = model_id
        self.rng = np.random.default_rng(seed)
        self.weights = np.linspace(1.0, 0.2, n_features)
        self.names = [f"x{i}" for i in range(n_features)]
        self._namespace = uuid.UUID(int=seed)

    def rows(self, n: int, shift: float = 0.0, shift_feature: int = 0, new_region: str | None = None):
        """Feature matrix, regions, predictions and labels for ``n`` events."""
        x = self.rng.normal(size=(n, self.n_features))
        if shift:
            x[:, shift_feature] += shift
        regions = self.rng.choice(REGIONS, size=n, p=REGION_SHARES)
        if new_region:
            regions[self.rng.random(n) < 0.3] = new_region
        prediction = x @ self.weights
        label = prediction + self.rng.normal(scale=0.5, size=n)
        return x, regions, prediction, label

    def events(self, n: int, start_index: int = 0, concept_shift: float = 0.0, **drift):
        """(prediction event, label event) pairs as dicts, in event-time order."""
        x, regions, prediction, label = self.rows(n, **drift)
        label = label + concept_shift
        for i in range(n):
            index = start_index + i
            event_id = str(uuid.uuid5(self._namespace, f"{self.model_id}/{index}"))
            ts = START + timedelta(seconds=index)
            features = {name: round(float(v), 6) for name, v in zip(self.names, x[i])}
            features["region"] = str(regions[i])
            yield (
                {
                    "event_id": event_id,
                    "model_id": self.model_id,
                    "ts": rfc3339(ts),
                    "features": features,
                    "prediction": round(float(prediction[i]), 6),
                },
                {
                    "event_id": event_id,
                    "model_id": self.model_id,
                    "ts": rfc3339(ts + timedelta(hours=1)),
                    "label": round(float(label[i]), 6),
                },
            )


def encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def write_reference_csv(stream: SampleStream, path, n: int = 5000) -> None:
    """Training-like reference data: features, the model's prediction and the target."""
    import csv

    x, regions, prediction, label = stream.rows(n)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*stream.names, "region", "prediction", "target"])
        for i in range(n):
            writer.writerow([*(f"{v:.6f}" for v in x[i]), regions[i], f"{prediction[i]:.6f}", f"{label[i]:.6f}"])


def write_training_csv(stream: SampleStream, path, n: int = 5000) -> None:
    """Labelled training data for ``undertow train``: features, an event time and the target."""
    import csv

    x, regions, _, label = stream.rows(n)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*stream.names, "region", "ts", "target"])
        for i in range(n):
            ts = rfc3339(START - timedelta(seconds=n - i))
            writer.writerow([*(f"{v:.6f}" for v in x[i]), regions[i], ts, f"{label[i]:.6f}"])
