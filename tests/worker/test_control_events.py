"""Control events (retrain requests, model events) with and without a signing key: the monitor and the
trainer act only on those naming a registered model and existing versions, key or not; without a key
the monitor, the trainer and the server say so once at start-up; an empty or blank key is refused.
On the embedded broker and a real database, the services run as the CLI runs them."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.conftest import wait_for
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream
from undertow.worker.monitor.model_events import UNSIGNED_NOTICE
from undertow.worker.runtime import cloudevents, output_events
from undertow.worker.runtime.output_events import (
    AllData,
    ModelChange,
    ModelPromoted,
    ModelRejected,
    ModelRejection,
    RetrainRequest,
    RetrainRequested,
)
from undertow.worker.runtime.signing import signed_headers

pytestmark = pytest.mark.postgres

KEY = "s3cret"
# Requests are accepted but never trained: no labelled pairs, and no wait for more.
TRAINER_ENV = {"UNDERTOW_MIN_TRAIN_PAIRS": "500", "UNDERTOW_MAX_WAIT_SECONDS": "0", "UNDERTOW_WAIT_CHECK_SECONDS": "1"}
WHEN = cloudevents.rfc3339(1_793_000_000)


def _request(request_id: str, model_id: str = "housing", version: str = "1") -> bytes:
    return output_events.encode(
        RetrainRequested(
            id=request_id,
            subject=model_id,
            time=WHEN,
            data=RetrainRequest(
                request_id=request_id,
                model_id=model_id,
                model_version=version,
                reason="operator",
                alert_ids=["manual"],
                data_policy=AllData(),
            ),
        )
    )


def _promoted(event_id: str, model_id: str, version: str, previous: str | None) -> bytes:
    return output_events.encode(
        ModelPromoted(
            id=event_id,
            subject=model_id,
            time=WHEN,
            data=ModelChange(
                model_id=model_id,
                model_version=version,
                previous_version=previous,
                action="promoted",
                actor="trainer",
                reason="test",
                request_id=None,
                run_id=None,
                gate=None,
            ),
        )
    )


def _rejected(event_id: str, model_id: str, version: str, champion: str) -> bytes:
    return output_events.encode(
        ModelRejected(
            id=event_id,
            subject=model_id,
            time=WHEN,
            data=ModelRejection(
                model_id=model_id,
                model_version=version,
                champion_version=champion,
                reasons=["test"],
                request_id=None,
                run_id="run-x",
                gate={},
            ),
        )
    )


def _run_until_idle(env, command: str, extra_env: dict) -> str:
    """``undertow <command> --until-idle 2`` at INFO; its whole log once it exited 0."""
    start = env.start_trainer if command == "trainer" else env.start_monitor
    proc = start("--until-idle", "2", env=extra_env, log_level="INFO")
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{command} did not go idle: {env.log_of(proc)}") from None
    assert code == 0, env.log_of(proc)
    return env.log_of(proc, tail=1_000_000)


def _letters(env, topic: str, expected: int) -> list[tuple[str, str]]:
    """(error class, error message) of every dead letter of ``topic``."""
    records = env.read_all(env.topics.dead_letter(topic), expected, timeout=10)
    return sorted(
        (dict(r.headers)["undertow.error.class"].decode(), dict(r.headers)["undertow.error.message"].decode())
        for r in records
    )


def _no_key() -> dict:
    """The services' environment without a key, whatever the environment running the tests has."""
    assert "UNDERTOW_SIGNING_KEY" not in os.environ, "these tests need UNDERTOW_SIGNING_KEY unset"
    return {}


def test_without_a_key_retrain_requests_for_unknown_models_or_versions_are_dead_lettered_and_never_run(env):
    env.register_reference(SampleStream(seed=2))  # housing version 1, the champion
    # One partition (same key), so the known request shares a batch with the unknown ones.
    for value in (_request("r-ghost", model_id="ghost"), _request("r-v99", version="99"), _request("r-good")):
        env.send(env.topics.retrain, value, key=b"housing")
    env.flush()
    log = _run_until_idle(env, "trainer", {**_no_key(), **TRAINER_ENV})
    assert _letters(env, env.topics.retrain, 2) == [
        ("InvalidEvent", "retrain request 'r-ghost' names model 'ghost', which is not registered: not acted on"),
        (
            "InvalidEvent",
            "retrain request 'r-v99' names version '99' of model 'housing', which does not exist: not acted on",
        ),
    ]
    with env.engine.connect() as conn:
        accepted = [
            r for (r,) in conn.exec_driver_sql("SELECT request_id FROM training_runs WHERE request_id IS NOT NULL")
        ]
    assert accepted == ["r-good"]
    assert env.scalar("SELECT count(*) FROM model_versions") == 1
    assert [p for p in env.artifacts_dir.rglob("*") if p.is_file()] == []  # nothing trained, nothing stored
    assert log.count(UNSIGNED_NOTICE) == 1, log


