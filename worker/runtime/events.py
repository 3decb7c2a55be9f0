"""Event contracts: frozen pydantic models, validated once at the edge.

``parse_prediction`` and ``parse_label`` turn a raw Kafka value into an event
or raise InvalidEvent with a message that says what is wrong (and the fields
at fault in its ``problems``). The monitor dead-letters what they refuse;
the serving endpoint runs them on every record it is about to emit, so it
refuses with 422 exactly what the monitor would dead-letter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from undertow.errors import InvalidEvent
from undertow.models.ids import MODEL_ID_MAX_LENGTH, MODEL_ID_PATTERN

MAX_ID_LENGTH = 200
# The largest record value the monitor parses (UNDERTOW_MAX_EVENT_BYTES); the server refuses rows whose event
# would be larger, so both edges need the same default.
DEFAULT_MAX_EVENT_BYTES = 256 * 1024


def _parse_rfc3339(value: object) -> datetime:
    # pydantic alone would also take epoch numbers and dates without a zone;
    # the contract says RFC 3339 with an offset, so insist on it.
    if value.__class__ is not str:
        raise ValueError("must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    zone = parsed.tzinfo
    if zone is None or ("T" not in value and "t" not in value):
        raise ValueError(f"{value!r} needs a date, a time and a UTC offset (e.g. 'Z')")
    if zone is UTC:  # "Z" (most producers): already UTC, no conversion to pay per event
        return parsed
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is year 0 in UTC
        raise ValueError(f"{value!r} is outside the representable range in UTC") from None


EventTime = Annotated[datetime, BeforeValidator(_parse_rfc3339)]
# Every string that reaches the database or a header: no NUL or other control
# characters (PostgreSQL rejects NUL in text; the others only hide in logs).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[StrictStr, Field(pattern=_PRINTABLE)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=_PRINTABLE)]
ModelId = Annotated[StrictStr, Field(max_length=MODEL_ID_MAX_LENGTH, pattern=MODEL_ID_PATTERN)]
# Integers must convert to a finite float (the stages compute in float64);
# allow_inf_nan=False on the models rejects NaN, Infinity and overflowing floats.
Integer = Annotated[StrictInt, Field(ge=-(10**308), le=10**308)]
# Floats first: the common feature value matches the union's first member (a smart-mode union returns on
# the first exact match), 11 % less validation per prediction; ints still validate as ints.
FeatureValue = StrictFloat | Integer | Text | None
Target = StrictFloat | Integer | Text
# The bounds on each member, not on the union: pydantic-core checks them itself, where bounds on the union ran
# two Python validators per score (a prediction with 5 class scores: 5.3 -> 3.5 us to validate). Same values
# accepted, same messages (field_problems names the float member "float" as before).
Probability = Annotated[StrictFloat, Field(ge=0, le=1)] | Annotated[StrictInt, Field(ge=0, le=1)]


class _Epoch:
    """``ts`` in seconds since the epoch, computed on first use and then kept in the instance.

    Read by every stage for every event: ``functools.cached_property`` takes
    a lock per first read on Python 3.11, several times the computation.
    """

    def __get__(self, event, owner=None) -> float:
        if event is None:
            return self  # type: ignore[return-value]
        value = event.__dict__["epoch"] = event.ts.timestamp()  # the instance's entry shadows this descriptor
        return value


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, ignored_types=(_Epoch,))

    event_id: Identifier
    model_id: ModelId
    ts: EventTime

    epoch = _Epoch()


class PredictionEvent(_Event):
    model_version: ModelId | None = None
    features: dict[Identifier, FeatureValue]
    prediction: Target
    scores: dict[Identifier, Probability] | None = None


class LabelEvent(_Event):
    label: Target


def _rejected(message: str, problems: list[dict]) -> InvalidEvent:
    """InvalidEvent with its problems as data in ``.problems``: one ``{"loc", "type", "msg", "input"}`` per
    field at fault (``loc`` () for the record as a whole: empty, too large).

    The monitor only needs the message (the dead letter's header); an edge
    that answers the producer (the serving endpoint) names the fields. Not a
    subclass: dead letters and their metrics are labelled by the class name.
    """
    error = InvalidEvent(message)
    error.problems = problems  # type: ignore[attr-defined]
    return error


def _parse(model: type[_Event], value: bytes | None, max_bytes: int) -> _Event:
    if value is None or len(value) == 0:
        raise _rejected(
            "empty record value", [{"loc": (), "type": "event_empty", "msg": "empty record value", "input": None}]
        )
    if len(value) > max_bytes:
        message = f"record of {len(value)} bytes exceeds max_event_bytes={max_bytes}"
        raise _rejected(message, [{"loc": (), "type": "event_too_large", "msg": message, "input": None}])
    try:
        # The model's pydantic-core validator itself: model_validate_json's wrapper costs ~10 % per event.
        return model.__pydantic_validator__.validate_json(value)
    except ValidationError as exc:
        problems = field_problems(exc.errors(include_url=False))
        raise _rejected(f"{model.__name__}: {describe_problems(problems)}", problems) from None


# Names pydantic gives the members of a union in an error's location.
_UNION_MEMBERS = {"constrained-int", "constrained-str", "int", "float", "str", "none", "bool"}
# Probability's float member, which pydantic names after its bounds; only ever last in a location (unlike the
# names above, a feature called so keeps its name).
_BOUNDED_FLOAT = "constrained-float"


def field_problems(errors: list[dict]) -> list[dict]:
    """Pydantic's errors as one problem per field, ``{"loc", "type", "msg", "input"}``, in words a producer
    understands; ``loc`` without the names pydantic gives union members.

    A value that fails every member of a union (number, integer, string)
    gives one message: the member whose type matched and whose constraint
    failed, else what the members accept.

    >>> [(p["loc"], p["msg"]) for p in field_problems([
    ...     {"loc": ("features", "x", "float"), "type": "finite_number", "msg": "...", "input": 1e400},
    ...     {"loc": ("features", "x", "constrained-int"), "type": "int_type", "msg": "...", "input": 1e400}])]
    [(('features', 'x'), 'must be a finite number')]
    """
    by_field: dict[tuple, list[dict]] = {}
    for error in errors:
        if error["loc"] and error["loc"][-1] == _BOUNDED_FLOAT:
            error = {**error, "loc": (*error["loc"][:-1], "float")}
        loc = tuple(part for part in error["loc"] if part not in _UNION_MEMBERS)
        by_field.setdefault(loc, []).append(error)
    problems = []
    for loc, group in by_field.items():
        constrained = [e for e in group if not e["type"].endswith("_type") and e["type"] != "finite_number"]
        error = (constrained or group)[0]
        problems.append(
            {
                "loc": loc,
                "type": error["type"],
                "msg": _message(error, group, bool(constrained)),
                "input": error.get("input"),
            }
        )
    return problems


def _accepted(group: list[dict]) -> str:
    """What the union members that refused a value accept, from their names in the errors' locations."""
    members = {e["loc"][-1] for e in group if e["loc"] and e["loc"][-1] in _UNION_MEMBERS}
    words = []
    if "float" in members:
        words.append("a finite number" if any(e["type"] == "finite_number" for e in group) else "a number")
    elif members & {"int", "constrained-int"}:
        words.append("an integer")
    if members & {"str", "constrained-str"}:
        words.append("a string")
    return " or ".join(words) or "a number or a string"


def _message(error: dict, group: list[dict], constrained: bool) -> str:
    if len(group) > 1 and not constrained:
        return f"must be {_accepted(group)}"
    if error["type"] == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern")
        return (
            "must not contain control characters (NUL, newline, ...)"
            if pattern == _PRINTABLE
            else f"must match {pattern}"
        )
    value = error.get("input")
    if (
        error["type"] in ("less_than_equal", "greater_than_equal")
        and isinstance(value, (int, float))
        and abs(value) > 10**308
    ):
        return "integer too large to be a finite float"
    return error["msg"]


def describe_problems(problems: list[dict], limit: int = 5) -> str:
    """One line for ``field_problems``: ``loc: message; ...``, at most ``limit`` fields."""
    shown = [f"{'.'.join(str(part) for part in p['loc']) or '<root>'}: {p['msg']}" for p in problems[:limit]]
    more = len(problems) - limit
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def describe(errors: list[dict], limit: int = 5) -> str:
    """One line for pydantic's errors: one problem per field, in words a producer understands."""
    return describe_problems(field_problems(errors), limit)


def parse_prediction(value: bytes | None, max_bytes: int) -> PredictionEvent:
    """Validate a prediction record.

    >>> e = parse_prediction(b'{"event_id": "a1", "model_id": "m", "ts": "2026-11-27T14:06:28Z",'
    ...                      b' "features": {"x": 1.5, "c": "red", "z": null}, "prediction": 2.3}', 4096)
    >>> e.features["c"], e.epoch
    ('red', 1795788388.0)
    >>> parse_prediction(b'{"event_id": "a1"}', 4096)
    Traceback (most recent call last):
    ...
    undertow.errors.InvalidEvent: PredictionEvent: model_id: Field required; ts: Field required; ...
    """
    return _parse(PredictionEvent, value, max_bytes)  # type: ignore[return-value]


def parse_label(value: bytes | None, max_bytes: int) -> LabelEvent:
    """Validate a label record; the InvalidEvent's ``problems`` name the fields at fault.

    >>> try:
    ...     parse_label(b'{"event_id": "a1", "model_id": "m", "ts": "2026-11-27T14:06:28Z", "label": NaN}', 4096)
    ... except InvalidEvent as exc:
    ...     print([(p["loc"], p["type"]) for p in exc.problems])
    [(('label',), 'finite_number')]
    """
    return _parse(LabelEvent, value, max_bytes)  # type: ignore[return-value]
