"""Recorded ``drift_state`` rows of every format, and the streams that continue them.

Three model versions go through the monitor's stages (as ``test_golden.py``
runs them: validation, then the stages, one transaction per batch, SQLite,
no broker): a drifting regression with hopping count windows (its buffer is
never empty), a stable one with event-time windows, and a scored classifier
(a confidence column in its buffer). After the first part of their streams
their ``drift_state`` rows are taken as written; the second part is the
continuation whose window results and alerts a loaded row must reproduce.

Recorded once with the release that wrote them (the last before formats were
numbered, e8601f9, checked out with ``git worktree add``), then the current
format's rows and the states this release reads from each:

    PYTHONPATH=<e8601f9 checkout> python -m tests.worker.drift_state_streams record tests/data/drift_state
    python -m tests.worker.drift_state_streams record-current tests/data/drift_state
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text

from undertow.models import registry
from undertow.models.profile import build_profile
from undertow.models.reference import load_reference
from undertow.storage import db
from undertow.worker.dev.sample import SampleStream, encode, write_reference_csv
from undertow.worker.monitor.service import monitor_service
from undertow.worker.runtime.batch import build_batch
from undertow.worker.runtime.service import ServiceRunner
from undertow.worker.runtime.settings import MonitorSettings, load_settings
from undertow.worker.runtime.topics import Topics

BATCH = 700
PREFIX = "rec."
COLUMNS = (
    "next_window",
    "rows",
    "since_evaluation",
    "buffer",
    "buffer_ts",
    "window_start_ts",
    "late_events",
    "episodes",
)
MODELS = ("housing", "stable", "scored")
RECORDED_FORMAT = 3  # the rows of the release before formats were numbered (e8601f9)


def _classifier_events(rng, n: int, start: int, shift: float) -> list[dict]:
    x = rng.normal(size=(n, 3)) + np.array([shift, 0.0, 0.0])
    p = 1 / (1 + np.exp(-3 * (x[:, 0] + 1.5)))  # calibrated P(class "1")
    out = []
    for i in range(n):
        label = "1" if p[i] >= 0.5 else "0"
        confidence = round(float(max(p[i], 1 - p[i])), 6)
        out.append(
            {
                "event_id": f"c{start + i}",
                "model_id": "scored",
                "ts": f"2026-11-01T{(start + i) // 3600:02d}:{(start + i) // 60 % 60:02d}:{(start + i) % 60:02d}.000Z",
                "features": {f"x{j}": round(float(x[i, j]), 6) for j in range(3)},
                "prediction": label,
                "scores": {label: confidence, "01"[label == "0"]: round(1 - confidence, 6)},
            }
        )
    return out


def register(engine, workdir: Path) -> None:
    """The three versions, profiled from seeded references (the same profile on every run)."""
    sessions = db.make_session_factory(engine)
    for model_id, seed, config in (
        ("housing", 2, {"window_size": 500, "hop": 250}),
        ("stable", 3, {"window_seconds": 600.0}),
    ):
        path = workdir / f"{model_id}.csv"
        write_reference_csv(SampleStream(seed=seed, model_id=model_id), path, 5000)
        reference = load_reference(path, target="target", prediction="prediction")
        with sessions.begin() as session:
            registry.register(
                session,
                model_id=model_id,
                profile=reference.profile,
                artifacts_dir=workdir,
                drift_config=registry.DriftConfig(**config),
                baseline_error=reference.baseline_error,
            )
    rng = np.random.default_rng(11)
    events = _classifier_events(rng, 5000, 0, 0.0)
    columns = {f"x{j}": [e["features"][f"x{j}"] for e in events] for j in range(3)}
    columns["__prediction__"] = [e["prediction"] for e in events]
    with sessions.begin() as session:
        registry.register(
            session,
            model_id="scored",
            profile=build_profile(columns),
            artifacts_dir=workdir,
            drift_config=registry.DriftConfig(window_size=500, hop=250),
            baseline_error=(0.08, 0.27),
            task="classification",
        )


def streams() -> tuple[list[dict], list[dict]]:
    """Prediction events of the first part (recorded) and of the continuation."""
    housing, stable = SampleStream(seed=7, model_id="housing"), SampleStream(seed=8, model_id="stable")
    rng = np.random.default_rng(12)
    first = [e for e, _ in [*housing.events(2600), *housing.events(1100, start_index=2600, shift=1.5)]]
    first += (
        [e for e, _ in stable.events(2500)]
        + _classifier_events(rng, 2100, 0, 0.0)
        + _classifier_events(rng, 900, 2100, -1.6)
    )
    rest = [e for e, _ in housing.events(1400, start_index=3700, shift=1.5, new_region="central")]
    rest += [e for e, _ in stable.events(1300, start_index=2500)] + _classifier_events(rng, 1300, 3000, 0.0)
    return first, rest


def _records(events: list[dict], offset: int) -> list[ConsumerRecord]:
    topic = Topics(PREFIX).predictions
    out = []
    for i, event in enumerate(events):
        key, value = event["model_id"].encode(), encode(event)
        out.append(ConsumerRecord(topic, 0, -1, offset + i, 0, 0, key, value, [], None, len(key), len(value), -1))
    return out


def run(db_url: str, events: list[dict], offset: int = 0) -> None:
    settings = load_settings(
        {"kafka_bootstrap_servers": "127.0.0.1:9", "db_url": db_url, "topic_prefix": PREFIX}, MonitorSettings
    )
    runner = ServiceRunner(settings, monitor_service(settings, clock=lambda: 2_000_000_000))
    records = _records(events, offset)
    try:
        for start in range(0, len(records), BATCH):
            batch = build_batch(records[start : start + BATCH], runner.service.parse)
            with runner.sessions.begin() as session:
                runner.apply(session, batch)
    finally:
        runner.engine.dispose()


def rows(engine) -> dict[str, dict]:
    """Each version's drift_state row as JSON: buffers in base64."""
    out = {}
    with engine.connect() as conn:
        for row in conn.execute(text(f"SELECT model_id, {', '.join(COLUMNS)} FROM drift_state")):
            values = dict(row._mapping)
            for name in ("buffer", "buffer_ts"):
                values[name] = base64.b64encode(values[name] or b"").decode()
            out[values.pop("model_id")] = values
    return out


