"""Event contracts: frozen pydantic models, validated once at the edge.

``parse_prediction`` and ``parse_label`` turn a raw Kafka value into an event
or raise InvalidEvent with a message that says what is wrong.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat,
                      StrictInt, StrictStr, ValidationError)

from storage.errors import InvalidEvent

MAX_ID_LENGTH = 200


def _parse_rfc3339(value: object) -> datetime:
    # pydantic alone would also take epoch numbers and dates without a zone;
    # the contract says RFC 3339 with an offset, so insist on it.
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None or "T" not in value.upper():
        raise ValueError(f"{value!r} needs a date, a time and a UTC offset (e.g. 'Z')")
    return parsed.astimezone(timezone.utc)


EventTime = Annotated[datetime, BeforeValidator(_parse_rfc3339)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
# allow_inf_nan=False on the models rejects NaN, Infinity and overflowing numbers.
FeatureValue = StrictInt | StrictFloat | StrictStr | None
Target = StrictInt | StrictFloat | StrictStr
Probability = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    event_id: Identifier
    model_id: Identifier
    ts: EventTime

    @property
    def epoch(self) -> float:
        return self.ts.timestamp()


class PredictionEvent(_Event):
    model_version: Identifier | None = None
    features: dict[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)], FeatureValue]
    prediction: Target
    scores: dict[StrictStr, Probability] | None = None


class LabelEvent(_Event):
    label: Target


def _parse(model: type[_Event], value: bytes | None, max_bytes: int) -> _Event:
    if value is None or len(value) == 0:
        raise InvalidEvent("empty record value")
    if len(value) > max_bytes:
        raise InvalidEvent(f"record of {len(value)} bytes exceeds max_event_bytes={max_bytes}")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidEvent(f"{model.__name__}: {problems}") from None


def parse_prediction(value: bytes | None, max_bytes: int) -> PredictionEvent:
    """Validate a prediction record.

    >>> e = parse_prediction(b'{"event_id": "a1", "model_id": "m", "ts": "2026-11-27T14:06:28Z",'
    ...                      b' "features": {"x": 1.5, "c": "red", "z": null}, "prediction": 2.3}', 4096)
    >>> e.features["c"], e.epoch
    ('red', 1795788388.0)
    >>> parse_prediction(b'{"event_id": "a1"}', 4096)
    Traceback (most recent call last):
    ...
    storage.errors.InvalidEvent: PredictionEvent: model_id: Field required; ts: Field required; ...
    """
    return _parse(PredictionEvent, value, max_bytes)  # type: ignore[return-value]


def parse_label(value: bytes | None, max_bytes: int) -> LabelEvent:
    return _parse(LabelEvent, value, max_bytes)  # type: ignore[return-value]
