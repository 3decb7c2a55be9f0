"""Output events: every published event parses into its model, and the JSON Schemas in the repository match the
models."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from undertow.errors import InvalidEvent
from undertow.worker.runtime import output_events
from undertow.worker.runtime.output_events import (
    ConceptDriftAlert,
    RetrainRequested,
    parse_event,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden_monitor.json"


def test_the_schemas_in_the_repository_are_the_models_schemas():
    expected = output_events.json_schemas()
    on_disk = {path.name: json.loads(path.read_text()) for path in SCHEMAS.glob("*.json")}
    assert sorted(on_disk) == sorted(expected), "regenerate: python -m undertow.worker.runtime.output_events schemas"
    for name, schema in expected.items():
        assert on_disk[name] == schema, f"{name} is stale: python -m undertow.worker.runtime.output_events schemas"


def test_every_recorded_event_parses_into_its_model_and_encodes_to_the_same_bytes():
    golden = json.loads(GOLDEN.read_text())
    events = golden["alerts"] + golden["retrain_requests"]
    assert {e["type"] for e in events} == {
        "undertow.drift.data",
        "undertow.drift.prediction",
        "undertow.drift.concept",
        "undertow.retrain.requested",
    }
    for raw in events:
        event = parse_event(json.dumps(raw))
        assert event.type == raw["type"] and type(event).model_fields["type"].default == raw["type"]
        assert output_events.encode(event) == json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()
    request = next(parse_event(json.dumps(e)) for e in golden["retrain_requests"])
    assert isinstance(request, RetrainRequested) and request.data.data_policy.kind in {"rolling", "all"}


def test_a_dataset_alert_round_trips():
    window = output_events.Window(
        index=3, start_ts="2026-11-01T00:00:00.000Z", end_ts="2026-11-01T00:10:00.000Z", n=500
    )
    alert = output_events.DatasetDriftAlert(
        id="x",
        subject="m",
        time=window.end_ts,
        data=output_events.DatasetDrift(
            model_id="m",
            model_version="1",
            severity="moderate",
            episode="started",
            drifted_share=0.5,
            drifted_features=["a", "b"],
            threshold=0.5,
            window=window,
        ),
    )
    assert parse_event(output_events.encode(alert)) == alert
    assert json.loads(output_events.encode(alert))["type"] == "undertow.drift.dataset"


def test_events_are_frozen():
    golden = json.loads(GOLDEN.read_text())
    alert = parse_event(json.dumps(next(a for a in golden["alerts"] if a["type"] == "undertow.drift.concept")))
    assert isinstance(alert, ConceptDriftAlert)
    with pytest.raises(ValidationError, match="frozen"):
        alert.data.value = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"type": "undertow.drift.unknown"}, "type"),
        ({"type": "undertow.drift.concept", "extra": 1}, "extra"),
        ({"type": "undertow.drift.concept", "data": {"detector": "adwin"}}, "detector"),
    ],
)
def test_events_that_do_not_fit_are_rejected_with_the_field(raw, fragment):
    golden = json.loads(GOLDEN.read_text())
    concept = next(a for a in golden["alerts"] if a["type"] == "undertow.drift.concept")
    event = {**concept, **{k: v for k, v in raw.items() if k != "data"}}
    if "data" in raw:
        event["data"] = {**concept["data"], **raw["data"]}
    with pytest.raises(InvalidEvent, match=fragment):
        parse_event(json.dumps(event))
