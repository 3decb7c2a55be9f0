"""/metrics of the monitor and the trainer, read after a short stream and checked against what was sent."""

import shutil
import subprocess
import time

import httpx

from tests.conftest import wait_for
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream


def _metrics(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_monitor_and_trainer_metrics_count_what_was_sent(env):
    env.register_reference(SampleStream(seed=1))
    pairs = list(SampleStream(seed=2).events(1500))
    env.send_events(pairs[:1200])  # 1,200 predictions with labels
    env.send_events(pairs[1200:], labels=False)  # 300 predictions still waiting for theirs
    env.send_events(pairs[:100], labels=False)  # 100 retries of predictions already sent
    env.send(env.topics.predictions, b"{not json")  # one bad record
    typo = [{**p, "model_id": "housnig", "event_id": f"typo-{i}"} for i, (p, _) in enumerate(pairs[:30])]
    env.send_sequence([("prediction", p) for p in typo])  # 30 predictions of a model id nobody registered
    port, trainer_port = free_port(), free_port()
    monitor = env.start_monitor("--metrics-port", str(port), env={"UNDERTOW_WAIT_FOR_REGISTRATION": "false"})
    trainer = env.start_trainer("--metrics-port", str(trainer_port))
    predictions, labels = env.topics.predictions, env.topics.labels
    try:
        consumed = f'undertow_events_consumed_total{{kind="prediction",topic="{predictions}"}}'
        values = wait_for(
            lambda: (m := _metrics(port)).get(consumed, 0) >= 1630 and m, 120, "the monitor to consume the stream"
        )
        # Retries and the unregistered id's events are valid events: consumed, then counted as
        # duplicates and as unregistered.
        assert values[consumed] == 1630
        assert values[f'undertow_events_consumed_total{{kind="label",topic="{labels}"}}'] == 1200
        assert values['undertow_dead_letters_total{reason="InvalidEvent",stage="validate"}'] == 1
        assert values["undertow_duplicates_total"] == 100
        unregistered = 'undertow_unregistered_events_total{kind="prediction",model_id="housnig"}'
        values = wait_for(
            lambda: (m := _metrics(port)).get(unregistered, 0) >= 30 and m,
            30,
            "the unregistered id's predictions to be counted",
        )
        assert values[unregistered] == 30 and values["undertow_unregistered_model_ids"] == 1
        assert values['undertow_join_pending{kind="prediction"}'] == 300
        assert values['undertow_join_pending{kind="label"}'] == 0
        assert values["undertow_batch_duration_seconds_count"] >= 1
        assert values[f'undertow_last_event_timestamp_seconds{{topic="{predictions}"}}'] > 1.7e9

        def lags():
            return [
                v
                for k, v in _metrics(port).items()
                if k.startswith("undertow_consumer_lag{") and f'topic="{predictions}"' in k
            ]

        wait_for(lambda: lags() and not any(lags()), 30, "the stored offsets to reach the log end")
        trainer_values = wait_for(lambda: _metrics(trainer_port), 60, "the trainer's metrics")
        assert trainer_values['undertow_training_runs{status="promoted"}'] == 0
        assert "undertow_join_pending" not in str(trainer_values)  # the monitor's numbers, exported once
    finally:
        for proc in (monitor, trainer):
            proc.terminate()
            assert proc.wait(timeout=60) == 0, env.log_of(proc)


def _per_model_state(engine) -> None:
    """Two registered models and one unregistered id, written as the monitor and trainer leave them.

    housing: version 1 archived (with a significant episode still open: it gets no more traffic), version 2
    the champion with 60 input features, two closed windows, episodes and a production baseline; churn: a
    classifier champion with nothing seen yet; "typo": events of an id nobody registered.
    """
    import numpy as np
    from sqlalchemy import insert

    from undertow.models.drift.concept_state import CURRENT_FORMAT, ConceptState
    from undertow.models.drift.config import DriftConfig
    from undertow.models.drift.drift_state import CODEC, CheckEpisode, DataDriftState
    from undertow.models.drift.episodes import Episode
    from undertow.models.drift.error_stream import ErrorStream
    from undertow.storage import tables

    def version(model_id, number, stage, task, baseline):
        row = dict(model_id=model_id, version=number, stage=stage, created_at=1.0, profile="{}", drift_config="{}")
        return row | dict(task=task, baseline_error_mean=baseline)

    def drift(model_id, number, episodes, checks=None):
        state = DataDriftState.model_construct(
            episodes=episodes, checks=checks or {}, evidence={}, confidence_column=False
        )
        blob, state_format = CODEC.dump(state)
        return dict(model_id=model_id, version=number, next_window=3, episodes=blob, state_format=state_format)

    stream = ErrorStream(DriftConfig(), (0.3, 0.1), None)
    for i, error in enumerate(np.random.default_rng(0).normal(0.4, 0.1, 1100)):
        stream.update(abs(float(error)), float(i), float(i))
    state = stream.state()
    concept = ConceptState(detectors=state.detectors, production=state.production, episode=state.episode)
    features = ["__prediction__", *(f"f{i:02d}" for i in range(60))]
    with engine.begin() as conn:
        conn.execute(
            insert(tables.ModelVersion.__table__),
            [
                version("housing", "1", "archived", "regression", 0.3),
                version("housing", "2", "champion", "regression", 0.3),
                version("churn", "1", "champion", "classification", 0.1),
            ],
        )
        conn.execute(
            insert(tables.ModelStats.__table__),
            [
                dict(model_id="housing", predictions=700, labels=650, duplicates=0, last_event_ts=1.8e9),
                dict(model_id="typo", predictions=5, labels=0, duplicates=0, last_event_ts=1.8e9),
            ],
        )
        significant, moderate = Episode("significant", 0, "significant"), Episode("moderate", 0, "moderate")
        conn.execute(
            insert(tables.DriftState.__table__),
            [
                drift("housing", "1", {"f00": significant}),
                drift(
                    "housing",
                    "2",
                    {"f00": moderate, "f01": moderate, "__prediction__": significant, "f02": Episode("stable", 3, "")},
                    {"__multivariate__": CheckEpisode("significant", 0, "significant", 7.5)},
                ),
            ],
        )
        conn.execute(
            insert(tables.WindowResult.__table__),
            [
                dict(model_id="housing", version="2", window_index=window, feature=feature, start_ts=0.0)
                | dict(end_ts=1.0, n=500, psi=0.01 * window if feature != "f00" else 0.3, chi2_statistic=0.0)
                | dict(chi2_pvalue=1.0, missing_share=0.0, severity="stable")
                for window in (1, 2)
                for feature in features
            ],
        )
        # The champion's newest 500 pairs have error 1.0, its older ones 0; version 1's pairs, newer still, 9.
        conn.execute(
            insert(tables.LabelledPair.__table__),
            [
                dict(model_id="housing", seq=seq, event_id=str(seq), version=number, prediction_ts=0.0, label_ts=0.0)
                | dict(features="{}", prediction="0", label="0", error=error)
                for seq, number, error in [(s, "2", 0.0) for s in range(100)]
                + [(s, "2", 1.0) for s in range(100, 600)]
                + [(s, "1", 9.0) for s in range(600, 650)]
            ],
        )
        conn.execute(
            insert(tables.ConceptState.__table__),
            [
                dict(model_id="housing", version="2", labels=1100, error_sum=440.0, in_episode=True)
                | dict(detectors=concept.model_dump_json(), state_format=CURRENT_FORMAT),
                dict(model_id="housing", version="1", labels=10, error_sum=1.0, in_episode=True)
                | dict(detectors="{}", state_format=CURRENT_FORMAT),
            ],
        )
        conn.execute(
            insert(tables.TrainingRun.__table__),
            [
                dict(run_id=f"r{i}", model_id="housing", status=status, trigger="{}", accepted_at=0.0)
                for i, status in enumerate(["promoted", "rejected", "rejected", "failed", "running"])
            ],
        )


def test_per_model_metrics_describe_each_registered_models_champion_with_bounded_labels(engine):
    from prometheus_client import CollectorRegistry, generate_latest

    from undertow.worker.runtime.metrics import DatabaseCollector

    _per_model_state(engine)
    registries = {}
    for service in ("monitor", "trainer"):
        registries[service] = CollectorRegistry()
        registries[service].register(DatabaseCollector(engine, service, "g", lambda partitions: {}, []))
    monitor, trainer = registries["monitor"], registries["trainer"]

    def value(registry, name, **labels):
        return registry.get_sample_value(name, labels)

    assert value(monitor, "undertow_model_events_total", model_id="housing", kind="prediction") == 700
    assert value(monitor, "undertow_model_events_total", model_id="churn", kind="label") == 0
    assert value(monitor, "undertow_model_events_total", model_id="typo", kind="prediction") is None
    assert value(monitor, "undertow_model_last_event_timestamp_seconds", model_id="housing") == 1.8e9
    text = generate_latest(monitor).decode()
    # PSI: the champion's newest window (2), the prediction and the first 50 input features by name.
    psi = [line for line in text.splitlines() if line.startswith("undertow_feature_psi{")]
    assert len(psi) == 51 and all('model_id="housing"' in line for line in psi)
    assert value(monitor, "undertow_feature_psi", model_id="housing", feature="__prediction__") == 0.02
    assert value(monitor, "undertow_feature_psi", model_id="housing", feature="f00") == 0.3
    assert value(monitor, "undertow_feature_psi", model_id="housing", feature="f49") == 0.02
    assert value(monitor, "undertow_feature_psi", model_id="housing", feature="f50") is None
    # The error: the champion's newest 500 pairs, against its production baseline (about 0.4, not the 0.3 of
    # validation); a classifier with no labels yet has its validation baseline and no error.
    assert value(monitor, "undertow_model_error", model_id="housing", metric="absolute_error") == 1.0
    baseline = value(monitor, "undertow_model_error_baseline", model_id="housing", metric="absolute_error")
    assert 0.38 < baseline < 0.42
    assert value(monitor, "undertow_model_error_baseline", model_id="churn", metric="misclassification") == 0.1
    assert value(monitor, "undertow_model_error", model_id="churn", metric="misclassification") is None
    # Episodes of the champion only (version 1's open ones are not counted), every kind and level present.
    episodes = {
        (kind, level): value(monitor, "undertow_model_open_episodes", model_id="housing", kind=kind, level=level)
        for kind in ("feature", "prediction", "dataset", "multivariate", "performance")
        for level in ("moderate", "significant")
    }
    assert episodes.pop(("feature", "moderate")) == 2 and episodes.pop(("prediction", "significant")) == 1
    assert episodes.pop(("multivariate", "significant")) == 1 and set(episodes.values()) == {0}
    assert value(monitor, "undertow_model_open_episodes", model_id="housing", kind="concept", level="significant") == 1
    assert value(monitor, "undertow_model_open_episodes", model_id="churn", kind="concept", level="significant") == 0
    assert value(monitor, "undertow_model_alerts_total", model_id="churn", type="undertow.drift.concept") == 0
    # Finished runs by outcome (the running one is not a decision yet); the monitor does not export them.
    runs = {
        outcome: value(trainer, "undertow_model_training_runs_total", model_id="housing", outcome=outcome)
        for outcome in ("promoted", "rejected", "gave_up", "failed")
    }
    assert runs == {"promoted": 1, "rejected": 2, "gave_up": 0, "failed": 1}
    assert value(trainer, "undertow_model_training_runs_total", model_id="churn", outcome="promoted") == 0
    assert value(monitor, "undertow_model_training_runs_total", model_id="housing", outcome="promoted") is None
    assert "undertow_training_run_duration_seconds_count" in generate_latest(trainer).decode()
    # The exposition format's linter, where Debian's prometheus is installed (.ci/run installs it; the chain
    # test in tests/ops runs it on the live services).
    promtool = shutil.which("promtool")
    for registry in registries.values() if promtool else ():
        done = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry), capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_scrape_on_sqlite_reads_without_waiting_for_a_writer(db_url, engine):
    """Scrapes read a snapshot: they neither take SQLite's write lock nor wait for the process holding it
    (the services' engines begin every transaction with BEGIN IMMEDIATE; a scrape through them queued for the
    lock behind the writers, and with several services scraped every second, held the writers up in turn)."""
    from prometheus_client import CollectorRegistry

    from tests.conftest import requires_sqlite
    from undertow.worker.runtime.metrics import DatabaseCollector

    requires_sqlite(db_url)
    _per_model_state(engine)
    collector = DatabaseCollector(engine, "monitor", "g", lambda partitions: {}, [])
    registry = CollectorRegistry()
    registry.register(collector)
    with engine.connect() as writer:
        writer.exec_driver_sql("UPDATE model_stats SET predictions = 701 WHERE model_id = 'housing'")  # locked
        started = time.monotonic()
        during = registry.get_sample_value("undertow_model_events_total", {"model_id": "housing", "kind": "prediction"})
        assert time.monotonic() - started < 5 and during == 700  # the committed snapshot, at once
        writer.commit()
    after = registry.get_sample_value("undertow_model_events_total", {"model_id": "housing", "kind": "prediction"})
    assert after == 701
    collector.close()
