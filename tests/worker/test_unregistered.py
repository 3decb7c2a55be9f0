"""Events of model ids nobody registered: counted and warned about, not kept (issue 29, point 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from undertow.worker.dev.sample import SampleStream

pytestmark = pytest.mark.postgres

DEFAULT = {"UNDERTOW_WAIT_FOR_REGISTRATION": "false"}  # the suite's Env waits by default; these tests do not


def _database_bytes(env) -> int:
    if env.db_url.startswith("sqlite"):
        path = env.db_url.removeprefix("sqlite:///")
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return int(
        env.scalar(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
    )


def _ghost_predictions(ids: int, per_id: int):
    for i in range(ids):
        model_id = f"ghost-{i:05d}"
        for j in range(per_id):
            yield (
                "prediction",
                {
                    "event_id": f"{model_id}-{j}",
                    "model_id": model_id,
                    "ts": "2026-11-01T00:10:00Z",
                    "features": {"x0": 0.5, "region": "north"},
                    "prediction": 1.0,
                },
            )


def _status_json(env) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "undertow.worker.cli", "status", "--json", *env.cli_args()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_5000_unregistered_ids_neither_grow_storage_nor_flood_status(env):
    """5,000 ids x 20 predictions: counted, one warning per id, database growth under 5 MB, status under 100 KB."""
    stream = SampleStream(seed=3)
    env.register_reference(stream, window_seconds=60)
    registered = [("prediction", p) for p, _ in stream.events(500)]
    env.drain(env=DEFAULT)  # tables created, nothing to read yet
    before = _database_bytes(env)

    env.send_sequence([*registered[:250], *_ghost_predictions(5000, 20), *registered[250:]])
    monitor = env.start_monitor("--until-idle", "3", env=DEFAULT)
    assert monitor.wait(timeout=300) == 0, env.log_of(monitor)
    log = Path(monitor.log_path).read_text()

    status_text = _status_json(env)
    status = json.loads(status_text)
    unregistered = status["unregistered"]
    assert unregistered["predictions"] == 100_000 and unregistered["labels"] == 0
    assert unregistered["kept_for_join"] == 0
    # An id folded into "(other)" and seen again in a later batch counts again: an upper bound.
    assert 5000 <= unregistered["model_ids"] <= 5100
    assert len(unregistered["most_frequent"]) == 10
    assert len(status_text) < 100_000, len(status_text)
    assert [(m["model_id"], m["registered"]) for m in status["models"]] == [("housing", True)]
    assert env.scalar("SELECT predictions FROM model_stats WHERE model_id = 'housing'") == 500
    assert env.scalar("SELECT count(*) FROM join_pending WHERE model_id LIKE 'ghost-%'") == 0
    assert env.scalar("SELECT count(*) FROM unregistered_models") == 101  # 100 tracked ids and "(other)"
    growth = _database_bytes(env) - before
    assert growth < 5 * 2**20, f"the database grew by {growth:,} bytes"
    warnings = [line for line in log.splitlines() if "is not registered" in line]
    assert len(warnings) == 5000
    assert len({line.split("'")[1] for line in warnings}) == 5000


def test_waiting_for_registration_is_capped_and_joins_once_registered(env):
    """With UNDERTOW_WAIT_FOR_REGISTRATION, unregistered events wait under a global cap, then join."""
    stream = SampleStream(seed=4, model_id="late")
    pairs = list(stream.events(300))
    waiting = {"UNDERTOW_WAIT_FOR_REGISTRATION": "true", "UNDERTOW_UNREGISTERED_MAX_PENDING": "120"}
    env.send_sequence([("prediction", p) for p, _ in pairs])
    env.drain(env=waiting)
    assert env.scalar("SELECT count(*) FROM join_pending WHERE model_id = 'late'") == 120
    assert env.scalar("SELECT kept FROM unregistered_models WHERE model_id = 'late'") == 120
    assert env.scalar("SELECT predictions FROM unregistered_models WHERE model_id = 'late'") == 300

    env.register_reference(stream, model_id="late", window_seconds=60)
    env.send_sequence([("label", label) for _, label in pairs])
    env.drain(env=waiting)
    assert env.scalar("SELECT joined FROM join_stats WHERE model_id = 'late'") == 120
    assert env.scalar("SELECT labels FROM model_stats WHERE model_id = 'late'") == 300
    # Registered now: no longer listed as unregistered, and marked as registered among the models.
    status = json.loads(_status_json(env))
    assert status["unregistered"]["model_ids"] == 0
    assert [(m["model_id"], m["registered"]) for m in status["models"]] == [("late", True)]


def test_waiting_events_of_a_silent_unregistered_id_expire_by_wall_clock(env):
    """An abandoned id's waiting events are deleted after UNDERTOW_UNREGISTERED_TTL_SECONDS of silence."""
    stream = SampleStream(seed=6)
    env.register_reference(stream, window_seconds=60)
    waiting = {"UNDERTOW_WAIT_FOR_REGISTRATION": "true", "UNDERTOW_UNREGISTERED_TTL_SECONDS": "2"}
    env.send_sequence(list(_ghost_predictions(3, 10)))
    env.drain(env=waiting)
    assert env.scalar("SELECT count(*) FROM join_pending WHERE model_id LIKE 'ghost-%'") == 30
    last_arrival = env.scalar("SELECT max(arrived_at) FROM join_stats WHERE model_id LIKE 'ghost-%'")
    wait_for(lambda: time.time() > last_arrival + 2.5, 10, "the ghosts' time to live to pass")

    env.send_sequence([("prediction", p) for p, _ in stream.events(10)])  # a batch runs the sweep
    env.drain(env=waiting)
    assert env.scalar("SELECT count(*) FROM join_pending WHERE model_id LIKE 'ghost-%'") == 0
    assert env.scalar("SELECT count(*) FROM join_stats WHERE model_id LIKE 'ghost-%'") == 0
    assert env.scalar("SELECT count(*) FROM model_stats WHERE model_id LIKE 'ghost-%'") == 0
    assert env.scalar("SELECT SUM(expired) FROM unregistered_models") == 30
    assert env.scalar("SELECT count(*) FROM join_pending WHERE model_id = 'housing'") == 10
