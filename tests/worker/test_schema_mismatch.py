"""Predictions whose features do not match the registered schema (issue 30, point 5): counted per model
and reason in ``status`` and ``/metrics`` with a rate-limited warning, or dead-lettered for a strict version."""

from __future__ import annotations

import json

from tests.conftest import wait_for
from tests.worker.test_metrics import _metrics
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream

NO_WAITING = {"UNDERTOW_WAIT_FOR_REGISTRATION": "false"}


def _renamed(prediction: dict, old: str, new: str) -> dict:
    features = dict(prediction["features"])
    features[new] = features.pop(old)
    return {**prediction, "features": features}


def _faulty_stream(seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """100 good predictions, then 40 with x0 renamed, 30 with x1 as text, 20 with an extra feature."""
    predictions = [p for p, _ in SampleStream(seed=seed).events(190)]
    good, renamed = predictions[:100], [_renamed(p, "x0", "x0_cm") for p in predictions[100:140]]
    as_text = [{**p, "features": {**p["features"], "x1": str(p["features"]["x1"])}} for p in predictions[140:170]]
    extra = [{**p, "features": {**p["features"], "debug_flag": 1}} for p in predictions[170:190]]
    return good, {"renamed": renamed, "as_text": as_text, "extra": extra}


def test_a_renamed_feature_is_counted_in_status_and_metrics_and_warned_about_once(env):
    env.register_reference(SampleStream(seed=1))
    good, faulty = _faulty_stream(seed=2)
    # Twice over: the warning is rate-limited (once per model and reason per hour), the counts are not.
    sent = [*good, *faulty["renamed"], *faulty["as_text"], *faulty["extra"]]
    env.send_sequence([("prediction", p) for p in sent])
    port = free_port()
    monitor = env.start_monitor("--metrics-port", str(port), env=NO_WAITING)
    try:
        missing = 'undertow_schema_mismatches_total{model_id="housing",reason="missing"}'
        values = wait_for(
            lambda: (m := _metrics(port)).get(missing, 0) >= 40 and m,
            120,
            "the renamed feature's predictions to be counted",
        )
        assert values[missing] == 40
        assert values['undertow_schema_mismatches_total{model_id="housing",reason="extra"}'] == 60
        assert values['undertow_schema_mismatches_total{model_id="housing",reason="type"}'] == 30
        assert values['undertow_schema_mismatches_dead_lettered_total{model_id="housing",reason="missing"}'] == 0
        env.send_sequence([("prediction", {**p, "event_id": p["event_id"] + "-again"}) for p in faulty["renamed"]])
        wait_for(lambda: _metrics(port).get(missing, 0) >= 80, 60, "the second batch to be counted")
    finally:
        monitor.terminate()
        assert monitor.wait(timeout=60) == 0, env.log_of(monitor)
    log = env.log_of(monitor, tail=1_000_000)

    status = env.status()
    by_reason = {m["reason"]: m for m in status["schema_mismatches"]}
    assert by_reason["missing"]["predictions"] == 80 and by_reason["missing"]["feature"] == "x0"
    assert by_reason["extra"]["predictions"] == 100
    assert by_reason["type"]["predictions"] == 30 and by_reason["type"]["feature"] == "x1"
    assert {m["model_version"] for m in status["schema_mismatches"]} == {"1"}
    assert all(m["dead_lettered"] == 0 for m in status["schema_mismatches"])
    # Not strict: every prediction is still monitored, with what it has.
    assert env.scalar("SELECT predictions FROM model_stats WHERE model_id = 'housing'") == 230
    warnings = [line for line in log.splitlines() if "schema mismatch" in line]
    assert len(warnings) <= 3, warnings  # once per reason at most, however many batches
    assert any("feature 'x0' missing (renamed to 'x0_cm'?)" in line for line in warnings), warnings
    assert any("'x1' sent as str" in line for line in warnings), warnings


def test_text_status_names_the_model_reason_and_feature(env):
    env.register_reference(SampleStream(seed=3))
    good, faulty = _faulty_stream(seed=4)
    env.send_sequence([("prediction", p) for p in [*good, *faulty["renamed"]]])
    env.drain(env=NO_WAITING)
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run(
        [sys.executable, "-m", "undertow", "status", *env.cli_args()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("schema mismatches of housing")]
    assert any("40 predictions missing" in line and "'x0'" in line for line in lines), done.stdout
    assert any("40 predictions extra" in line and "'x0_cm'" in line for line in lines), done.stdout


def test_a_strict_version_dead_letters_mismatches_and_takes_them_corrected(env):
    env.register_reference(SampleStream(seed=5), strict_schema=True)
    good, faulty = _faulty_stream(seed=6)
    renamed = faulty["renamed"]
    env.send_sequence([("prediction", p) for p in [*good, *renamed, *faulty["as_text"]]])
    env.drain(env=NO_WAITING)

    assert env.scalar("SELECT predictions FROM model_stats WHERE model_id = 'housing'") == 100
    letters = env.read_all(env.topics.predictions + ".DLT", expected=70)
    assert len(letters) == 70
    headers = dict(letters[0].headers)
    assert headers["undertow.error.stage"] == b"schema"
    assert b"strict-schema" in headers["undertow.error.message"]
    assert {json.loads(r.value)["event_id"] for r in letters} == {p["event_id"] for p in [*renamed, *faulty["as_text"]]}
    status = env.status()
    by_reason = {m["reason"]: m for m in status["schema_mismatches"]}
    assert by_reason["missing"]["dead_lettered"] == 40 and by_reason["type"]["dead_lettered"] == 30
    assert sum(d["count"] for d in status["dead_letters"]) == 70

    # Fixed at the producer and sent again with the same event ids: taken, not dropped as duplicates.
    env.send_sequence([("prediction", _renamed(p, "x0_cm", "x0")) for p in renamed])
    env.drain(env=NO_WAITING)
    assert env.scalar("SELECT predictions FROM model_stats WHERE model_id = 'housing'") == 140
    assert env.scalar("SELECT duplicates FROM model_stats WHERE model_id = 'housing'") == 0


def _register_classifier(env, model_id: str = "churn") -> None:
    """A 0/1 classifier: its held-out rows' targets say its classes are integers."""
    from undertow.models import registry
    from undertow.models.profile import build_profile
    from undertow.storage import db

    rows = [p for p, _ in SampleStream(seed=10, model_id=model_id).events(400)]
    columns = {name: [p["features"][name] for p in rows] for name in rows[0]["features"]}
    columns["__prediction__"] = [i % 2 for i in range(len(rows))]
    test_set = {"features": [p["features"] for p in rows[:50]], "targets": [i % 2 for i in range(50)]}
    test_set["predictions"] = test_set["targets"]
    with db.make_session_factory(env.engine).begin() as session:
        registry.register(
            session,
            model_id=model_id,
            profile=build_profile(columns),
            artifacts_dir=env.artifacts_dir,
            baseline_error=(0.1, 0.3),
            task="classification",
            test_set=test_set,
        )


def test_labels_that_cannot_be_a_classifiers_classes_are_dead_lettered_and_their_predictions_wait(env):
    """0/1 predictions labelled "no"/"yes" (a mapping forgotten in the producer) or 0.5: refused with one
    line, counted in status, never scored as misclassifications; a corrected label with the same event id
    then joins its prediction."""
    _register_classifier(env)
    events = list(SampleStream(seed=11, model_id="churn").events(120))
    predictions = [{**p, "prediction": i % 2} for i, (p, _) in enumerate(events)]
    right = [{**label, "label": i % 2} for i, (_, label) in enumerate(events)]
    wrong = [{**label, "label": ("no", "yes")[i % 2]} for label, i in zip(right[:59], range(59))]
    wrong.append({**right[59], "label": 0.5})
    env.send_sequence([("prediction", p) for p in predictions])
    env.send_sequence([("label", label) for label in [*wrong, *right[60:]]])
    env.drain(env=NO_WAITING)

    letters = env.read_all(env.topics.labels + ".DLT", expected=60)
    assert {json.loads(r.value)["event_id"] for r in letters} == {label["event_id"] for label in wrong}
    message = dict(letters[0].headers)["undertow.error.message"].decode()
    assert message == (
        "label 'no' of model 'churn' cannot be one of version 1's integer classes (0, 1): map the labels to "
        "the classes the model was trained on"
    ), message
    assert env.scalar("SELECT COUNT(*) FROM labelled_pairs WHERE model_id = 'churn'") == 60
    assert env.scalar("SELECT SUM(error) FROM labelled_pairs WHERE model_id = 'churn'") == 0  # none misscored
    status = env.status()
    (refused,) = [m for m in status["schema_mismatches"] if m["reason"] == "label"]
    assert (refused["predictions"], refused["dead_lettered"], refused["feature"]) == (60, 60, "0.5")

    env.send_sequence([("label", label) for label in right[:60]])  # corrected, the same event ids
    env.drain(env=NO_WAITING)
    assert env.scalar("SELECT COUNT(*) FROM labelled_pairs WHERE model_id = 'churn'") == 120
    assert env.scalar("SELECT SUM(error) FROM labelled_pairs WHERE model_id = 'churn'") == 0
    assert env.scalar("SELECT duplicates FROM model_stats WHERE model_id = 'churn'") == 0
