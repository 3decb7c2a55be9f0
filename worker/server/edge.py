"""What the endpoint accepts, and the answers it gives when it does not.

* ``RequestGate``: the bearer token (when ``UNDERTOW_SERVER_TOKEN`` is set,
  401 otherwise) and a JSON content type (415 otherwise), checked before the
  body is read.
* ``prediction_records`` / ``label_records``: the records a request becomes,
  each validated by the monitor's own parser (``parse_prediction``,
  ``parse_label``, size limit included) before any is emitted, so the
  server refuses with 422 whatever the monitor would dead-letter. A refused
  row is named by its place in the request (``instances.3.region``).
* ``validation_error``: the 422 body, with at most a short prefix of each
  input echoed and never a value JSON cannot carry (NaN, a 400-digit int).
* ``check_finite``: a NaN or infinite prediction or score is the model's
  fault, not the client's: ServerFault, which ``FaultAnswer`` turns into a
  500 naming the rows (logged at most once a second); no event is emitted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import reprlib
import time
import uuid

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from undertow.errors import InvalidEvent
from undertow.models.label_kinds import LabelKind
from undertow.worker.runtime.events import describe_problems, field_problems, parse_label, parse_prediction

log = logging.getLogger(__name__)

# Characters of an input echoed in a 422 (a 500 KB value once came back as 700 KB), and errors listed.
MAX_ECHO = 80
MAX_MESSAGE = 300
MAX_ERRORS = 20

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = MAX_ECHO
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 5
_REPR.maxlevel = 3


class ServerFault(Exception):
    """The server's own output would make a record the monitor refuses (a NaN or infinite prediction or
    score, or a field the server fills itself): answered 500 (``FaultAnswer``), no event of the request
    emitted. Not the client's fault, hence not a 4xx."""


class FaultAnswer:
    """The exception handler for ServerFault: a 500 with its message, logged at most once a second (a model
    that predicts NaN for every row would otherwise log every request)."""

    def __init__(self):
        self._logged = 0.0

    async def __call__(self, request: Request, exc: Exception) -> JSONResponse:
        now = time.monotonic()
        if now - self._logged >= 1.0:
            self._logged = now
            log.error("%s %s: %s; answered 500, no event emitted", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)


