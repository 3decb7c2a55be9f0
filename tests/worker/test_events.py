import json

import pytest

from undertow.errors import InvalidEvent
from undertow.worker.runtime.events import parse_label, parse_prediction

GOOD = {
    "event_id": "e1",
    "model_id": "m",
    "model_version": "3",
    "ts": "2026-11-27T14:06:28.123Z",
    "features": {"a": 1, "b": 2.5, "c": "red", "d": None},
    "prediction": 2.31,
}


def encode(**changes):
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_valid_prediction_and_label():
    event = parse_prediction(encode(), 4096)
    assert event.features == {"a": 1, "b": 2.5, "c": "red", "d": None}
    assert event.ts.utcoffset().total_seconds() == 0
    label = parse_label(b'{"event_id": "e1", "model_id": "m", "ts": "2026-11-28T09:00:00+02:00", "label": "cat"}', 4096)
    assert label.label == "cat" and label.ts.hour == 7


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "empty"),
        (None, "empty"),
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "object"),
        (b'"just a string"', "object"),
        (encode(ts=...), "ts: Field required"),
        (encode(features=[1, 2]), "features"),
        (encode(prediction={"x": 1}), "prediction"),
        (encode(event_id=17), "event_id"),
        (encode(features={"a": True}), "features.a"),
        (encode(ts="yesterday"), "RFC 3339"),
        (encode(ts="2026-13-45T00:00:00Z"), "RFC 3339"),
        (encode(ts="2026-11-27T10:00:00"), "UTC offset"),
        (encode(ts=1795788388), "RFC 3339"),
        (encode(extra_field=1), "Extra inputs"),
        (encode(event_id=""), "event_id"),
        (encode(scores={"a": 1.5}), "scores"),
        (encode().replace(b"2.31", b"NaN"), "prediction"),
        (encode().replace(b"2.5", b"Infinity"), "features.b"),
        (encode().replace(b"2.5", b"1e999"), "finite"),
    ],
)
def test_contract_violations_are_invalid_events(raw, fragment):
    with pytest.raises(InvalidEvent, match=None) as info:
        parse_prediction(raw, 4096)
    assert fragment in str(info.value)


def test_oversized_record_is_rejected_before_parsing():
    with pytest.raises(InvalidEvent, match="exceeds max_event_bytes=2048"):
        parse_prediction(encode(features={"blob": "x" * 5000}), 2048)
