"""``undertow serve``: predictions over HTTP, each one a prediction event; labels by event id.

Routes: ``POST /predict``, ``POST /labels``, ``GET /health/live``,
``GET /health/ready`` (503 until a model is loaded), ``GET /metrics`` and
FastAPI's ``/docs``. The body is read and validated on the event loop
(cheap); the model runs in the thread pool. The answer never waits for
Kafka (``EventEmitter``), and the served version follows the registry's
champion (``PromotionFollower``).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from storage.db import make_engine, make_session_factory
from worker.runtime import cloudevents
from worker.runtime.events import Identifier, Target
from worker.runtime.settings import ServerSettings
from worker.runtime.topics import Topics
from worker.runtime.transport import make_event_producer
from worker.server.emitter import EventEmitter
from worker.server.follower import ModelSlot, PromotionFollower
from worker.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    event_id: Identifier
    label: Target


class LabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


def create_app(settings: ServerSettings, model_id: str) -> FastAPI:
    topics = Topics(settings.topic_prefix)
    metrics = ServerMetrics(model_id)
    slot = ModelSlot()
    key = model_id.encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.db_url, must_exist=True)
        emitter = EventEmitter(
            lambda: make_event_producer(settings, settings.producer_max_block_ms, settings.producer_max_pending),
            settings.event_queue_size, settings.producer_max_pending, metrics.dropped, metrics.emitted).start()
        follower = PromotionFollower(settings, model_id, slot, make_session_factory(engine), topics.models,
                                     metrics.swapped, settings.registry_check_seconds,
                                     settings.max_batch_rows, settings.model_threads).start()
        app.state.emitter = emitter
        try:
            yield
        finally:
            follower.stop()
            emitter.close(settings.shutdown_flush_seconds)
            engine.dispose()

    app = FastAPI(title=f"Undertow: {model_id}", lifespan=lifespan,
                  description="Predictions of the registry's champion; every answered row becomes a "
                              "prediction event, and labels posted here become label events.")
    app.state.slot, app.state.metrics = slot, metrics

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path in ("/predict", "/labels") else None
        if endpoint is not None:
            metrics.request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise HTTPException(413, f"the body is {int(declared):,} bytes; at most {settings.max_body_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise HTTPException(413, f"the body is over {settings.max_body_bytes:,} bytes")
        if not body.strip():
            raise HTTPException(422, 'empty body: send {"features": {...}} or {"instances": [{...}, ...]}')
        return bytes(body)

    def parse(model: type[BaseModel], body: bytes):
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None

    @app.post("/predict", summary="predict one row or a batch with the champion")
    async def predict(request: Request) -> dict:
        served = slot.current  # one version answers the whole request, whatever a swap does meanwhile
        if served is None:
            raise HTTPException(503, f"no version of {model_id} is loaded yet")
        rows = parse(served.request, await read_body(request)).rows()
        predictions, scores = await run_in_threadpool(served.predict, rows)
        ts = cloudevents.rfc3339(time.time())
        answers = []
        for i, (row, prediction) in enumerate(zip(rows, predictions)):
            event_id = uuid.uuid4().hex
            event = {"event_id": event_id, "model_id": model_id, "model_version": served.version, "ts": ts,
                     "features": row, "prediction": prediction}
            answer = {"event_id": event_id, "prediction": prediction}
            if scores is not None:
                event["scores"] = answer["scores"] = scores[i]
            request.app.state.emitter.emit("prediction", topics.predictions, key, json.dumps(event).encode())
            answers.append(answer)
        metrics.predictions.inc(len(answers))
        return {"model_id": model_id, "model_version": served.version, "predictions": answers}

    @app.post("/labels", status_code=202, summary="ground truth of earlier predictions, by event id")
    async def labels(request: Request) -> dict:
        body = parse(LabelsRequest, await read_body(request))
        ts = cloudevents.rfc3339(time.time())
        for item in body.labels:
            event = {"event_id": item.event_id, "model_id": model_id, "ts": ts, "label": item.label}
            request.app.state.emitter.emit("label", topics.labels, key, json.dumps(event).encode())
        return {"accepted": len(body.labels)}

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "alive"}

    @app.get("/health/ready")
    def ready() -> Response:
        served = slot.current
        if served is None:
            return JSONResponse({"status": "loading", "model_id": model_id}, status_code=503)
        return JSONResponse({"status": "ready", "model_id": model_id, "model_version": served.version,
                             "artifact_sha256": served.artifact_sha256})

    @app.get("/metrics")
    def prometheus() -> Response:
        emitter = getattr(app.state, "emitter", None)
        metrics.queued.set(0 if emitter is None else emitter.queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