class RequestGate:
    """Who may post and in what form: checked on the raw request, before its body is read."""

    def __init__(self, token: SecretStr | None):
        # Digests, compared in constant time: neither the token's bytes nor its length leak through timing.
        self._digest = None if token is None else hashlib.sha256(token.get_secret_value().encode()).digest()

    def check(self, request: Request) -> None:
        if self._digest is not None:
            self._authorize(request.headers.get("authorization"))
        # Only JSON: a text/plain or form post is a "simple" cross-site request a web page can make
        # without a CORS preflight; application/json needs one, which this server never grants.
        declared = request.headers.get("content-type", "")
        media = declared.split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise HTTPException(
                415,
                f"send the body as JSON (Content-Type: application/json), not "
                f"{short_text(declared) if declared else 'no content type'}",
            )

    def _authorize(self, header: str | None) -> None:
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise HTTPException(
                401, "this endpoint needs Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
            )
        # Starlette decodes headers as latin-1: encoding back gives the bytes the client sent.
        given = hashlib.sha256(credentials.strip().encode("latin-1")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise HTTPException(
                401, "invalid bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )


def short_text(text: str, limit: int = MAX_ECHO) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def short_input(value: object) -> object:
    """``value`` as a 422 may echo it: small JSON scalars as they are, anything else a repr of at most
    ``MAX_ECHO`` characters (NaN and infinities included: JSON has no literal for them)."""
    if value is None or value is True or value is False:
        return value
    if value.__class__ is float:
        return value if math.isfinite(value) else repr(value)
    if value.__class__ is int and value.bit_length() <= 64:
        return value
    if value.__class__ is str and len(value) <= MAX_ECHO and value.isprintable():
        return value
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past Python's 4,300-digit str() limit, anywhere inside
        text = f"<{type(value).__name__}>"
    return short_text(text)


def public_errors(problems: list[dict]) -> list[dict]:
    """``field_problems`` as the 422's ``detail``: at most MAX_ERRORS entries, inputs shortened."""
    detail = [
        {
            "type": p["type"],
            "loc": list(p["loc"]),
            "msg": short_text(str(p["msg"]), MAX_MESSAGE),
            "input": short_input(p.get("input")),
        }
        for p in problems[:MAX_ERRORS]
    ]
    if len(problems) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": [], "msg": f"and {len(problems) - MAX_ERRORS} more"})
    return detail


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """The 422 for a body that does not fit the request model: one error per field, inputs shortened.

    FastAPI's own handler echoes every input whole, and fails with a 500
    on NaN (its JSON encoder refuses it), which also broke the connection.
    """
    return JSONResponse({"detail": public_errors(field_problems(list(exc.errors())))}, status_code=422)


def nonfinite_rows(predictions: list, scores: list[dict] | None) -> list[int]:
    """Rows whose prediction or any score is NaN or infinite (the monitor refuses those events)."""
    isfinite = math.isfinite
    bad = [i for i, p in enumerate(predictions) if p.__class__ is float and not isfinite(p)]
    if scores is not None:
        bad += [i for i, row in enumerate(scores) if not all(map(isfinite, row.values()))]
    return sorted(set(bad))


def check_finite(source: str, predictions: list, scores: list[dict] | None, counter) -> None:
    """ServerFault naming the rows (and ``counter`` increased by their number) when any prediction or score
    of ``source`` (the model and version) is NaN or infinite."""
    bad = nonfinite_rows(predictions, scores)
    if bad:
        counter.inc(len(bad))
        shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
        raise ServerFault(
            f"{source} predicted NaN or infinity (prediction or scores) for {len(bad)} of "
            f"{len(predictions)} rows (rows {shown}); no event was emitted for this request"
        )


def prediction_records(
    model_id: str,
    version: str,
    ts: str,
    rows: list[dict],
    predictions: list,
    scores: list[dict] | None,
    max_bytes: int,
    batch: bool,
) -> list[tuple[str, bytes]]:
    """(event id, record value) per row, each checked by the monitor's parser; nothing when any is refused.

    HTTPException(422) names the fields at fault where the request has them
    (``features.region``, ``instances.3.region``); ServerFault when a field
    the server fills itself is at fault.
    """
    records, refused = [], []
    for i, (row, prediction) in enumerate(zip(rows, predictions)):
        event_id = uuid.uuid4().hex
        event = {
            "event_id": event_id,
            "model_id": model_id,
            "model_version": version,
            "ts": ts,
            "features": row,
            "prediction": prediction,
        }
        if scores is not None:
            event["scores"] = scores[i]
        value = json.dumps(event).encode()
        try:
            parse_prediction(value, max_bytes)  # the monitor's own check: what it would dead-letter
        except InvalidEvent as exc:
            # The request's row is the event's "features": its fields go under instances.<i> (or features).
            place = ("instances", i) if batch else ("features",)
            refused += _placed(
                exc,
                f"{model_id} version {version}, row {i}",
                place,
                strip=1,
                client_fields=("features",),
                largest=lambda row=row: (max(row, key=lambda name: len(json.dumps(row[name]))),),
                size=len(value),
                max_bytes=max_bytes,
            )
        records.append((event_id, value))
    _refuse(refused)
    return records


def label_records(model_id: str, ts: str, labels: list, max_bytes: int, kind: LabelKind | None = None) -> list[bytes]:
    """The label events of ``labels``, checked as ``prediction_records`` checks predictions, and, with the
    served version's ``kind``, refused where the monitor would dead-letter them as not its classes."""
    records, refused = [], []
    for i, item in enumerate(labels):
        if kind is not None and not kind.fits(item.label):
            message = kind.describe(model_id, item.label)
            refused.append({"loc": ("labels", i, "label"), "type": "label_kind", "msg": message, "input": item.label})
        value = json.dumps({"event_id": item.event_id, "model_id": model_id, "ts": ts, "label": item.label}).encode()
        try:
            parse_label(value, max_bytes)
        except InvalidEvent as exc:
            refused += _placed(
                exc,
                f"{model_id}, label {i}",
                ("labels", i),
                strip=0,
                client_fields=("event_id", "label"),
                largest=lambda: ("label",),
                size=len(value),
                max_bytes=max_bytes,
            )
        records.append(value)
    _refuse(refused)
    return records


def _placed(
    exc: InvalidEvent,
    source: str,
    place: tuple,
    *,
    strip: int,
    client_fields: tuple[str, ...],
    largest,
    size: int,
    max_bytes: int,
) -> list[dict]:
    """The problems of a refused record, located in the request (``place`` + the field's path without its
    first ``strip`` parts); a problem in a field the server fills itself raises ServerFault."""
    placed = []
    for problem in getattr(exc, "problems", None) or [{"loc": (), "type": "invalid_event", "msg": str(exc)}]:
        loc = problem["loc"]
        if problem["type"] == "event_too_large":
            # Only the error path pays for finding the value that made the record too large (largest()).
            placed.append(
                {
                    **problem,
                    "loc": place + largest(),
                    "msg": f"the event of this row would be {size:,} bytes, over the monitor's "
                    f"max_event_bytes ({max_bytes:,}); the largest value is this one",
                }
            )
        elif loc[:1] and loc[0] in client_fields:
            placed.append({**problem, "loc": place + loc[strip:]})
        else:
            raise ServerFault(
                f"{source}: the event would be dead-lettered by the monitor: {describe_problems([problem])}"
            )
    return placed


def _refuse(refused: list[dict]) -> None:
    if refused:
        raise HTTPException(422, public_errors(refused))
