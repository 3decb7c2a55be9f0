"""``undertow serve``: predictions over HTTP, each one a prediction event; labels by event id.

Routes: ``POST /predict``, ``POST /labels``, ``GET /health/live``,
``GET /health/ready`` (503 until a model is loaded), ``GET /metrics`` and
FastAPI's ``/docs``. The body is read and validated on the event loop
(cheap); the model runs in the thread pool. The answer never waits for
Kafka (``EventEmitter``), and the served version follows the registry's
champion (``PromotionFollower``). Events are keyed by model id, or by event id
when the registry says the model is spread (read at start-up and with every
registry check: ``ModelSlot.spread``); a label by its prediction's event id.

The two POST routes take only JSON (415) and, with ``UNDERTOW_SERVER_TOKEN``
set, a bearer token (401); health and metrics stay open. Every record is
checked by the monitor's own parser before any record of the request is
emitted (``edge``): what the monitor would dead-letter is a 422 here, naming
the field. A NaN or infinite prediction is a 500 naming the rows, counted in
``undertow_server_nonfinite_predictions_total``, with no event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from undertow.storage.db import make_engine, make_session_factory
from undertow.worker.runtime import cloudevents
from undertow.worker.runtime.events import Identifier, Target
from undertow.worker.runtime.settings import ServerSettings
from undertow.worker.runtime.topics import Topics
from undertow.worker.runtime.transport import make_event_producer
from undertow.worker.server.edge import (
    FaultAnswer,
    RequestGate,
    ServerFault,
    check_finite,
    label_records,
    prediction_records,
    validation_error,
)
from undertow.worker.server.emitter import EventEmitter
from undertow.worker.server.follower import ModelSlot, PromotionFollower
from undertow.worker.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


_Request = TypeVar("_Request", bound=BaseModel)


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    event_id: Identifier
    label: Target


class LabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


def _request_counter(metrics: ServerMetrics) -> Callable[[Request, Any], Awaitable[Response]]:
    """The HTTP middleware that counts /predict and /labels requests by status and times them."""

    async def count_requests(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in ("/predict", "/labels") else None
        try:
            response: Response = await call_next(request)
        except Exception:
            # A bug's 500 comes from the server error middleware, outside this one: count it here.
            if endpoint is not None:
                metrics.request(endpoint, 500, time.perf_counter() - started)
            raise
        if endpoint is not None:
            metrics.request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    return count_requests


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise HTTPException(413, f"the body is {int(declared):,} bytes; at most {max_body_bytes:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise HTTPException(413, f"the body is over {max_body_bytes:,} bytes")
    if not body.strip():
        raise HTTPException(422, 'empty body: send {"features": {...}} or {"instances": [{...}, ...]}')
    return bytes(body)


def _parse(model: type[_Request], body: bytes) -> _Request:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        # With the context: the 422's messages name the rule (control characters, not a bare pattern).
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _keys(spread: bool, model_key: bytes) -> Callable[[str], bytes]:
    """A request's Kafka keys by event id: the event id itself for a spread model (so a label meets its
    prediction on the same partition number of the co-partitioned topics), else the model id."""
    if spread:
        return lambda event_id: event_id.encode()  # validated: text without control characters
    return lambda _event_id: model_key


def _emit_predictions(
    emitter: EventEmitter,
    topic: str,
    key: Callable[[str], bytes],
    records: list[tuple[str, bytes]],
    predictions: list[Any],
    scores: list[Any] | None,
) -> list[dict[str, Any]]:
    """Emit every record (all were checked valid first); the answer per row."""
    answers = []
    for i, (event_id, value) in enumerate(records):
        emitter.emit("prediction", topic, key(event_id), value)
        answer = {"event_id": event_id, "prediction": predictions[i]}
        if scores is not None:
            answer["scores"] = scores[i]
        answers.append(answer)
    return answers


def _first_spread(follower: PromotionFollower) -> None:
    """Read the spread setting once before serving; on failure keep keying by model id (which the monitor
    accepts for every model) and let the follower's checks retry."""
    try:
        follower.sync_spread()
    except Exception as exc:  # noqa: BLE001 - a database hiccup at start-up must not stop serving
        log.error(
            "reading whether %s is spread failed (%s); keying by model id until the next check", follower.model_id, exc
        )