def outcome(engine) -> dict:
    with engine.connect() as conn:
        alerts = [row[0] for row in conn.execute(text("SELECT cloudevent FROM alerts ORDER BY id"))]
        windows = [
            dict(row._mapping)
            for row in conn.execute(
                text("SELECT * FROM window_results ORDER BY model_id, version, window_index, feature")
            )
        ]
    return {"alerts": alerts, "window_results": windows}


def put_row(engine, model_id: str, columns: dict, state_format: int | None) -> None:
    """Replace a version's drift_state row by a recorded one."""
    values = {**columns, **{name: base64.b64decode(columns[name]) for name in ("buffer", "buffer_ts")}}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM drift_state WHERE model_id = :m"), {"m": model_id})
        conn.execute(
            text(
                f"INSERT INTO drift_state (model_id, version, {', '.join(COLUMNS)}, state_format) "
                f"VALUES (:model_id, '1', {', '.join(':' + c for c in COLUMNS)}, :state_format)"
            ),
            {**values, "model_id": model_id, "state_format": state_format},
        )


def continue_from(workdir: Path, model_id: str, columns: dict, state_format: int | None) -> tuple[dict, dict]:
    """A fresh database with the three versions and one recorded row; the continuation of that version's stream:
    its window results and alerts, and the row it leaves."""
    url = f"sqlite:///{workdir / f'{model_id}-{abs(hash(json.dumps(columns, sort_keys=True)))}.db'}"
    engine = db.make_engine(url)
    db.migrate(engine)
    register(engine, workdir)
    put_row(engine, model_id, columns, state_format)
    first, rest = streams()
    run(url, [e for e in rest if e["model_id"] == model_id], offset=len(first))
    try:
        return outcome(engine), rows(engine)[model_id]
    finally:
        engine.dispose()


def _entries(episodes: dict, keep: int) -> dict:
    return {name: state[:keep] for name, state in episodes.items() if isinstance(state, list)}


