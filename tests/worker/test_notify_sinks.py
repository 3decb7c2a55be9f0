"""The sinks of ``undertow notify`` against their documented formats: a real Alertmanager (Debian's
``prometheus-alertmanager``) fed through the sink, Slack's incoming-webhook message structure, the webhook's
signature verified as docs/notify.md tells a receiver to; the config's one-line errors, and ``notify test``."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from tests.worker.test_notify import Answer, in_process, receivers
from undertow.errors import ConfigError
from undertow.worker.notify.attempt import Backoff, retry_after, send
from undertow.worker.notify.config import parse_config
from undertow.worker.notify.notice import NoContext
from undertow.worker.notify.request import Message, build
from undertow.worker.notify.routing import Router
from undertow.worker.runtime import cloudevents, output_events
from undertow.worker.runtime.output_events import ModelChange, ModelPromoted

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden_monitor.json"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@pytest.fixture
def receiver():
    yield from receivers()


def recorded_alerts() -> list:
    """The alerts the monitor raised on the golden drifting stream (data, prediction and concept drift, one
    episode ended), in time order."""
    alerts = [output_events.parse_event(json.dumps(a)) for a in json.loads(GOLDEN.read_text())["alerts"]]
    return sorted(alerts, key=lambda a: (a.time, a.id))


def promoted() -> ModelPromoted:
    return ModelPromoted(
        id="promo-2",
        subject="housing",
        time="2026-11-01T03:00:00.000Z",
        data=ModelChange(
            model_id="housing",
            model_version="2",
            previous_version="1",
            action="promoted",
            actor="trainer",
            reason="gate passed",
            request_id=None,
            run_id="run-1",
            gate=None,
        ),
    )


def message(*events, digest: bool = False) -> Message:
    raw = [output_events.encode(e).decode() for e in events]
    return Message(events[0].id if len(events) == 1 else "digest-1", raw, digest=digest)


def _post(sink, msg: Message, now: float | None = None):
    import httpx

    request = build(sink, msg, NoContext(), now or time.time())
    with httpx.Client() as client:
        return send(client, request, 5.0)


# --- Alertmanager: the real one ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path, receiver):
    if not Path(ALERTMANAGER).exists():
        pytest.skip("needs Debian's prometheus-alertmanager")
    hook = receiver()
    (tmp_path / "am.yml").write_text(
        "route:\n  receiver: hook\n  group_by: [alertname, model_id, feature, severity]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{hook.url}/am'\n        send_resolved: true\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "am.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/api/v2/status") is not None or proc.poll() is not None, 30, "alertmanager")
        assert proc.poll() is None, (tmp_path / "am.log").read_text()
        yield url, hook
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read() or b"null")
    except (OSError, ValueError):
        return None


def test_alertmanager_takes_the_alerts_and_an_ended_episode_resolves_its_alert(alertmanager):
    url, hook = alertmanager
    sink = parse_config(
        {"sinks": [{"name": "am", "alertmanager": {"url": url, "labels": {"env": "test"}}}]}, "t"
    ).sinks[0]
    region = [a for a in recorded_alerts() if getattr(a.data, "feature", None) == "region"]
    started = next(a for a in region if a.data.episode == "started")
    ended = next(a for a in region if a.data.episode == "ended")
    concept = next(a for a in recorded_alerts() if a.type == "undertow.drift.concept")
    assert _post(sink, message(started, concept)).delivered

    def firing():
        alerts = _get(f"{url}/api/v2/alerts") or []
        return len(alerts) == 2 and alerts

    alerts = {a["labels"]["alertname"]: a for a in wait_for(firing, 20, "two alerts in Alertmanager")}
    data = alerts["UndertowDataDrift"]
    assert data["labels"] == {
        "alertname": "UndertowDataDrift",
        "model_id": "housing",
        "model_version": "1",
        "type": "undertow.drift.data",
        "feature": "region",
        "severity": "significant",
        "env": "test",
    }
    assert data["status"]["state"] == "active" and data["startsAt"].startswith(started.time[:19])
    assert "PSI of the window" in data["annotations"]["value"] and data["annotations"]["event_id"] == started.id
    assert alerts["UndertowConceptDrift"]["labels"]["severity"] == "significant"
    wait_for(lambda: any(s.json()["status"] == "firing" for s in hook.accepted()), 20, "the firing notification")

    assert _post(sink, message(ended)).delivered

    def resolved():
        alerts = _get(f"{url}/api/v2/alerts") or []
        return [a["labels"]["alertname"] for a in alerts] == ["UndertowConceptDrift"]

    wait_for(resolved, 20, "the data-drift alert resolved (gone from the active alerts)")
    note = wait_for(
        lambda: next((s.json() for s in hook.accepted() if s.json()["status"] == "resolved"), None),
        20,
        "Alertmanager's resolved notification",
    )
    (gone,) = note["alerts"]
    assert gone["labels"]["feature"] == "region" and gone["status"] == "resolved"
    assert gone["endsAt"].startswith(ended.time[:19])  # the episode's end, in the event's time


def test_an_escalation_fires_the_higher_severity_and_resolves_the_lower():
    from undertow.worker.notify import alertmanager as am

    sink = parse_config({"sinks": [{"name": "am", "alertmanager": {"url": "http://am:9093"}}]}, "t").sinks[0]
    started = next(a for a in recorded_alerts() if a.data.episode == "started" and a.type == "undertow.drift.data")
    escalated = started.model_copy(update={"data": started.data.model_copy(update={"episode": "escalated"})})
    now = 1.9e9
    fired, lower = json.loads(build(sink, message(escalated), NoContext(), now).body)
    assert fired["labels"]["severity"] == "significant" and lower["labels"]["severity"] == "moderate"
    assert fired["endsAt"] == cloudevents.rfc3339(now + 86_400)  # firing for resolve_after_seconds
    assert lower["endsAt"] == cloudevents.rfc3339(now)  # resolved now
    assert am.ALERT_NAMES[escalated.type] == fired["labels"]["alertname"]
    # A model event is news, not a condition: it never goes to Alertmanager.
    config = parse_config({"sinks": [{"name": "am", "alertmanager": {"url": "http://am"}}]}, "t")
    assert Router(config).sinks_for(promoted()) == []


# --- Slack: the documented incoming-webhook structure ---

TEXT_TYPES = {"plain_text", "mrkdwn"}


def check_slack_message(message: dict) -> None:
    """Slack's incoming-webhook message (api.slack.com/messaging/webhooks, Block Kit reference): ``text`` is
    required with blocks (the notification's fallback); at most 50 blocks; a header holds plain_text of at
    most 150 characters; a section holds a text of at most 3000 or up to 10 fields of at most 2000 each;
    a context holds up to 10 text elements."""
    assert set(message) <= {"text", "blocks"} and isinstance(message["text"], str) and message["text"].strip()
    blocks = message["blocks"]
    assert isinstance(blocks, list) and 0 < len(blocks) <= 50
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text" and 0 < len(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] in TEXT_TYPES and 0 < len(block["text"]["text"]) <= 3000
            for item in block.get("fields", []):
                assert item["type"] in TEXT_TYPES and 0 < len(item["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(e["type"] in TEXT_TYPES and e["text"] for e in block["elements"])
        else:
            raise AssertionError(f"unexpected block type {kind}")


def test_slack_messages_follow_the_incoming_webhook_format(receiver):
    hook = receiver()
    sink = parse_config({"sinks": [{"name": "team", "slack": {"url": hook.url}}]}, "t").sinks[0]
    events = recorded_alerts()
    for event in [*events, promoted()]:
        assert _post(sink, message(event)).delivered
    assert _post(sink, message(*events * 10, digest=True)).delivered  # 50 notices: cut to Slack's limits
    taken = hook.accepted()
    for seen in taken:
        assert seen.headers["content-type"].startswith("application/json")
        check_slack_message(seen.json())
    concept = taken[[e.type for e in events].index("undertow.drift.concept")].json()
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in concept["blocks"][1]["fields"]}
    assert set(fields) == {"*Model*", "*What*", "*Severity*", "*Value*", "*Since*"}
    assert fields["*Model*"] == "`housing` v1" and fields["*Severity*"] == "significant (started)"
    assert "against" in fields["*Value*"] and fields["*Since*"].startswith("2026-11-01T")
    assert "retrain" in json.dumps(concept["blocks"][2]).lower()
    promotion = taken[len(events)].json()
    assert promotion["blocks"][0]["text"]["text"] == "housing promoted: version 2"
    digest = taken[-1].json()
    assert digest["blocks"][0]["text"]["text"] == f"{len(events) * 10} Undertow notices for housing"
    assert digest["blocks"][-2]["text"]["text"] == f"…and {len(events) * 10 - 20} more"


def test_slack_text_cannot_ping_a_channel():
    from undertow.worker.notify.notice import notice
    from undertow.worker.notify.slack import single

    event = next(a for a in recorded_alerts() if a.type == "undertow.drift.data")
    hostile = event.model_copy(update={"data": event.data.model_copy(update={"feature": "<!channel> & <@U1>"})})
    text = json.dumps(single(notice(hostile, NoContext()))["blocks"])
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp; &lt;@U1&gt;" in text


# --- the webhook: structured CloudEvents, signed ---


def verify_signature(secret: str, headers: dict, body: bytes, tolerance: float = 300) -> bool:
    """What docs/notify.md tells a receiver to do (the same code)."""
    timestamp = headers["x-undertow-timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected, headers["x-undertow-signature"])


def test_a_signed_webhook_is_verifiable_and_a_digest_is_a_cloudevents_batch(receiver):
    hook = receiver()
    config = {"sinks": [{"name": "hook", "webhook": {"url": hook.url, "secret_env": "HOOK_SECRET"}}]}
    sink = parse_config(config, "t", environ={"HOOK_SECRET": "s3cret"}).sinks[0]
    events = recorded_alerts()
    import httpx

    from undertow.worker.notify import webhook

    for msg in (message(events[0]), message(*events, digest=True)):
        request = webhook.signed(build(sink, msg, NoContext(), time.time()), sink.webhook.secret, time.time())
        with httpx.Client() as client:
            assert send(client, request, 5.0).delivered
    single, batch = hook.accepted()
    assert verify_signature("s3cret", single.headers, single.body)
    assert not verify_signature("wrong", single.headers, single.body)
    assert not verify_signature("s3cret", single.headers, single.body + b" ")
    assert single.body == output_events.encode(events[0]) and single.headers["ce-id"] == events[0].id
    assert single.headers["content-type"] == "application/cloudevents+json"
    assert batch.headers["content-type"] == "application/cloudevents-batch+json"
    assert [e["id"] for e in batch.json()] == [e.id for e in events] and batch.headers["ce-id"] == "digest-1"
    assert verify_signature("s3cret", batch.headers, batch.body)


def test_refusals_are_classified_and_retry_after_is_read(receiver):
    answers = iter(
        [Answer(404, body=b"no_service"), Answer(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), Answer(503)]
    )
    hook = receiver(lambda n, seen: next(answers))
    sink = parse_config({"sinks": [{"name": "h", "webhook": {"url": hook.url}}]}, "t").sinks[0]
    event = message(recorded_alerts()[0])
    gone, throttled, down = (_post(sink, event) for _ in range(3))
    assert (gone.retryable, gone.error) == (False, "HTTP 404 Not Found: no_service")
    assert throttled.retryable and throttled.retry_after == 0.0  # a date in the past: at once
    assert down.retryable and down.status == 503
    assert retry_after("7", 0.0) == 7.0
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.delay(n) for n in range(1, 7)]
    assert all(0.5 <= d <= 1 for d in delays[:1]) and all(4 <= d <= 8 for d in delays[3:])
    assert backoff.delay(1, asked=30.0) == 30.0


# --- the config: one line per mistake ---


@pytest.mark.parametrize(
    "config, says",
    [
        ({"sinks": [{"name": "t", "teams": {"url": "https://x"}}]}, "sinks.0.teams: unknown sink type 'teams'"),
        ({"sinks": [{"name": "s", "slack": {"url": "ftp://x"}}]}, "sinks.0.slack.url: 'ftp://x' is not an http(s) URL"),
        (
            {"sinks": [{"name": "s", "slack": {"url": "https://x", "channel": "#a"}}]},
            "sinks.0.slack.channel: unknown key",
        ),
        (
            {"sinks": [{"name": "s", "slack": {"url_env": "NOPE_NOT_SET"}}]},
            "environment variable NOPE_NOT_SET is not set",
        ),
        ({"sinks": [{"name": "s", "webhook": {"url": "${NOPE_NOT_SET}/x"}}]}, "environment variable NOPE_NOT_SET"),
        ({"sinks": [{"name": "s"}]}, "a sink is exactly one of webhook, slack, alertmanager (given: none)"),
        (
            {"sinks": [{"name": "s", "slack": {"url": "https://x"}}], "rules": [{"sinks": ["t"]}]},
            "notify.yaml: a rule names sink 't', which is not defined",
        ),
        (
            {
                "sinks": [{"name": "s", "slack": {"url": "https://x"}}],
                "rules": [{"sinks": ["s"], "severity": ["high"]}],
            },
            "rules.0.severity.0: Input should be 'stable', 'moderate' or 'significant'",
        ),
        ({"sinks": []}, "sinks: List should have at least 1 item"),
        ({"sink": []}, "sinks: missing; sink: unknown key"),
        # From a trial: the sink type's typo is named, not the variable its sink would have read.
        ({"sinks": [{"name": "s", "slak": {"url_env": "NOPE_NOT_SET"}}]}, "sinks.0.slak: unknown sink type 'slak'"),
        (
            {"sinks": [{"name": "s", "slack": {"url": "https://x"}}], "rules": [{"sinks": ["s"], "type": "drfit.*"}]},
            "rules.0.type: 'drfit.*' matches no event type (the types: drift.data,",
        ),
        (
            {"sinks": [{"name": "s", "slack": {"url": "https://x"}}], "rules": [{"sinks": ["s"], "episode": "start"}]},
            "rules.0.episode.0: Input should be 'started',",
        ),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(config, says):
    with pytest.raises(ConfigError) as raised:
        parse_config(config, "notify.yaml", environ={})
    line = str(raised.value)
    assert "\n" not in line and line.startswith("notify config notify.yaml: ") and says in line, line


def test_rules_match_model_type_severity_and_episode():
    config = parse_config(
        {
            "sinks": [{"name": n, "webhook": {"url": "https://x"}} for n in ("all", "concept", "hous", "started")],
            "rules": [
                {"sinks": ["all"]},
                {"sinks": ["concept"], "type": "drift.concept", "severity": ["significant"]},
                {"sinks": ["hous"], "model_id": ["hous*"], "type": ["undertow.model.*"]},
                {"sinks": ["started"], "episode": ["started"]},
            ],
        },
        "t",
    )
    router = Router(config)
    events = {e.id: e for e in recorded_alerts()}
    concept = next(e for e in events.values() if e.type == "undertow.drift.concept")
    ended = next(e for e in events.values() if e.data.episode == "ended")
    assert [s.name for s in router.sinks_for(concept)] == ["all", "concept", "started"]
    assert [s.name for s in router.sinks_for(ended)] == ["all"]
    assert [s.name for s in router.sinks_for(promoted())] == ["all", "hous"]  # no episode: not "started"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "undertow", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_notify_refuses_a_bad_config_file_in_one_line_before_connecting(tmp_path):
    bad = tmp_path / "notify.yaml"
    bad.write_text("sinks:\n  - name: team\n    teams: {url: https://x}\n")
    done = _cli("notify", "--config", str(bad), "--bootstrap-servers", "127.0.0.1:1")  # as a user runs it
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"undertow: error: notify config {bad}: sinks.0.teams: unknown sink type 'teams' "
        "(a sink is one of: webhook, slack, alertmanager)"
    ]
    bad.write_text("sinks:\n  - name: [unclosed\n")
    done = in_process("notify", "--config", str(bad))
    assert done.returncode == 2 and "not valid YAML at line" in done.stderr and len(done.stderr.splitlines()) == 1
    done = in_process("notify", "--bootstrap-servers", "127.0.0.1:1")
    assert done.returncode == 2 and "nothing to notify: give --webhook URL" in done.stderr
    done = in_process("notify", "--webhook", "hooks.example.com", "--bootstrap-servers", "127.0.0.1:1")
    assert done.returncode == 2 and "--webhook: 'hooks.example.com' is not an http(s) URL" in done.stderr


def test_notify_test_sends_a_test_message_and_says_whether_it_was_taken(tmp_path, receiver, monkeypatch):
    hook = receiver(lambda n, seen: Answer() if seen.path == "/ok" else Answer(403, body=b"invalid_token"))
    config = tmp_path / "notify.yaml"
    config.write_text(
        "sinks:\n"
        "  - name: team-slack\n    slack: {url_env: TEST_SLACK_URL}\n"
        f"  - name: broken\n    webhook: {{url: '{hook.url}/no'}}\n"
    )
    slack = {"TEST_SLACK_URL": hook.url + "/ok"}
    done = _cli("notify", "test", "--config", str(config), "--sink", "team-slack", env=slack)  # as a user runs it
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("delivered a test message to team-slack (slack): HTTP 200 in ")
    (taken,) = hook.accepted()
    check_slack_message(taken.json())
    assert "Test message" in taken.json()["text"]
    monkeypatch.setenv("TEST_SLACK_URL", "http://x")
    refused = in_process("notify", "test", "--config", str(config), "--sink", "broken")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "undertow: error: sink broken (webhook) did not take the test message: HTTP 403 Forbidden: invalid_token"
    )
    unknown = in_process("notify", "test", "--config", str(config), "--sink", "nope")
    assert unknown.returncode == 2 and "no sink named 'nope' (sinks: team-slack, broken)" in unknown.stderr
    hooked = in_process("notify", "test", "--webhook", hook.url + "/ok", "--secret", "k")
    assert hooked.returncode == 0, hooked.stderr
    event = hook.accepted()[-1]
    assert event.json()["type"] == "undertow.notify.test" and event.headers["ce-id"] == event.json()["id"]
    assert verify_signature("k", event.headers, event.body)


def test_a_dependence_alert_names_the_pair_and_its_correlations_in_every_sink():
    """The newest alert type: Slack says which inputs move together and how, Alertmanager names it."""
    from undertow.worker.notify.alertmanager import labels_of
    from undertow.worker.notify.notice import notice
    from undertow.worker.notify.slack import single
    from undertow.worker.runtime.output_events import DependenceDrift, DependenceDriftAlert, DependencePair, Window

    event = DependenceDriftAlert(
        id="dep-1",
        subject="housing",
        time="2026-11-01T00:10:00.000Z",
        data=DependenceDrift(
            model_id="housing",
            model_version="1",
            severity="significant",
            episode="started",
            pairs=[DependencePair(features=["x0", "x1"], reference=-0.01, value=0.51, z=16.7)],
            z=16.7,
            threshold=6.69,
            moderate=0.1,
            significant=0.3,
            pairs_tested=45,
            features=["x0", "x1", "x2"],
            window=Window(index=3, start_ts="2026-11-01T00:00:00.000Z", end_ts="2026-11-01T00:10:00.000Z", n=1000),
        ),
    )
    n = notice(event, NoContext())
    assert n.title == "Dependence drift in housing v1: significant (started)"
    assert n.what.startswith("x0 and x1 move together differently") and "-0.01 → 0.51" in n.what
    assert n.value == "largest |z| of a pair's correlation change (standard errors): 16.7 against 6.69"
    check_slack_message(single(n))
    sink = parse_config({"sinks": [{"name": "am", "alertmanager": {"url": "http://127.0.0.1:9"}}]}, "t").sinks[0]
    assert labels_of(sink.alertmanager, event, n)["alertname"] == "UndertowDependenceDrift"


def test_an_improved_concept_episode_keeps_firing_at_its_new_severity_and_resolves_the_other():
    """'improved' (the error fell inside an episode, still above the baseline): a rule may select it, and in
    Alertmanager the alert at the new severity fires while the other severity's is resolved."""
    from undertow.worker.notify.alertmanager import alerts_for
    from undertow.worker.notify.notice import notice

    concept = next(a for a in recorded_alerts() if a.type == "undertow.drift.concept")
    improved = concept.model_copy(
        update={"data": concept.data.model_copy(update={"episode": "improved", "severity": "moderate"})}
    )
    config = parse_config(
        {
            "sinks": [{"name": "am", "alertmanager": {"url": "http://127.0.0.1:9"}}],
            "rules": [{"sinks": ["am"], "episode": "improved"}],
        },
        "t",
    )
    assert [s.name for s in Router(config).sinks_for(improved)] == ["am"]
    n = notice(improved, NoContext())
    assert "fell inside the episode" in n.next_step
    now = time.time()
    by_severity = {a["labels"]["severity"]: a for a in alerts_for(config.sinks[0].alertmanager, improved, n, now)}
    assert by_severity["moderate"]["endsAt"] > by_severity["significant"]["endsAt"]  # moderate fires on