def create_app(settings: ServerSettings, model_id: str) -> FastAPI:
    topics = Topics(settings.topic_prefix)
    metrics = ServerMetrics(model_id)
    slot = ModelSlot()
    key = model_id.encode()
    gate = RequestGate(settings.server_token)
    # The monitor's limit (UNDERTOW_MAX_EVENT_BYTES, read by both): a larger record would be dead-lettered there.
    max_event_bytes = settings.max_event_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.db_url, must_exist=True)
        emitter = EventEmitter(
            lambda: make_event_producer(settings, settings.producer_max_block_ms, settings.producer_max_pending),
            settings.event_queue_size,
            settings.producer_max_pending,
            metrics.dropped,
            metrics.emitted,
        ).start()
        follower = PromotionFollower(
            settings,
            model_id,
            slot,
            make_session_factory(engine),
            topics.models,
            metrics.swapped,
            settings.registry_check_seconds,
            settings.max_batch_rows,
            settings.model_threads,
        )
        _first_spread(follower)  # before the first request: a spread model's first events keyed by event id too
        follower.start()
        app.state.emitter = emitter
        try:
            yield
        finally:
            follower.stop()
            emitter.close(settings.shutdown_flush_seconds)
            engine.dispose()

    app = FastAPI(
        title=f"Undertow: {model_id}",
        lifespan=lifespan,
        description="Predictions of the registry's champion; every answered row becomes a "
        "prediction event, and labels posted here become label events.",
    )
    app.state.slot, app.state.metrics = slot, metrics
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServerFault, FaultAnswer())

    app.middleware("http")(_request_counter(metrics))

    async def read_body(request: Request) -> bytes:
        return await _read_body(request, settings.max_body_bytes)

    @app.post("/predict", summary="predict one row or a batch with the champion")
    async def predict(request: Request) -> dict:
        gate.check(request)
        served = slot.current  # one version answers the whole request, whatever a swap does meanwhile
        if served is None:
            raise HTTPException(503, f"no version of {model_id} is loaded yet")
        parsed = _parse(served.request, await read_body(request))
        rows = parsed.rows()
        try:
            predictions, scores = await run_in_threadpool(served.predict, rows)
        except Exception as exc:  # noqa: BLE001 - the model's own failure (e.g. a null it cannot impute)
            metrics.model_errors.inc()
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ServerFault(
                f"{model_id} version {served.version} could not predict this request "
                f"({type(exc).__name__}: {reason}); a null feature the pipeline does not impute "
                "is a common cause; no event was emitted"
            ) from None
        check_finite(f"{model_id} version {served.version}", predictions, scores, metrics.nonfinite)
        records = prediction_records(
            model_id,
            served.version,
            cloudevents.rfc3339(time.time()),
            rows,
            predictions,
            scores,
            max_event_bytes,
            batch=parsed.instances is not None,
        )
        keys = _keys(slot.spread, key)  # read once: one request's events are keyed alike
        answers = _emit_predictions(request.app.state.emitter, topics.predictions, keys, records, predictions, scores)
        metrics.predictions.inc(len(answers))
        return {"model_id": model_id, "model_version": served.version, "predictions": answers}

    @app.post("/labels", status_code=202, summary="ground truth of earlier predictions, by event id")
    async def labels(request: Request) -> dict:
        gate.check(request)
        body = _parse(LabelsRequest, await read_body(request))
        served = slot.current  # None while loading: the monitor checks the labels then
        kind = None if served is None else served.label_kind
        records = label_records(model_id, cloudevents.rfc3339(time.time()), body.labels, max_event_bytes, kind)
        keys = _keys(slot.spread, key)
        for item, value in zip(body.labels, records):
            request.app.state.emitter.emit("label", topics.labels, keys(item.event_id), value)
        return {"accepted": len(records)}

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "alive"}

    @app.get("/health/ready")
    def ready() -> Response:
        served = slot.current
        if served is None:
            return JSONResponse({"status": "loading", "model_id": model_id}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "model_id": model_id,
                "model_version": served.version,
                "artifact_sha256": served.artifact_sha256,
                "keyed_by": "event_id" if slot.spread else "model_id",
            }
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        emitter = getattr(app.state, "emitter", None)
        metrics.queued.set(0 if emitter is None else emitter.queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
