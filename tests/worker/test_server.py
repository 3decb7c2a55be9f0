"""The serving endpoint end to end: `undertow serve` as a user runs it, on the embedded broker and a real
database; predictions become events the monitor joins with posted labels, bad requests are refused
saying why, promotions swap the version under load without a failed request, a tampered artifact is
never served, and a paused broker costs events (counted), not answers."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, wait_for
from tests.worker.test_trainer import _cli, _train_v1
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream


class Server:
    def __init__(self, env, bootstrap: str | None = None, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = env.cli_args()
        if bootstrap is not None:
            args[args.index("--bootstrap-servers") + 1] = bootstrap
        log_file = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "undertow.worker.cli",
                "--log-level",
                "INFO",
                "serve",
                "--model-id",
                "housing",
                "--port",
                str(self.port),
                *args,
            ],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(extra_env or {})},
        )
        self.log_path = log_file.name
        log_file.close()
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_for(self._ready, 60, "the server to load the champion")

    def _ready(self):
        assert self.proc.poll() is None, self.log()
        try:
            return self.client.get("/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-4000:]

    def metric(self, name: str, **labels) -> float:
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{wanted} not exposed")

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status says SIGTERM.
        assert self.proc.wait(timeout=30) in (0, -signal.SIGTERM), self.log()
        assert "Traceback" not in self.log()


def _row(i: int = 0) -> dict:
    stream = SampleStream(seed=11)
    ((prediction, _),) = list(stream.events(1, start_index=i))
    return prediction["features"]


def test_predictions_become_events_and_posted_labels_are_joined_by_the_monitor(env):
    _train_v1(env)
    server = Server(env)
    try:
        one = server.client.post("/predict", json={"features": _row()})
        assert one.status_code == 200, one.text
        answer = one.json()
        assert answer["model_version"] == "1" and len(answer["predictions"]) == 1
        assert isinstance(answer["predictions"][0]["prediction"], float)
        batch = server.client.post("/predict", json={"instances": [_row(i) for i in range(100)]})
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 100
        ids = [answer["predictions"][0]["event_id"]] + [p["event_id"] for p in batch.json()["predictions"]]
        assert len(set(ids)) == 101

        events = [json.loads(r.value) for r in env.read_all(env.topics.predictions, 101)]
        assert sorted(e["event_id"] for e in events) == sorted(ids)
        first = next(e for e in events if e["event_id"] == ids[0])
        assert first["model_version"] == "1" and first["features"] == _row()
        assert first["prediction"] == answer["predictions"][0]["prediction"]

        posted = server.client.post("/labels", json={"labels": [{"event_id": i, "label": 2.5} for i in ids[:10]]})
        assert posted.status_code == 202 and posted.json() == {"accepted": 10}
        env.read_all(env.topics.labels, 10)
        env.drain(idle=2.0)
        assert env.scalar("SELECT count(*) FROM labelled_pairs") == 10
        assert env.scalar("SELECT predictions FROM model_stats") == 101

        wait_for(
            lambda: server.metric("undertow_server_events_emitted_total", kind="prediction") == 101,
            10,
            "the broker to acknowledge every event",
        )
        assert server.metric("undertow_server_predictions_total") == 101
        assert server.metric("undertow_server_requests_total", endpoint="/predict", status="200") == 2
        assert server.metric("undertow_server_events_dropped_total", reason="queue_full") == 0
        assert server.client.get("/health/live").json() == {"status": "alive"}
        assert "/predict" in server.client.get("/openapi.json").json()["paths"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"features": {**_row(), "unknown_feature": 1.0}}, 422, "unknown_feature"),
        ({"features": {k: v for k, v in _row().items() if k != "x1"}}, 422, "x1"),
        ({"features": {**_row(), "x2": "3.5"}}, 422, "x2"),
        (b"", 422, "empty body"),
        (b"{not json", 422, "json"),
        ({"instances": []}, 422, "instances"),
        (b"x" * (10 * 1024 * 1024), 413, "at most"),
    ],
)
def test_bad_requests_get_4xx_that_say_what_is_wrong_and_the_server_keeps_serving(env, body, status, says, served):
    server = served(env)
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = server.client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert says.lower() in response.text.lower()
    assert server.client.post("/predict", json={"features": _row()}).status_code == 200


@pytest.fixture(scope="module")
def served(request):
    """One server for the bad-request cases (they change nothing): trained and started once."""
    holder = {}

    def get(env):
        if "server" not in holder:
            _train_v1(env)
            holder["server"] = Server(env)
        return holder["server"]

    yield get
    if "server" in holder:
        holder["server"].stop()


def _load(server, stop: threading.Event, answers: list, failures: list) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            try:
                response = client.post("/predict", json={"features": _row(i % 50)})
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    answers.append((time.monotonic(), response.json()["model_version"]))
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            i += 1


def test_a_promotion_under_load_swaps_versions_without_a_failed_request_and_a_tampered_one_is_refused(env):
    from sqlalchemy import text

    _train_v1(env)
    _train_v1(env, seed=3)  # version 2, champion; roll back so that 1 serves and 2 waits
    assert _cli(env, "models", "rollback", "--model-id", "housing", "--reason", "test").returncode == 0
    # The registry is checked only every hour here: the swap must come from the model event.
    server = Server(env, extra_env={"UNDERTOW_REGISTRY_CHECK_SECONDS": "3600"})
    stop, answers, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_load, args=(server, stop, answers, failures)) for _ in range(4)]
    try:
        for c in clients:
            c.start()
        wait_for(lambda: len(answers) >= 40, 30, "traffic on version 1")
        promoted = _cli(env, "models", "promote", "--model-id", "housing", "--version", "2", "--reason", "test")
        assert promoted.returncode == 0 and "published" in promoted.stdout, promoted.stdout + promoted.stderr
        promoted_at = time.monotonic()
        wait_for(lambda: any(v == "2" for _, v in answers), 30, "answers from version 2")
        swapped_at = min(t for t, v in answers if v == "2")
        wait_for(lambda: sum(t > swapped_at for t, _ in answers) >= 200, 30, "traffic after the swap")
    finally:
        stop.set()
        for c in clients:
            c.join(15)
    try:
        assert failures == []
        assert {v for _, v in answers} == {"1", "2"}
        assert all(v == "2" for t, v in answers if t > swapped_at + 0.5)  # in-flight answers of 1 finish first
        assert swapped_at - promoted_at < 10
        assert server.metric("undertow_server_model_swaps_total", outcome="loaded") == 2

        # Version 3 with an artifact changed after registration: never loaded, version 2 keeps serving.
        _train_v1(env, seed=4)
        assert _cli(env, "models", "rollback", "--model-id", "housing", "--reason", "test").returncode == 0
        with env.engine.connect() as conn:
            path = conn.execute(text("SELECT artifact_path FROM model_versions WHERE version = '3'")).scalar()
        Path(path).write_bytes(Path(path).read_bytes() + b"tampered")
        assert (
            _cli(env, "models", "promote", "--model-id", "housing", "--version", "3", "--reason", "test").returncode
            == 0
        )
        wait_for(
            lambda: server.metric("undertow_server_model_swaps_total", outcome="failed") == 1,
            30,
            "the failed load to be counted",
        )
        assert server.client.post("/predict", json={"features": _row()}).json()["model_version"] == "2"
        assert "does not match the registry" in server.log()
        assert server.client.get("/health/ready").json()["model_version"] == "2"
    finally:
        server.stop()


def test_with_the_broker_paused_predictions_are_answered_and_drops_are_counted_then_events_flow_again(env):
    from undertow.worker.dev.broker import EmbeddedBroker
    from undertow.worker.runtime.settings import Settings
    from undertow.worker.runtime.topics import Topics, ensure_topics
    from undertow.worker.runtime.transport import make_admin

    _train_v1(env)
    with EmbeddedBroker() as own:  # paused below: the shared broker stays out of it
        admin = make_admin(Settings(kafka_bootstrap_servers=own.bootstrap_servers))
        ensure_topics(admin, Topics(env.prefix), 1)
        admin.close()
        server = Server(
            env,
            bootstrap=own.bootstrap_servers,
            extra_env={
                "UNDERTOW_EVENT_QUEUE_SIZE": "50",
                "UNDERTOW_PRODUCER_MAX_PENDING": "100",
                "UNDERTOW_PRODUCER_MAX_BLOCK_MS": "200",
            },
        )
        try:

            def timed(n: int) -> list[float]:
                took = []
                for i in range(n):
                    started = time.perf_counter()
                    assert server.client.post("/predict", json={"features": _row(i % 50)}).status_code == 200
                    took.append(time.perf_counter() - started)
                return sorted(took)

            before = timed(100)
            wait_for(
                lambda: server.metric("undertow_server_events_emitted_total", kind="prediction") == 100,
                20,
                "events to flow",
            )
            os.kill(own.pid, signal.SIGSTOP)
            try:
                paused = timed(300)  # beyond the queue (50) and the unacknowledged records (100)
                wait_for(
                    lambda: (
                        sum(
                            server.metric("undertow_server_events_dropped_total", reason=r)
                            for r in ("queue_full", "send_failed")
                        )
                        > 0
                    ),
                    20,
                    "drops to be counted",
                )
            finally:
                os.kill(own.pid, signal.SIGCONT)
            # The answers did not wait for the broker: the median stays at its usual order.
            assert paused[len(paused) // 2] < max(5 * before[len(before) // 2], 0.05)
            emitted = server.metric("undertow_server_events_emitted_total", kind="prediction")
            timed(50)
            wait_for(
                lambda: server.metric("undertow_server_events_emitted_total", kind="prediction") >= emitted + 50,
                60,
                "events to flow again after the pause",
            )
            assert "dropped" in server.log()
        finally:
            server.stop()
