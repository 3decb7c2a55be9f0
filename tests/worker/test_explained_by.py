"""Which inputs explain a drift: ``explained_by`` on concept alerts, ``ranked`` on dataset-drift alerts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from undertow.models.drift.explain import CategoryBins, NumericBins, explain_change
from undertow.worker.dev.sample import SampleStream


def _concept_alerts(env) -> list[dict]:
    with env.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT cloudevent FROM alerts WHERE type = 'undertow.drift.concept' ORDER BY event_ts")
        ).all()
    return [json.loads(row[0])["data"] for row in rows]


def _local_concept_drift(n: int, change: int, seed: int):
    """Predictions and their labels; from ``change`` on, the target moves by 1.5 where x2 > 0.8 only (a fifth of
    the rows), so the error rises there and nowhere else."""
    for i, (prediction, label) in enumerate(SampleStream(seed=seed).events(n)):
        if i >= change and prediction["features"]["x2"] > 0.8:
            label = {**label, "label": round(label["label"] + 1.5, 6)}
        yield prediction, label


def _lower_edge(bin_range: str) -> float:
    """The lower edge of a bin named "(a, b]" or "> a"."""
    return float(bin_range.lstrip("(>").split(",")[0])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [41, 42, 43])
def test_a_concept_drift_confined_to_one_input_s_range_is_explained_by_that_input_first(env, seed):
    env.register_reference(SampleStream(seed=seed))
    env.send_events(_local_concept_drift(8000, 4000, seed=seed))
    env.drain()

    alerts = [a for a in _concept_alerts(env) if a["episode"] != "ended"]
    assert alerts, "the drift was not found"
    first_alert = alerts[0]
    assert first_alert["episode"] == "started" and first_alert["explained_against"] == "production"
    for alert in alerts:
        first, *others = alert["explained_by"]
        assert first["feature"] == "x2", alert["explained_by"]
        # Listed at all means a bin stands out or z > 2.33; at the first alert, a few dozen labels after the
        # change, that is as sure as it gets.
        assert first["share"] > max((other["share"] for other in others), default=0.0)
        top = first["bins"][0]
        assert _lower_edge(top["range"]) > 0.5, top  # the top of x2's range, where the target moved
        assert top["error_after"] > top["error_before"] + 0.5


def _sample(rng, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.uniform(0, 1, n), "region": rng.choice(np.array(["north", "south", "east"], dtype=object), n)}


BINS = {"x": NumericBins([0.25, 0.5, 0.75]), "region": CategoryBins(["north", "south"])}


def test_a_rise_in_one_category_is_explained_by_that_category_and_an_even_rise_by_nothing():
    rng = np.random.default_rng(3)
    before, after = _sample(rng, 6000), _sample(rng, 6000)
    errors_before = rng.exponential(1.0, 6000)
    local = rng.exponential(1.0, 6000) + np.where(after["region"] == "east", 1.5, 0.0)  # "east": the other bin
    found = explain_change(before, errors_before, after, local, BINS)
    assert [e.feature for e in found][:1] == ["region"]
    assert found[0].share > 0.9 and [b.label for b in found[0].bins] == ["other"]
    assert all(e.share < 0.1 for e in found[1:])

    even = rng.exponential(1.0, 6000) + 0.5  # a rise for everyone: no input explains it
    assert explain_change(before, errors_before, after, even, BINS) == []


def test_a_fall_confined_to_one_range_is_explained_as_a_rise_would_be():
    rng = np.random.default_rng(4)
    before, after = _sample(rng, 6000), _sample(rng, 6000)
    errors_before = rng.exponential(1.0, 6000) + np.where(before["x"] < 0.25, 1.0, 0.0)
    errors_after = rng.exponential(1.0, 6000)  # the low range recovered
    found = explain_change(before, errors_before, after, errors_after, BINS)
    assert found[0].feature == "x" and found[0].share > 0.8
    assert found[0].bins[0].label == "<= 0.25" and found[0].bins[0].error_after < found[0].bins[0].error_before


def test_too_few_pairs_on_either_side_explain_nothing():
    rng = np.random.default_rng(5)
    few = _sample(rng, 10)
    assert explain_change(few, rng.random(10), _sample(rng, 500), rng.random(500), BINS) == []


def _regression_rows(rng, n: int) -> tuple[list[dict], list[float]]:
    """y leans on x0, a little on x1, not at all on x2."""
    x = rng.normal(size=(n, 3))
    y = 3.0 * x[:, 0] + 0.3 * x[:, 1] + rng.normal(scale=0.1, size=n)
    return [{"x0": a, "x1": b, "x2": c} for a, b, c in x.tolist()], y.tolist()


def test_registration_measures_each_input_s_share_of_permutation_importance_on_the_held_out_rows(engine, tmp_path):
    import joblib
    from sklearn.linear_model import LinearRegression

    from undertow.models import registry, training
    from undertow.models.card import markdown, model_card
    from undertow.models.profile import build_profile
    from undertow.storage import db

    rng = np.random.default_rng(8)
    rows, targets = _regression_rows(rng, 2000)
    schema = {"x0": "numeric", "x1": "numeric", "x2": "numeric"}
    model = LinearRegression().fit(training.to_frame(rows, schema), targets)
    artifact = tmp_path / "model.joblib"
    joblib.dump(model, artifact)
    predictions = model.predict(training.to_frame(rows, schema)).tolist()
    profile = build_profile({name: [row[name] for row in rows] for name in schema})
    with db.make_session_factory(engine).begin() as session:
        row = registry.register(
            session,
            model_id="m",
            profile=profile,
            artifacts_dir=tmp_path / "artifacts",
            artifact=artifact,
            test_set={"features": rows, "targets": targets, "predictions": predictions},
            task="regression",
        )
        stored = registry.ReferenceProfile.model_validate_json(row.profile).importance
        card = json.loads(row.model_card)["feature_importance"]
        assert list(card) == ["method", "x0", "x1", "x2"]  # the model card lists them, most important first
        assert "## Feature importance\n\n- **method**: permutation, held-out rows\n- **x0**: " in markdown(
            model_card(row, None, [])
        )
        without = registry.register(session, model_id="n", profile=profile, artifacts_dir=tmp_path / "artifacts")
        assert registry.ReferenceProfile.model_validate_json(without.profile).importance is None
    assert stored is not None and set(stored) == set(schema)
    assert stored["x0"] > 0.85 and stored["x1"] > stored["x2"] and stored["x2"] < 0.01
    assert abs(sum(stored.values()) - 1.0) < 1e-5
    # The trainer's candidates come with features and targets only: measured the same.
    from undertow.models.importance import importance_shares

    assert importance_shares(model, {"features": rows, "targets": targets}, profile, "regression") == stored


def test_a_dataset_drift_ranks_the_drifted_inputs_by_drift_times_importance():
    from datetime import UTC, datetime, timedelta

    from undertow.models.drift.config import DriftConfig
    from undertow.models.profile import build_profile
    from undertow.worker.monitor.data_drift import ModelVersionMonitor
    from undertow.worker.runtime.events import PredictionEvent

    rng = np.random.default_rng(9)
    reference = rng.normal(size=(5000, 3))
    profile = build_profile({f"x{j}": reference[:, j].tolist() for j in range(3)}).model_copy(
        update={"importance": {"x0": 0.9, "x1": 0.1, "x2": 0.0}}
    )
    monitor = ModelVersionMonitor("m", "1", profile, DriftConfig())
    shifted = rng.normal(size=(3000, 3)) + np.array([0.5, 1.0, 2.0])  # x2 moves most, x0 least
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = [
        PredictionEvent.model_construct(
            event_id=f"e{i}",
            model_id="m",
            model_version=None,
            ts=start + timedelta(seconds=i),
            features={f"x{j}": float(v) for j, v in enumerate(row)},
            prediction=0.0,
            scores=None,
        )
        for i, row in enumerate(shifted)
    ]
    rows, ts = monitor.encode(events)
    alerts = [a for window in monitor.window.add(rows, ts) for a in monitor.evaluate(window)[1]]
    dataset = [a for a in alerts if a.type == "undertow.drift.dataset"]
    assert dataset, [a.type for a in alerts]
    ranked = dataset[0].data.ranked
    assert [r.feature for r in ranked] == ["x0", "x1", "x2"]  # by PSI alone it would be x2, x1, x0
    assert ranked[0].psi < ranked[2].psi and ranked[0].importance == 0.9 and ranked[2].score == 0.0


def test_a_rolling_mean_alert_without_a_change_time_is_explained_from_its_window_of_pairs(engine, tmp_path):
    """All predictions logged at once (a batch job): the prediction-time CUSUMs cannot date the change, a
    rolling mean fires with no ``change_started_at``. Its window of newest pairs is "after", the pairs
    before it "before", not the whole history against the held-out rows (which diluted the change away)."""
    from undertow.models import registry
    from undertow.models.drift.config import DriftConfig
    from undertow.models.profile import build_profile
    from undertow.storage import db, repo
    from undertow.worker.monitor.concept.explain import explain_alert
    from undertow.worker.runtime import cloudevents
    from undertow.worker.runtime.output_events import Baseline, ConceptDrift, ConceptDriftAlert

    rng = np.random.default_rng(12)
    x = rng.normal(size=(6000, 2))
    turned = np.arange(6000) >= 5000  # the newest 1,000: those who call a lot now churn
    errors = np.where(turned & (x[:, 1] > 1.0), rng.random(6000) < 0.6, rng.random(6000) < 0.15).astype(float)
    profile = build_profile({"tenure": x[:3000, 0].tolist(), "calls": x[:3000, 1].tolist()})
    with db.make_session_factory(engine).begin() as session:
        registry.register(session, model_id="churn", profile=profile, artifacts_dir=tmp_path, task="classification")
        repo.add_pairs(
            session,
            [
                ("churn", i, f"e{i}", "1", 1e9, 1e9, json.dumps({"tenure": a, "calls": b}), "0", "0", e, None)
                for i, ((a, b), e) in enumerate(zip(x.tolist(), errors.tolist()))
            ],
        )
        data = ConceptDrift(
            model_id="churn",
            model_version="1",
            severity="significant",
            episode="started",
            detector="rolling_mean_long",
            metric="misclassification",
            value=0.2,
            threshold=0.15,
            unit="baseline_sd",
            baseline=Baseline(mean=0.15, sd=0.36),
            recent_mean_error=0.25,
            detected_at=cloudevents.rfc3339(1e9),
            label_count=6000,
            change_started_at=None,
        )
        alert = ConceptDriftAlert(id="a", subject="churn", time=data.detected_at, data=data)
        explained = explain_alert(session, alert, seq=5999).data
    assert DriftConfig().rolling_long_window == 2000  # "after": the newest 2,000, half of them turned
    assert explained.explained_against == "production"
    first = explained.explained_by[0]
    assert first.feature == "calls" and first.share > 0.4 and _lower_edge(first.bins[0].range) > 0.8
    assert all(other.share < 0.1 for other in explained.explained_by[1:])
