"""/metrics of the monitor and the trainer, read after a short stream and checked against what was sent."""

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
