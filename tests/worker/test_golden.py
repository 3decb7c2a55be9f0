"""Golden output: a fixed stream through the monitor's stages gives the alerts and window results recorded once.

The records are built here with explicit offsets and timestamps (no broker:
the interleaving of predictions and labels is fixed, so the result is too)
and go through validation and the monitor's stages one transaction per
batch, as the checkpoint runs them. Refactorings must not change a byte (floats: nine
significant digits, see ``_near``).
Record anew only for a deliberate behaviour change, and say so in the
commit: ``UNDERTOW_WRITE_GOLDEN=1 pytest tests/worker/test_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text

from tests.conftest import Env
from undertow.worker.dev.sample import SampleStream, encode
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import ServiceRunner
from undertow.worker.runtime.topics import Topics

pytestmark = pytest.mark.postgres

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden_monitor.json"
LABEL_LAG = 300
BATCH = 700


def _records(topics):
    """Two models: a drifting stream with late labels (a shift, an unseen category, then concept drift)
    and a stable one with event-time windows."""
    offsets = {topics.predictions: 0, topics.labels: 0}
    ts = 1_793_000_000_000

    def record(topic: str, event: dict) -> ConsumerRecord:
        nonlocal ts
        ts += 7
        offset = offsets[topic]
        offsets[topic] += 1
        key, value = event["model_id"].encode(), encode(event)
        return ConsumerRecord(topic, 0, -1, offset, ts, 0, key, value, [], None, len(key), len(value), -1)

    drifting = SampleStream(seed=7, model_id="housing")
    pairs = [
        *drifting.events(3000),
        *drifting.events(1500, start_index=3000, shift=1.5),
        *drifting.events(1500, start_index=4500, shift=1.5, new_region="central"),
        *drifting.events(1500, start_index=6000, shift=1.5, concept_shift=1.0),
    ]
    stable = list(SampleStream(seed=8, model_id="stable").events(3000))
    out = []
    for i, (prediction, _) in enumerate(pairs):
        out.append(record(topics.predictions, prediction))
        if i < len(stable):
            out.append(record(topics.predictions, stable[i][0]))
            out.append(record(topics.labels, stable[i][1]))
        if i >= LABEL_LAG:
            out.append(record(topics.labels, pairs[i - LABEL_LAG][1]))
    out.extend(record(topics.labels, label) for _, label in pairs[-LABEL_LAG:])
    return out


def _run(env: Env) -> dict:
    env.register_reference(SampleStream(seed=2, model_id="housing"), model_id="housing", window_size=500)
    env.register_reference(SampleStream(seed=3, model_id="stable"), model_id="stable", window_seconds=600.0)
    runner = ServiceRunner(env.settings, monitor_service(env.settings, clock=lambda: 2_000_000_000))
    records = _records(Topics(env.settings.topic_prefix))
    for start in range(0, len(records), BATCH):
        batch = build_batch(records[start : start + BATCH], runner.service.parse)
        with runner.sessions.begin() as session:
            runner.apply(session, batch)
    runner.engine.dispose()
    with env.engine.connect() as conn:
        alerts = [json.loads(row[0]) for row in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY id"))]
        windows = [
            dict(row._mapping)
            for row in conn.execute(
                text("SELECT * FROM window_results ORDER BY model_id, version, window_index, feature")
            )
        ]
        requests = [
            json.loads(row[0])
            for row in conn.execute(text("SELECT cloudevent FROM retrain_requests ORDER BY request_id"))
        ]
    return {"alerts": alerts, "window_results": windows, "retrain_requests": requests}


def _canonical(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True)


def _floats_as(value, replace):
    """``value`` (parsed JSON) with every float as ``replace(it)``."""
    if isinstance(value, float):
        return replace(value)
    if isinstance(value, dict):
        return {key: _floats_as(item, replace) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats_as(item, replace) for item in value]
    return value


def _near(value):
    """Every float as ``pytest.approx`` of it (relative 1e-9). A CUSUM threshold comes out of a LAPACK solve,
    whose last bits depend on the BLAS kernel the CPU selects (20.53249852906896 on one machine,
    20.532498529451477 on another); nine digits still catch any change of behaviour."""
    return _floats_as(value, lambda x: pytest.approx(x, rel=1e-9, abs=0.0, nan_ok=True))


def _typed(value):
    """Every float as the word "float": what is an int and what a float must not change."""
    return _floats_as(value, lambda x: "float")


def test_the_stream_gives_the_recorded_alerts_and_window_results(env):
    got = json.loads(json.dumps(_run(env)))
    if os.environ.get("UNDERTOW_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert [a["id"] for a in got["alerts"]] == [a["id"] for a in golden["alerts"]]
    for part in ("alerts", "window_results", "retrain_requests"):
        assert got[part] == _near(golden[part]), part
    # == holds for 1 == 1.0; the published events must not turn an int into a float or back.
    assert [_canonical(_typed(a)) for a in got["alerts"]] == [_canonical(_typed(a)) for a in golden["alerts"]]
    assert [_canonical(_typed(r)) for r in got["retrain_requests"]] == [
        _canonical(_typed(r)) for r in golden["retrain_requests"]
    ]
    assert {a["type"] for a in golden["alerts"]} >= {"undertow.drift.data", "undertow.drift.concept"}
