"""``undertow notify`` end to end: the real monitor's alerts on the embedded broker, ``undertow notify`` as a
subprocess, and a real HTTP receiver on 127.0.0.1 that fails, times out and throttles as scripted.

The receiver takes a message (as a real one stores it) when it decides to answer
2xx, before the answer goes out: a request it failed, throttled or let time out
was not taken, whatever it saw of it; one taken whose answer never reached
notify is taken again when notify sends it again (a duplicate).
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import text

from tests.conftest import wait_for
from undertow.worker.dev.sample import SampleStream
from undertow.worker.runtime import output_events

pytestmark = pytest.mark.postgres

# Small backoff and timeouts so that a test's retries take fractions of a second.
FAST = {
    "UNDERTOW_NOTIFY_TIMEOUT_SECONDS": "0.5",
    "UNDERTOW_NOTIFY_BACKOFF_INITIAL_SECONDS": "0.05",
    "UNDERTOW_NOTIFY_BACKOFF_MAX_SECONDS": "0.2",
}


@dataclass
class Seen:
    """One request as the receiver saw it, and what it answered."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # the answer decided (the client may not have waited for it)

    @property
    def ce_id(self) -> str:
        return self.headers.get("ce-id", "")

    def json(self):
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (longer than the client's timeout: a timeout)
    body: bytes = b"ok"
    reached: threading.Event | None = None  # set once this request is taken, before the answer goes out
    hold: threading.Event | None = None  # the answer goes out once this is set


class Receiver:
    """A threaded HTTP server that answers each POST by ``script(n)`` (n: the request's number from 0)."""

    def __init__(self, script: Callable[[int, Seen], Answer] | None = None):
        self.script = script or (lambda n, seen: Answer())
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                seen = Seen(time.time(), self.path, {k.lower(): v for k, v in self.headers.items()}, body, 0)
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(seen)
                answer = receiver.script(n, seen)
                seen.status = answer.status
                if answer.reached is not None:
                    answer.reached.set()
                if answer.hold is not None:
                    answer.hold.wait(60)
                if answer.delay:
                    time.sleep(answer.delay)  # the scripted slow receiver, not synchronisation
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client is gone

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def accepted(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.requests if 200 <= s.status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def receivers():
    """Yields a maker of receivers; closes them all after (the ``receiver`` fixtures of the notify tests)."""
    made: list[Receiver] = []

    def make(script=None) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def receiver():
    yield from receivers()


def alert_ids(env) -> list[str]:
    with env.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT id FROM alerts ORDER BY event_ts, id"))]


def drifting_alerts(env) -> list[str]:
    """The monitor's alerts of a stream that drifts and comes back: their ids, in the topic's order."""
    stream = SampleStream(seed=41)
    env.register_reference(stream)
    env.send_events(stream.events(2000), labels=False)
    env.send_events(stream.events(3000, start_index=2000, shift=2.0, new_region="atlantis"), labels=False)
    env.send_events(stream.events(3000, start_index=5000), labels=False)
    env.drain(idle=2.0)
    ids = alert_ids(env)
    published = env.read_all(env.topics.alerts, len(ids))
    ordered = [json.loads(r.value)["id"] for r in sorted(published, key=lambda r: (r.partition, r.offset))]
    assert sorted(ordered) == sorted(ids) and len(ids) >= 6, ids
    return ordered


def publish(env, events) -> list[str]:
    """Recorded events straight onto their topic, as the monitor and the registry publish them."""
    for event in events:
        topic = env.topics.models if event.type.startswith("undertow.model.") else env.topics.alerts
        env.send(topic, output_events.encode(event), key=event.subject.encode(), headers=output_events.HEADERS)
    env.flush()
    return [e.id for e in events]


def start_notify(env, *args: str, extra_env: dict | None = None, log_level: str = "INFO") -> subprocess.Popen:
    return env.start_service(
        "notify", *args, env={**FAST, **(extra_env or {})}, group=env.group_id + "-notify", log_level=log_level
    )


def wait_exit(env, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"notify did not finish: {env.log_of(proc)}") from None
    assert proc.returncode == 0, env.log_of(proc)


def in_process(*args: str) -> subprocess.CompletedProcess:
    """``undertow ARGS`` run in this process (a second each saved on start-up), its output captured."""
    from undertow.worker.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--log-level", "WARNING", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return in_process(*args, "--db-url", env.db_url)


def test_every_alert_arrives_through_failures_a_timeout_a_429_and_a_sigkill(env, receiver):
    """The issue's acceptance: the first three attempts fail, the fourth times out, the fifth is throttled with
    Retry-After; notify is SIGKILLed after the receiver took a message and before its answer got out. Every
    alert arrives, in the topic's order; the one duplicate arrives after the kill with its first copy's ce-id."""
    ordered = drifting_alerts(env)
    taken_then_killed, killed = threading.Event(), threading.Event()
    script = {
        0: Answer(500),
        1: Answer(502),
        2: Answer(503),
        3: Answer(503, delay=1.5),  # answered after the client's 0.5 s timeout
        4: Answer(429, {"Retry-After": "1"}),
        7: Answer(reached=taken_then_killed, hold=killed),  # the third alert: taken, its answer held back
    }
    hook = receiver(lambda n, seen: script.get(n, Answer()))
    proc = start_notify(env, "--webhook", hook.url)
    wait_for(taken_then_killed.is_set, 60, "the third alert taken")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    killed.set()
    wait_exit(env, start_notify(env, "--webhook", hook.url, "--until-idle", "2"))

    taken = hook.accepted()
    ids = [s.ce_id for s in taken]
    assert set(ids) == set(ordered)  # none lost
    assert [i for n, i in enumerate(ids) if i not in ids[:n]] == ordered  # in order
    assert ids == [*ordered[:3], ordered[2], *ordered[3:]]  # the one duplicate: the one in flight at the kill
    assert taken[3].at >= killed_at and taken[3].body == taken[2].body
    for seen in taken:
        assert seen.json()["id"] == seen.ce_id and seen.headers["content-type"] == "application/cloudevents+json"
    first = hook.requests
    assert [s.status for s in first[:6]] == [500, 502, 503, 503, 429, 200]
    assert len({s.ce_id for s in first[:6]}) == 1  # the failures were the same delivery, retried
    assert first[5].at - first[4].at >= 0.95  # Retry-After: 1 honoured (the backoff alone is at most 0.2 s)
    listed = cli(env, "notify", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_a_rule_file_routes_to_several_sinks_and_slack_gets_one_digest_per_model(env, receiver, tmp_path):
    from tests.worker.test_notify_sinks import recorded_alerts

    slack, hook = receiver(), receiver()
    events = recorded_alerts()
    config = tmp_path / "notify.yaml"
    config.write_text(
        "sinks:\n"
        "  - name: team-slack\n"
        "    slack: {url_env: TEST_SLACK_URL, group_interval_seconds: 1}\n"
        "  - name: pager\n"
        "    webhook: {url: '${TEST_HOOK_URL}/pager'}\n"
        "rules:\n"
        "  - sinks: [team-slack]\n"
        "  - sinks: [pager]\n"
        "    type: drift.concept\n"
        "    severity: [significant]\n"
    )
    ids = publish(env, events)
    proc = start_notify(
        env,
        "--config",
        str(config),
        "--until-idle",
        "2",
        extra_env={"TEST_SLACK_URL": slack.url, "TEST_HOOK_URL": hook.url},
    )
    wait_exit(env, proc)
    (digest,) = slack.accepted()
    message = digest.json()
    assert message["blocks"][0]["text"]["text"] == f"{len(ids)} Undertow notices for housing"
    concept = [e.id for e in events if e.type == "undertow.drift.concept" and e.data.severity == "significant"]
    assert [s.ce_id for s in hook.accepted()] == concept and hook.accepted()[0].path == "/pager"


def test_dead_letters_are_listed_counted_and_sent_again_by_retry(env, receiver):
    from tests.worker.test_notify_sinks import recorded_alerts

    broken = {"on": True}
    hook = receiver(lambda n, seen: Answer(500) if broken["on"] else Answer())
    ids = publish(env, recorded_alerts()[:3])
    port = _free_port()
    proc = start_notify(
        env,
        "--webhook",
        hook.url,
        "--metrics-port",
        str(port),
        extra_env={"UNDERTOW_NOTIFY_MAX_ATTEMPTS": "2"},
    )

    def dead():
        done = cli(env, "notify", "list", "--json")
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        return len(rows) == 3 and all(r["status"] == "dead" for r in rows) and rows

    rows = wait_for(dead, 60, "three dead letters")
    assert [r["ce_id"] for r in rows] == ids and all(r["attempts"] == 2 and "HTTP 500" in r["last_error"] for r in rows)
    text_list = cli(env, "notify", "list").stdout
    assert text_list.count("dead-lettered at") == 3 and "last error: HTTP 500" in text_list
    metrics = wait_for(lambda: _scrape(port, 'undertow_notify_dead_letters{sink="webhook"} 3.0'), 20, "the gauge")
    assert 'undertow_notify_deliveries_total{outcome="failed_attempt",sink="webhook"} 6.0' in metrics
    assert 'undertow_notify_deliveries_total{outcome="dead_lettered",sink="webhook"} 3.0' in metrics
    assert 'undertow_notify_pending{sink="webhook"} 0.0' in metrics
    broken["on"] = False
    retried = cli(env, "notify", "retry", "--id", str(rows[1]["id"]))
    assert retried.returncode == 0 and "pending again" in retried.stdout
    wait_for(lambda: [s.ce_id for s in hook.accepted()] == [ids[1]], 30, "the retried delivery")
    assert cli(env, "notify", "retry", "--all").stdout.count("pending again") == 2
    wait_for(lambda: len(hook.accepted()) == 3, 30, "every delivery")
    assert [s.ce_id for s in hook.accepted()] == [ids[1], ids[0], ids[2]]
    assert cli(env, "notify", "list").stdout.strip() == "no notification waiting, backing off or dead-lettered"
    again = cli(env, "notify", "retry", "--id", str(rows[0]["id"]))
    assert again.returncode == 2 and "delivered, not dead-lettered" in again.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, env.log_of(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, wanted: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            page = response.read().decode()
    except OSError:
        return None
    return page if wanted in page else None