def older_formats(out: Path) -> None:
    """Rows of the formats before, made by hand from the written ones as the code of their time stored them
    (``git log -p worker/monitor/data_drift.py models/drift/episodes.py``):

    * format 1 (before 495cebe, 29 Nov 2026): ``feature -> [level, calm windows]``, features and
      ``__dataset__`` only; no evidence; the buffer holds the feature columns only (no confidence column);
    * format 2 (495cebe): ``[level, calm, peak]``, ``__multivariate__`` / ``__performance__`` with their
      last value, ``"__evidence__"`` one CUSUM number per feature, a confidence column for scored
      classifiers;
    * format 3 (1ec774c, the rows ``record`` writes): ``"__evidence__"`` the newest windows' z per feature.

    And two mixtures the code of formats 2 and 3 writes: a window started before the confidence column and
    kept by the newer code (format 3 entries, a buffer without it), and a format-1 row saved by the newer code
    before its next window closed (``"__evidence__": {}`` beside ``[level, calm]`` entries)."""
    for model_id in MODELS:
        case = json.loads((out / f"written_{model_id}.json").read_text())
        row, episodes = case["row"], json.loads(case["row"]["episodes"])
        narrow = dict(row)
        if model_id == "scored":  # the confidence column is the last one
            buffer = np.frombuffer(base64.b64decode(row["buffer"]), dtype="<f8").reshape(row["rows"], -1)
            narrow["buffer"] = base64.b64encode(np.ascontiguousarray(buffer[:, :-1]).tobytes()).decode()
        one = {
            name: state
            for name, state in _entries(episodes, 2).items()
            if name not in ("__multivariate__", "__performance__")
        }
        two = {
            **_entries(episodes, 4),
            "__evidence__": {
                name: round(max(0.0, sum(z[:3]) - 1.5), 6) for name, z in episodes["__evidence__"].items()
            },
        }
        cases = {
            f"format1_{model_id}": (1, {**narrow, "episodes": json.dumps(one)}),
            f"format2_{model_id}": (2, {**row, "episodes": json.dumps(two)}),
        }
        if model_id == "scored":
            cases["mixed_format3_narrow_buffer_scored"] = (3, narrow)
            cases["mixed_format1_saved_by_newer_code_scored"] = (
                1,
                {**narrow, "episodes": json.dumps({**one, "__evidence__": {}})},
            )
        for name, (number, columns) in cases.items():
            (out / f"{name}.json").write_text(
                json.dumps({"model_id": model_id, "format": number, "row": columns}, indent=1) + "\n"
            )


def record(out: Path) -> None:
    """The rows the code on PYTHONPATH writes after the first part, and what it makes of each recorded and
    hand-made row (``variants``) when the continuation follows."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'first.db'}"
        engine = db.make_engine(url)
        db.migrate(engine)
        register(engine, workdir)
        first, _ = streams()
        run(url, first)
        written = rows(engine)
        engine.dispose()
        for model_id in MODELS:
            case = {"model_id": model_id, "format": RECORDED_FORMAT, "row": written[model_id]}
            (out / f"written_{model_id}.json").write_text(json.dumps(case, indent=1) + "\n")
        for path in sorted(out.glob("*.json")):
            case = json.loads(path.read_text())
            got, left = continue_from(workdir, case["model_id"], case["row"], None)
            (out / "outcomes").mkdir(exist_ok=True)
            (out / "outcomes" / path.name).write_text(json.dumps({"outcome": got, "row_after": left}, indent=1) + "\n")


def record_current(out: Path) -> None:
    """Rows of the current format (this release, on PYTHONPATH) after the first part, in ``out``/current; and
    in every recorded case the state this release reads from it (``expected_state``, checked by hand once)."""
    from undertow.models.drift.drift_state import CODEC, legacy_blob

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'first.db'}"
        engine = db.make_engine(url)
        db.migrate(engine)
        register(engine, workdir)
        run(url, streams()[0])
        with engine.connect() as conn:
            numbers = dict(conn.execute(text("SELECT model_id, state_format FROM drift_state")).all())
        written = rows(engine)
        engine.dispose()
    (out / "current").mkdir(exist_ok=True)
    for model_id in MODELS:
        case = {"model_id": model_id, "format": numbers[model_id], "row": written[model_id]}
        (out / "current" / f"{model_id}.json").write_text(json.dumps(case, indent=1) + "\n")
    feature_columns = {"housing": 6, "stable": 6, "scored": 4}
    for path in sorted(out.glob("*.json")):
        case = json.loads(path.read_text())
        row = SimpleNamespace(
            **{**case["row"], **{name: base64.b64decode(case["row"][name]) for name in ("buffer", "buffer_ts")}}
        )
        case["expected_state"] = CODEC.dump(CODEC.load(*legacy_blob(row, feature_columns[case["model_id"]])))[0]
        path.write_text(json.dumps(case, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["record-current"]:
        record_current(Path(sys.argv[2]))
    if sys.argv[1:2] == ["record"]:
        record(Path(sys.argv[2]))
        older_formats(Path(sys.argv[2]))
        record(Path(sys.argv[2]))  # the outcomes of the hand-made rows too
