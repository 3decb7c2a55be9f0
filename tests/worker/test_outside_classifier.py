"""A classifier trained elsewhere (0/1 integer labels, scores on every prediction): registered as a classifier,
its labels scored as classes, the log loss and the estimated accuracy on (issue 30, point 4)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.postgres

FEATURES = ["tenure", "spend", "calls", "age"]
START = datetime(2026, 11, 1, tzinfo=UTC)

FIT = """
import joblib, pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
frame = pd.read_csv("train.csv")
features = ["tenure", "spend", "calls", "age"]
model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame[features], frame["churned"])
frame["predicted"] = model.predict(frame[features])
frame.to_csv("reference.csv", index=False)
joblib.dump(model, "churn.joblib")
"""


def _rows(rng, n: int, flip: bool = False):
    x = rng.normal(size=(n, len(FEATURES)))
    churned = (x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype(int)
    return x, (1 - churned) if flip else churned


def _cli(env, *args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "undertow", "--log-level", "WARNING", *args, *env.cli_args()],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_outside_logistic_regression_on_0_1_labels_is_a_classifier_end_to_end(env, tmp_path):
    rng = np.random.default_rng(7)
    x, y = _rows(rng, 3000)
    with open(tmp_path / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "churned"])
        writer.writerows([*map(float, x[i]), int(y[i])] for i in range(len(y)))
    fitted = subprocess.run([sys.executable, "-c", FIT], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert fitted.returncode == 0, fitted.stderr

    registered = _cli(
        env,
        "models",
        "register",
        "--model-id",
        "churn",
        "--reference",
        "reference.csv",
        "--target",
        "churned",
        "--prediction-column",
        "predicted",
        "--artifact",
        "churn.joblib",
        cwd=tmp_path,
    )
    assert registered.returncode == 0, registered.stderr
    assert "task: classification (inferred: the artifact has predict_proba" in registered.stderr
    assert json.loads(registered.stdout)["task"] == "classification"
    card = _cli(env, "models", "card", "--model-id", "churn")
    assert card.returncode == 0, card.stderr
    assert "**task**: classification" in card.stdout and "**algorithm**: LogisticRegression" in card.stdout
    assert "None" not in card.stdout.split("## Intended use")[0]
    # 0/1 labels are classes: the baseline is a misclassification rate, not an absolute error of 0/1 numbers.
    baseline = env.scalar("SELECT baseline_error_mean FROM model_versions WHERE model_id = 'churn'")
    assert 0.05 < baseline < 0.4

    import joblib

    model = joblib.load(tmp_path / "churn.joblib")
    items, i = [], 0
    for flip in (False, True):  # then the concept flips: yesterday's churners stay
        x, y = _rows(rng, 3000, flip)
        import pandas as pd

        frame = pd.DataFrame(x, columns=FEATURES)
        predictions, probabilities = model.predict(frame), model.predict_proba(frame)
        for row, label, prediction, p in zip(x, y, predictions, probabilities):
            ts = START + timedelta(seconds=i)
            event = {
                "event_id": f"e{i}",
                "model_id": "churn",
                "ts": ts.isoformat().replace("+00:00", "Z"),
                "features": dict(zip(FEATURES, map(float, row))),
                "prediction": int(prediction),
                "scores": {str(c): float(q) for c, q in zip(model.classes_, p)},
            }
            items += [
                ("prediction", event),
                (
                    "label",
                    {
                        "event_id": f"e{i}",
                        "model_id": "churn",
                        "ts": (ts + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
                        "label": int(label),
                    },
                ),
            ]
            i += 1
    env.send_sequence(items)
    env.drain(env={"UNDERTOW_WAIT_FOR_REGISTRATION": "false"})

    with env.engine.connect() as conn:
        errors = {value for (value,) in conn.exec_driver_sql("SELECT DISTINCT error FROM labelled_pairs")}
        metrics = {
            json.loads(event)["data"]["metric"]
            for (event,) in conn.exec_driver_sql("SELECT cloudevent FROM alerts WHERE type = 'undertow.drift.concept'")
        }
    assert errors == {0.0, 1.0}
    assert "misclassification" in metrics and "log_loss" in metrics, metrics
    status = env.status()
    (checks,) = [c for c in status["data_checks"] if c["model_id"] == "churn"]
    assert "estimated_accuracy" in checks  # from the scores, before any label
