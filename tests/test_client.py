"""undertow.client against the embedded broker: records the monitor accepts, refusals that send nothing,
and the monitor counting and joining what the client logged (issue 30)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from undertow import errors
from undertow.client import Client, InvalidEvent
from undertow.worker.dev.sample import START, SampleStream
from undertow.worker.runtime.events import DEFAULT_MAX_EVENT_BYTES, parse_label, parse_prediction


def _client(env, **options) -> Client:
    return Client(bootstrap_servers=env.bootstrap, topic_prefix=env.prefix, **options)


def _end_offsets(env, topic: str) -> int:
    from undertow.worker.runtime.transport import log_end_offsets

    return sum(log_end_offsets(env.settings, [], topics=[topic]).values())


def test_records_land_keyed_by_model_as_compact_json_the_monitor_accepts(env):
    with _client(env) as client:
        event_id = client.log_prediction(
            "housing",
            {"x": np.float64(1.5), "n": np.int64(3), "c": "red", "z": None, "m": np.float64("nan")},
            np.float32(2.5),
            ts="2026-11-27T15:06:28.5+01:00",
            model_version=3,
        )
        client.log_label("housing", event_id, 2.0, ts=datetime(2026, 11, 28, 9, tzinfo=UTC))
        assert client.flush() == 0
        assert (client.delivered, client.undelivered, client.pending) == (2, 0, 0)
    [prediction] = env.read_all(env.topics.predictions, 1)
    [label] = env.read_all(env.topics.labels, 1)
    assert prediction.key == label.key == b"housing"
    assert len(event_id) == 32 and int(event_id, 16) >= 0  # uuid4 hex
    assert (
        prediction.value
        == (
            '{"event_id":"%s","model_id":"housing","ts":"2026-11-27T14:06:28.500000Z","model_version":"3",'  # noqa: UP031 - JSON: braces
            '"features":{"x":1.5,"n":3,"c":"red","z":null,"m":null},"prediction":2.5}' % event_id
        ).encode()
    )
    event = parse_prediction(prediction.value, DEFAULT_MAX_EVENT_BYTES)
    assert (event.features["n"], event.features["z"], event.model_version) == (3, None, "3")
    assert (
        label.value
        == ('{"event_id":"%s","model_id":"housing","ts":"2026-11-28T09:00:00Z","label":2.0}' % event_id).encode()  # noqa: UP031 - JSON: braces
    )
    assert parse_label(label.value, DEFAULT_MAX_EVENT_BYTES).event_id == event_id


def test_settings_as_the_services_take_them(env, monkeypatch):
    with Client(settings=env.settings) as client:  # a Settings object: its broker and topic prefix
        assert client.topics.predictions == env.topics.predictions
    monkeypatch.setenv("UNDERTOW_TOPIC_PREFIX", env.prefix)  # unset arguments come from the environment
    with Client(bootstrap_servers=[env.bootstrap], security_protocol="PLAINTEXT") as client:
        assert client.topics.labels == env.topics.labels
        assert client.settings.kafka_options == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(TypeError, match="sasl_plain_pasword"):
        Client(bootstrap_servers=env.bootstrap, sasl_plain_pasword="secret")
    with pytest.raises(errors.ConfigError, match="SECURITY_PROTOCOL"):
        Client(bootstrap_servers=env.bootstrap, security_protocol="TLS")


def test_a_dataframe_of_1000_rows_with_numpy_dtypes_and_missing_values(env):
    n = 1000
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "f64": rng.normal(size=n),
            "f32": rng.normal(size=n).astype(np.float32),
            "i64": rng.integers(0, 100, size=n),
            "i8": rng.integers(0, 5, size=n).astype(np.int8),
            "region": pd.Categorical(rng.choice(["north", "south"], size=n)),
            "nullable": pd.array([1, None] * (n // 2), dtype="Int64"),
        }
    )
    frame.loc[7, "f64"] = np.nan
    frame.loc[8, "region"] = np.nan
    predictions = rng.normal(size=n)
    ts = pd.date_range("2026-11-01", periods=n, freq="s", tz="UTC")
    with _client(env) as client:
        ids = client.log_predictions("housing", frame, predictions, ts=ts)
        assert client.flush() == 0
        assert client.delivered == n
    assert len(set(ids)) == n
    records = env.read_all(env.topics.predictions, n)
    assert len(records) == n and {r.key for r in records} == {b"housing"}
    events = {e.event_id: e for e in (parse_prediction(r.value, DEFAULT_MAX_EVENT_BYTES) for r in records)}
    assert set(events) == set(ids)
    seventh, eighth, first = events[ids[7]], events[ids[8]], events[ids[1]]
    assert seventh.features["f64"] is None and eighth.features["region"] is None and first.features["nullable"] is None
    assert type(seventh.features["i64"]) is int and type(seventh.features["f32"]) is float
    assert first.features["f64"] == frame.loc[1, "f64"] and first.prediction == predictions[1]
    assert first.ts == datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda row, p: (row, float("nan")), "row 3: prediction: must be a finite number"),
        (lambda row, p: ({**row, "x": [1, 2]}, p), "row 3: features.x: must be a number, a string or null"),
        (lambda row, p: ({**row, "c": "r" * 300_000}, p), "row 3: features.c: the event would be"),
        (lambda row, p: ({**row, "c": "a\nb"}, p), "row 3: features.c: must not contain control characters"),
        (lambda row, p: ({**row, 5: 1.0}, p), "row 3: features: feature names must be strings"),
    ],
)
def test_a_bad_row_raises_naming_the_field_and_sends_nothing(env, change, field):
    rows = [{"x": float(i), "c": "red"} for i in range(10)]
    predictions = [float(i) for i in range(10)]
    rows[3], predictions[3] = change(rows[3], predictions[3])
    with _client(env) as client:
        with pytest.raises(InvalidEvent, match="log_predictions refused 1 of 10 rows, nothing was sent") as caught:
            client.log_predictions("housing", rows, predictions)
        client.log_prediction("housing", {"x": 1.0}, 1.0)  # a marker: the only record on the topic
        assert client.flush() == 0
    assert field in str(caught.value)
    assert caught.value.problems[0]["loc"][0] == 3
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, errors.InvalidEvent)
    assert _end_offsets(env, env.topics.predictions) == 1


def test_single_events_refused_name_the_field(env):
    with _client(env) as client:
        with pytest.raises(
            InvalidEvent,
            match=r"^log_prediction refused the event, nothing was sent: ts: "
            r"2026-11-01T00:00:00 is a naive datetime",
        ):
            client.log_prediction("housing", {"x": 1.0}, 1.0, ts=datetime(2026, 11, 1))
        with pytest.raises(InvalidEvent, match="ts: .* is more than 3600 s in the future"):
            client.log_prediction("housing", {"x": 1.0}, 1.0, ts=datetime.now(UTC) + timedelta(hours=2))
        with pytest.raises(InvalidEvent, match="model_id: must match"):
            client.log_prediction("bad id", {"x": 1.0}, 1.0)
        with pytest.raises(InvalidEvent, match="scores.1: Input should be less than or equal to 1"):
            client.log_prediction("housing", {"x": 1.0}, 1, scores={0: -0.5, 1: 1.5})
        with pytest.raises(InvalidEvent, match=r"^log_label refused the event, nothing was sent: label: "):
            client.log_label("housing", "e1", float("inf"))
        with pytest.raises(InvalidEvent, match="features.x: is not valid Unicode"):
            client.log_prediction("housing", {"x": "\ud800"}, 1.0)
        assert client.flush() == 0
        assert client.delivered == 0
    assert _end_offsets(env, env.topics.predictions) == _end_offsets(env, env.topics.labels) == 0


def test_scores_with_integer_class_keys_become_string_keys(env):
    classes = np.array([0, 1])
    with _client(env) as client:
        client.log_prediction("churn", {"x": 1.0}, np.int64(1), scores={0: 0.3, 1: 0.7})
        client.log_prediction("churn", {"x": 1.0}, 1, scores=np.array([0.25, 0.75]), classes=classes)
        frame = pd.DataFrame({"x": [1.0, 2.0]})
        # predict_proba's rows may sum a rounding step past 1: 1.0000000000000002 is sent as 1.0.
        client.log_predictions(
            "churn",
            frame,
            np.array([0, 1]),
            scores=np.array([[0.9, 0.1], [-1e-17, 1.0000000000000002]]),
            classes=classes,
        )
        client.log_predictions(
            "churn", frame, np.array([1.0, 0.0]), scores=pd.DataFrame({1.0: [0.6, 0.2], 0.0: [0.4, 0.8]})
        )
        assert client.flush() == 0
    events = [parse_prediction(r.value, DEFAULT_MAX_EVENT_BYTES) for r in env.read_all(env.topics.predictions, 6)]
    assert sorted(map(str, (e.scores for e in events))) == sorted(
        map(
            str,
            [
                {"0": 0.3, "1": 0.7},
                {"0": 0.25, "1": 0.75},
                {"0": 0.9, "1": 0.1},
                {"0": 0.0, "1": 1.0},
                {"1": 0.6, "0": 0.4},
                {"1": 0.2, "0": 0.8},
            ],
        )
    )
    assert {type(e.prediction) for e in events} == {int, float}


def test_boolean_classes_are_sent_as_their_text_as_the_server_answers_them(env):
    classes = np.array([False, True])
    with _client(env) as client:
        ids = client.log_predictions(
            "churn",
            pd.DataFrame({"x": [1.0, 2.0]}),
            np.array([True, False]),
            scores=np.array([[0.2, 0.8], [0.9, 0.1]]),
            classes=classes,
        )
        client.log_label("churn", ids[0], np.bool_(True))
        client.log_labels("churn", ids[1:], pd.Series([False]))
        assert client.flush() == 0
    predictions = [parse_prediction(r.value, DEFAULT_MAX_EVENT_BYTES) for r in env.read_all(env.topics.predictions, 2)]
    labels = [json.loads(r.value)["label"] for r in env.read_all(env.topics.labels, 2)]
    assert sorted(e.prediction for e in predictions) == ["False", "True"]
    assert all(set(e.scores) == {"False", "True"} for e in predictions)
    assert sorted(labels) == ["False", "True"]


def test_with_the_broker_paused_the_bound_holds_and_what_is_lost_is_counted_once_a_second(env, caplog):
    import os
    import signal

    from undertow.worker.dev.broker import EmbeddedBroker
    from undertow.worker.runtime.settings import Settings
    from undertow.worker.runtime.topics import Topics, ensure_topics
    from undertow.worker.runtime.transport import make_admin

    with EmbeddedBroker() as own:  # paused below: the shared broker stays out of it
        admin = make_admin(Settings(kafka_bootstrap_servers=own.bootstrap_servers))
        ensure_topics(admin, Topics(env.prefix), 1)
        admin.close()
        client = Client(
            bootstrap_servers=own.bootstrap_servers,
            topic_prefix=env.prefix,
            max_pending=10,
            max_block=0.3,
            delivery_timeout=2.0,
        )
        try:
            client.log_predictions("housing", [{"x": 1.0}] * 5, [1.0] * 5)
            assert client.flush() == 0 and client.delivered == 5
            os.kill(own.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                client.log_predictions("housing", [{"x": 1.0}] * 30, [1.0] * 30)
                blocked = time.monotonic() - started
                # 10 wait for the broker (the bound), the 11th waited max_block: it and the 19 after it are lost.
                assert client.pending == 10 and client.undelivered == 20
                assert client.flush() == 30  # the 10 failed at the delivery timeout
            finally:
                os.kill(own.pid, signal.SIGCONT)
            client.log_predictions("housing", [{"x": 1.0}] * 5, [1.0] * 5)
            assert client.flush() == 30 and client.delivered == 10
        finally:
            client.close()
    assert 0.3 <= blocked < 2
    lines = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]  # 11 failures in about 2 s
    assert any("could not deliver 30 of 40 records" in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
def test_end_to_end_the_monitor_counts_and_joins_what_the_client_logged(env):
    stream = SampleStream(seed=5)
    env.register_reference(stream)
    n = 2000
    x, regions, prediction, label = stream.rows(n)
    frame = pd.DataFrame(x, columns=stream.names).assign(region=regions)
    times = [START + timedelta(seconds=i) for i in range(n)]
    started = time.monotonic()
    with _client(env) as client:
        ids = client.log_predictions("housing", frame, prediction, ts=times, model_version=None)
        client.log_labels("housing", ids, label, ts=[t + timedelta(hours=1) for t in times])
        assert client.flush() == 0
    took = time.monotonic() - started
    env.drain(env={"UNDERTOW_WAIT_FOR_REGISTRATION": "false"})
    assert env.counts() == (n, n, 0)
    assert env.scalar("SELECT COUNT(*) FROM labelled_pairs WHERE model_id = 'housing'") == n
    pair = json.loads(env.scalar("SELECT features FROM labelled_pairs WHERE event_id = :e", e=ids[10]))
    assert pair["region"] == regions[10] and pair["x0"] == pytest.approx(x[10, 0])
    print(f"client: {2 * n} events validated and delivered in {took:.2f} s")


def test_monitored_model_logs_its_batch_predictions(env):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    model = LogisticRegression().fit(frame, (frame["a"] > 0).astype(int))
    with _client(env) as client:
        predictions, ids = client.monitored(model, "churn", model_version="2").predict(frame.to_numpy())
        assert client.flush() == 0
    events = {
        e.event_id: e
        for e in (parse_prediction(r.value, DEFAULT_MAX_EVENT_BYTES) for r in env.read_all(env.topics.predictions, 200))
    }
    first = events[ids[0]]
    assert first.prediction == predictions[0] and set(first.scores) == {"0", "1"}
    assert first.model_version == "2" and set(first.features) == {"a", "b", "c"}


def test_no_broker_is_one_clear_error_within_seconds_not_half_a_minute():
    """A closed port: BrokerUnavailable naming the address, well before the client's own 30 s of retries."""
    import socket

    from undertow.worker.runtime.transport import BrokerUnavailable

    with socket.socket() as placeholder:  # a port nobody listens on: bound, never listening
        placeholder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{placeholder.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=f"no Kafka broker reachable at {address}"):
            Client(bootstrap_servers=address)
        assert time.monotonic() - started < 10