def test_without_a_key_model_events_for_unknown_models_or_versions_are_dead_lettered_not_logged(env):
    env.register_reference(SampleStream(seed=2))
    events = [
        _promoted("p-v99", "housing", "99", "1"),
        _promoted("p-ghost", "ghost", "1", None),
        _rejected("r-v42", "housing", "42", "1"),
        _rejected("r-champion-99", "housing", "1", "99"),
        _promoted("p-v1", "housing", "1", None),
    ]  # the one known event
    for value in events:
        env.send(env.topics.models, value, key=b"housing")
    sent = env.send_events(list(SampleStream(seed=3).events(300)))
    log = _run_until_idle(env, "monitor", _no_key())
    assert _letters(env, env.topics.models, 4) == sorted(
        [
            (
                "InvalidEvent",
                "undertow.model.promoted 'p-v99' names version '99' of model 'housing', which does not "
                "exist: not acted on",
            ),
            (
                "InvalidEvent",
                "undertow.model.promoted 'p-ghost' names model 'ghost', which is not registered: not acted on",
            ),
            (
                "InvalidEvent",
                "undertow.model.rejected 'r-v42' names version '42' of model 'housing', which does not "
                "exist: not acted on",
            ),
            (
                "InvalidEvent",
                "undertow.model.rejected 'r-champion-99' names version '99' of model 'housing', which "
                "does not exist: not acted on",
            ),
        ]
    )
    changes = [line for line in log.splitlines() if "champion is now" in line or "rejected; champion" in line]
    assert len(changes) == 1 and "model housing: champion is now version 1 " in changes[0], changes
    # The rest of the batches the unknown events were in committed: every prediction and label counted.
    assert env.counts() == (sent // 2, sent // 2, 0)
    assert log.count(UNSIGNED_NOTICE) == 1, log


def test_with_a_key_a_signed_event_for_an_unknown_version_is_still_dead_lettered_and_nothing_is_said(env):
    env.register_reference(SampleStream(seed=2))
    key = {"UNDERTOW_SIGNING_KEY": KEY}
    for topic, value in (
        (env.topics.retrain, _request("r-v7", version="7")),
        (env.topics.models, _promoted("p-v7", "housing", "7", "1")),
    ):
        env.send(topic, value, key=b"housing", headers=signed_headers([], value, SecretStr(KEY)))
    env.flush()
    trainer_log = _run_until_idle(env, "trainer", {**key, **TRAINER_ENV})
    monitor_log = _run_until_idle(env, "monitor", key)
    assert _letters(env, env.topics.retrain, 1) == [
        (
            "InvalidEvent",
            "retrain request 'r-v7' names version '7' of model 'housing', which does not exist: not acted on",
        )
    ]
    assert _letters(env, env.topics.models, 1) == [
        (
            "InvalidEvent",
            "undertow.model.promoted 'p-v7' names version '7' of model 'housing', which does not exist: not acted on",
        )
    ]
    assert env.scalar("SELECT count(*) FROM training_runs WHERE request_id IS NOT NULL") == 0
    assert "champion is now" not in monitor_log
    assert UNSIGNED_NOTICE not in trainer_log and UNSIGNED_NOTICE not in monitor_log


@pytest.mark.parametrize("signing_key", [None, KEY])
def test_serve_says_once_at_start_up_when_control_events_are_unsigned(env, signing_key):
    from tests.worker.test_trainer import _train_v1

    _train_v1(env)  # serve exits 2 unless it has a champion with an artifact to serve
    extra = _no_key() if signing_key is None else {"UNDERTOW_SIGNING_KEY": signing_key}
    proc = env.start_service("serve", "--model-id", "housing", "--port", str(free_port()), env=extra, log_level="INFO")
    try:
        wait_for(
            lambda: "Application startup complete" in env.log_of(proc, tail=100_000) or proc.poll() is not None,
            60,
            "the server to start",
        )
        assert proc.poll() is None, env.log_of(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert env.log_of(proc, tail=100_000).count(UNSIGNED_NOTICE) == (1 if signing_key is None else 0)


@pytest.mark.parametrize("value", ["", "   "])
@pytest.mark.parametrize("command", [["monitor"], ["trainer"], ["serve", "--model-id", "housing"]])
def test_an_empty_or_blank_signing_key_is_refused_at_start_up_in_one_line(tmp_path, command, value):
    database = tmp_path / "undertow.db"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}
    # The broker address is closed: a service that got as far as connecting would hang or fail otherwise.
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("undertow")),
            *command,
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--db-url",
            f"sqlite:///{database}",
        ],
        cwd=tmp_path,
        env={**environ, "UNDERTOW_SIGNING_KEY": value},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("undertow: error: ")
    assert "UNDERTOW_SIGNING_KEY" in done.stderr and "empty or blank" in done.stderr
    # Refused before touching anything: no database file, and the message is about the key, not the closed
    # broker address (a service that got as far as connecting would say that instead, or hang until timeout).
    assert not database.exists()
