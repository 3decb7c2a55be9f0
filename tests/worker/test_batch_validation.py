"""The monitor parser's batch path (EventParser.parse_batch, which build_batch takes) against its per-record
path: the same events in the same order, the same records dead-lettered with the same messages."""

from __future__ import annotations

import json

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from tests.worker.test_hostile_input import CORPUS, _label, _prediction, _raw
from undertow.worker.monitor.service import EventParser
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.events import DEFAULT_MAX_EVENT_BYTES
from undertow.worker.runtime.topics import Topics

TOPICS = Topics("t.")
NOW = 1_800_000_000.0  # after every good event's ts, long before 2999


def _record(topic: str, offset: int, value: bytes | None, key: bytes | None = b"housing", partition: int = 0):
    return ConsumerRecord(topic, partition, -1, offset, 0, 0, key, value, [], None, -1, -1, -1)


def _parser(clock=lambda: NOW) -> EventParser:
    return EventParser(TOPICS, DEFAULT_MAX_EVENT_BYTES, 300.0, clock)


def _per_record(records, parser):
    """What build_batch did before parse_batch: the parser called on each record."""

    class OneByOne:
        def __call__(self, record):
            return parser(record)

    return build_batch(records, OneByOne())


def _good(i: int) -> list[tuple[str, bytes]]:
    prediction = _prediction(event_id=f"e{i}", features={"x0": i / 10, "region": "north"}, prediction=float(i))
    return [("predictions", _raw(prediction)), ("labels", _raw(_label(event_id=f"e{i}", label=float(i))))]


def _mixed() -> list:
    """Good predictions and labels around every kind of refusal: the hostile corpus, empty and oversized
    values, a wrong key, an event-id key (a spread model's), another topic's records."""
    topics = {"predictions": TOPICS.predictions, "labels": TOPICS.labels}
    values = [pair for i in range(3) for pair in _good(i)]
    values += [(topic, value) for topic, value, _, _ in CORPUS]
    values += [("predictions", b""), ("labels", None), ("predictions", b"{" + b" " * DEFAULT_MAX_EVENT_BYTES + b"}")]
    records = [_record(topics[topic], n, value) for n, (topic, value) in enumerate(values)]
    records += [
        _record(TOPICS.predictions, 100, _raw(_prediction(event_id="wrong-key")), key=b"other"),
        _record(TOPICS.labels, 101, _raw(_label(event_id="by-id", model_id="spread")), key=b"by-id"),
        _record(TOPICS.predictions, 102, _raw(_prediction(event_id="no-key")), key=None),
        _record(TOPICS.models, 0, b'{"not": "an output event"}', key=None),
        _record(TOPICS.merge, 0, b"{}", key=None),
        _record(TOPICS.labels, 103, _raw(_label(event_id="late")), partition=1),
    ]
    return records


def _summary(batch):
    return (
        [(record.topic, record.offset, event) for record, event in batch.events],
        [dict(letter.headers) for letter in batch.dead_letters],
        list(batch.next_offsets.items()),
    )


def test_a_bad_record_in_the_middle_is_dead_lettered_alone_with_its_own_message_and_the_others_keep_order():
    records = [_record(TOPICS.predictions if n % 2 == 0 else TOPICS.labels, n, v) for n, (_, v) in enumerate(_good(0))]
    bad = _prediction(event_id="bad", features={"x0": float("nan")})
    records.insert(1, _record(TOPICS.predictions, 7, json.dumps(bad).encode()))
    records += [_record(TOPICS.predictions, 8, value) for _, value in _good(1)[:1]]

    batch = build_batch(records, _parser())

    assert [record.offset for record, _ in batch.events] == [0, 1, 8]
    assert [event.event_id for _, event in batch.events] == ["e0", "e0", "e1"]
    [letter] = batch.dead_letters
    headers = dict(letter.headers)
    assert headers["undertow.source.offset"] == b"7"
    assert headers["undertow.error.message"] == b"PredictionEvent: features.x0: must be a finite number or a string"
    assert _summary(batch) == _summary(_per_record(records, _parser()))


def test_the_batch_path_accepts_and_refuses_exactly_as_the_per_record_path():
    records = _mixed()
    batched, one_by_one = _parser(), _parser()

    batch = build_batch(records, batched)
    expected = _per_record(records, one_by_one)

    assert _summary(batch) == _summary(expected)
    assert len(batch.events) == 8 and len(batch.dead_letters) == len(records) - 8
    assert batched.keyed_by_event_id.models == one_by_one.keyed_by_event_id.models == {"spread"}


def test_the_clock_is_read_once_per_batch_and_an_event_ahead_of_it_is_refused():
    reads = []

    def clock() -> float:
        reads.append(NOW)
        return NOW

    ahead = _raw(_prediction(event_id="ahead", ts="2027-01-15T08:05:01Z"))  # NOW + 301 s
    records = [_record(TOPICS.predictions, n, value) for n, (_, value) in enumerate(_good(0)[:1] * 3)]
    records.insert(2, _record(TOPICS.predictions, 9, ahead))

    batch = build_batch(records, _parser(clock))

    assert len(reads) == 1
    assert [record.offset for record, _ in batch.events] == [0, 1, 2]
    [letter] = batch.dead_letters
    assert b"more than 300 s ahead of the monitor's clock" in dict(letter.headers)["undertow.error.message"]


@pytest.mark.parametrize(
    "score, message",
    [
        ("1.5", "scores.a: Input should be less than or equal to 1"),
        ("2", "scores.a: Input should be less than or equal to 1"),
        ("-0.5", "scores.a: Input should be greater than or equal to 0"),
        ("NaN", "scores.a: must be a finite number"),
        ('"0.5"', "scores.a: must be a number"),
        ("true", "scores.a: must be a number"),
        ("9" * 400, "scores.a: integer too large to be a finite float"),
    ],
)
def test_class_scores_are_refused_with_the_messages_they_had_when_python_checked_their_bounds(score, message):
    scores = b'"prediction": 1.0, "scores": {"a": %s}' % score.encode()
    value = _raw(_prediction()).replace(b'"prediction": 1.0', scores)
    batch = build_batch([_record(TOPICS.predictions, 0, value)], _parser())
    assert dict(batch.dead_letters[0].headers)["undertow.error.message"] == f"PredictionEvent: {message}".encode()


def test_class_scores_in_bounds_keep_their_type():
    value = _raw(_prediction(scores={"a": 0.25, "b": 1, "c": 0}))
    [(_, event)] = build_batch([_record(TOPICS.predictions, 0, value)], _parser()).events
    assert [(k, type(v)) for k, v in event.scores.items()] == [("a", float), ("b", int), ("c", int)]
