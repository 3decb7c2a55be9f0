"""Hostile input: records that passed validation once and then crash-looped, stalled or poisoned state.

CORPUS also says how each record would reach the serving endpoint; test_server_edges sends it there and
requires the server to refuse exactly what the monitor dead-letters.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from undertow.worker.dev.sample import SampleStream
from undertow.worker.monitor.service import Monitor
from undertow.worker.runtime.events import LabelEvent, PredictionEvent

pytestmark = pytest.mark.postgres

GOOD = 300


def _prediction(**changes) -> dict:
    event = {
        "event_id": "hostile",
        "model_id": "housing",
        "ts": "2026-11-01T00:10:00Z",
        "features": {"x0": 0.1, "x1": 0.2, "x2": 0.3, "x3": 0.4, "region": "north"},
        "prediction": 1.0,
    }
    event.update(changes)
    return event


def _label(**changes) -> dict:
    event = {"event_id": "hostile-label", "model_id": "housing", "ts": "2026-11-01T01:10:00Z", "label": 1.0}
    event.update(changes)
    return event


def _raw(event: dict) -> bytes:
    return json.dumps(event).encode()


BIG = "9" * 401
NESTED = "[" * 5000 + "]" * 5000

# Why a record cannot come from the serving endpoint: it fills these fields itself.
SERVER_DATES = "the server dates its events itself (ts is its clock)"
MODEL_OUTPUT = "the prediction is the model's output (non-finite ones: test_server_edges)"
SERVER_IDS = "the server generates prediction event ids (uuid4)"
SERVER_VERSION = "the server names the version it serves (from the registry)"
SERVER_MODEL = "the server's model id is its own, checked at start-up"

# (topic, value, what the dead letter's message says, the same hostile value at the serving endpoint):
# ("predict", {feature: raw JSON}) puts the values in an otherwise good row of the model's schema,
# ("labels", {field: raw JSON}) in one label; a string says why the server cannot produce the record.
# test_server_edges sends each through both edges and requires they agree.
CORPUS = [
    ("predictions", _raw(_prediction(ts="2999-01-01T00:00:00Z")), "ahead of the monitor's clock", SERVER_DATES),
    ("labels", _raw(_label(ts="2999-01-01T00:00:00Z")), "ahead of the monitor's clock", SERVER_DATES),
    ("predictions", _raw(_prediction(ts="0001-01-01T00:00:00+01:00")), "outside the representable range", SERVER_DATES),
    ("predictions", _raw(_prediction(ts="9999-12-31T23:59:59-01:00")), "outside the representable range", SERVER_DATES),
    (
        "predictions",
        _raw(_prediction(prediction=0)).replace(b'"prediction": 0', b'"prediction": ' + BIG.encode()),
        "too large",
        MODEL_OUTPUT,
    ),
    (
        "predictions",
        _raw(_prediction(features={"x0": 0})).replace(b'"x0": 0', b'"x0": ' + BIG.encode()),
        "too large",
        ("predict", {"x0": BIG}),
    ),
    (
        "labels",
        _raw(_label(label=0)).replace(b'"label": 0', b'"label": ' + BIG.encode()),
        "too large",
        ("labels", {"label": BIG}),
    ),
    (
        "predictions",
        _raw(_prediction(prediction=0)).replace(b'"prediction": 0', b'"prediction": 1e400'),
        "finite",
        MODEL_OUTPUT,
    ),
    ("predictions", _raw(_prediction(event_id="nul\u0000id")), "control characters", SERVER_IDS),
    (
        "labels",
        _raw(_label(event_id="nul\u0000id")),
        "control characters",
        ("labels", {"event_id": json.dumps("nul\u0000id")}),
    ),
    (
        "predictions",
        _raw(_prediction(features={"x0": 1.0, "region": "no\u0000rth"})),
        "control characters",
        ("predict", {"region": json.dumps("no\u0000rth")}),
    ),
    (
        "predictions",
        _raw(_prediction(features={"x\u00000": 1.0})),
        "control characters",
        ("predict", {"x\u00000": "1.0"}),
    ),
    (
        "labels",
        _raw(_label(label="cl\u0000ass")),
        "control characters",
        ("labels", {"label": json.dumps("cl\u0000ass")}),
    ),
    ("predictions", _raw(_prediction(model_version="1\u001b[2J")), "must match", SERVER_VERSION),
    ("predictions", _raw(_prediction(model_id="m" * 300)), "must match", SERVER_MODEL),
    ("predictions", _raw(_prediction(model_id="../../evil")), "must match", SERVER_MODEL),
    ("predictions", _raw(_prediction(model_id="ho\u0000using")), "must match", SERVER_MODEL),
    (
        "predictions",
        _raw(_prediction(features={"x0": 1})).replace(b'"x0": 1', b'"x0": ' + NESTED.encode()),
        "recursion limit",
        ("predict", {"x0": NESTED}),
    ),
    (
        "predictions",
        _raw(_prediction(features={"x0": 1})).replace(b'"x0": 1', b'"x0": {"a": {"b": [1, 2]}}'),
        "features.x0: must be a number or a string",
        ("predict", {"x0": '{"a": {"b": [1, 2]}}'}),
    ),
    (
        "predictions",
        _raw(_prediction(features={"region": "x" * 300_000})),
        "exceeds max_event_bytes",
        ("predict", {"region": json.dumps("x" * 300_000)}),
    ),
    # A lone surrogate is invalid JSON for the monitor's parser; Python's json writes it escaped, so a server
    # that took one in would emit it: the server's parser must refuse it too.
    (
        "predictions",
        b'{"event_id": "s", "model_id": "housing", "ts": "2026-11-01T00:00:00Z", '
        b'"features": {"region": "\\ud800"}, "prediction": 1}',
        "Invalid JSON",
        ("predict", {"region": '"\\ud800"'}),
    ),
]


def test_hostile_corpus_is_dead_lettered_and_cannot_poison_state(env):
    """Issue 7, cases 3-5: a far-future event, values that overflow, NUL characters, bad ids."""
    stream = SampleStream(seed=5)
    env.register_reference(stream, window_seconds=60)
    pairs = list(stream.events(GOOD))
    items = [("prediction", p) for p, _ in pairs]
    env.send_sequence(items)
    for topic, value, _, _ in CORPUS:
        event_key = b"housing"
        try:
            event_key = json.loads(value)["model_id"].encode("utf-8", "surrogatepass")
        except (ValueError, KeyError, RecursionError):
            pass  # not JSON to the standard library either: keyed as the good ones
        env.send(getattr(env.topics, topic), value, key=event_key)
    env.flush()
    env.send_sequence([("label", label) for _, label in pairs])  # after the far-future prediction

    env.drain()

    assert env.counts() == (GOOD, GOOD, 0)
    joined, expired_p, expired_l, watermark = (
        env.scalar(f"SELECT {c} FROM join_stats WHERE model_id = 'housing'")
        for c in ("joined", "expired_predictions", "expired_labels", "watermark_ts")
    )
    assert (joined, expired_p, expired_l) == (GOOD, 0, 0)  # the watermark was not moved by year 2999
    assert watermark < time.time() + 3600
    assert env.scalar("SELECT late_events FROM drift_state WHERE model_id = 'housing'") == 0
    assert env.scalar("SELECT COUNT(*) FROM window_results WHERE model_id = 'housing' AND feature = 'x0'") == 4
    by_topic = {
        "predictions": [c for c in CORPUS if c[0] == "predictions"],
        "labels": [c for c in CORPUS if c[0] == "labels"],
    }
    for topic, cases in by_topic.items():
        source = getattr(env.topics, topic)
        letters = env.read_all(env.topics.dead_letter(source), len(cases))
        assert len(letters) == len(cases)
        messages = [dict(r.headers)["undertow.error.message"].decode() for r in letters]
        for _, _, fragment, _ in cases:
            assert any(fragment in m for m in messages), (fragment, messages)
        assert env.scalar("SELECT count FROM dead_letter_stats WHERE source_topic = :t", t=source) == len(cases)


class _FailOn:
    """A stage that fails on the content of one event: a real database error, or a bug."""

    def reset(self) -> None:
        pass

    def __init__(self, integrity_error_on: str, value_error_on: str):
        self.integrity_error_on = integrity_error_on
        self.value_error_on = value_error_on

    def apply(self, session, batch) -> None:
        for _, event in batch.events:
            if isinstance(event, PredictionEvent) and event.event_id == self.integrity_error_on:
                insert = text("INSERT INTO alembic_version (version_num) SELECT version_num FROM alembic_version")
                session.execute(insert)  # the revision is there already: a primary-key violation
            if isinstance(event, LabelEvent) and event.event_id == self.value_error_on:
                raise ValueError("this stage cannot handle the event")


def test_a_record_that_fails_permanently_is_isolated_and_dead_lettered(env):
    """Issue 7, case 5: a non-transient database error is not retried forever; the rest commits."""
    pairs = list(SampleStream(seed=9).events(1000))
    env.send_events(pairs)
    bad_integrity, bad_value = pairs[123][0]["event_id"], pairs[777][1]["event_id"]
    monitor = Monitor(env.settings.model_copy(update={"batch_max_records": 500}))
    monitor.service.stages.append(_FailOn(bad_integrity, bad_value))

    assert monitor.run(until_idle=2.0) == 0

    assert env.counts() == (999, 999, 0)
    letters = env.read_all(env.topics.dead_letter(env.topics.predictions), 1)
    letters += env.read_all(env.topics.dead_letter(env.topics.labels), 1)
    got = {
        (
            json.loads(r.value)["event_id"],
            r.topic,
            dict(r.headers)["undertow.error.class"],
            dict(r.headers)["undertow.error.stage"],
        )
        for r in letters
    }
    assert got == {
        (bad_integrity, env.topics.dead_letter(env.topics.predictions), b"IntegrityError", b"process"),
        (bad_value, env.topics.dead_letter(env.topics.labels), b"ValueError", b"process"),
    }
