"""``undertow notify``: run the notification service; list, retry and test its deliveries."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from undertow.errors import NotFound, UndertowError
from undertow.storage import deliveries
from undertow.worker.cli.common import (
    _SETTINGS_FLAGS,
    add_connection_flags,
    add_json_flag,
    add_metrics_flag,
    command,
    database,
    install_stop_handlers,
    iso,
    positive_int,
    require_broker,
    seconds,
    settings_from,
)
from undertow.worker.runtime.settings import ENV_PREFIX, NotifySettings, load_settings


class DeliveryFailed(UndertowError):
    """A test message the sink did not accept."""


def _settings(args: argparse.Namespace) -> NotifySettings:
    overrides = {k: getattr(args, k, None) for k in _SETTINGS_FLAGS}
    overrides |= {
        "notify_config": getattr(args, "config", None),
        "notify_webhook_url": getattr(args, "webhook", None),
        "notify_webhook_secret": getattr(args, "secret", None),
    }
    return load_settings(overrides, NotifySettings)


def _config(settings: NotifySettings):
    from undertow.errors import ConfigError
    from undertow.worker.notify.config import load_config, webhook_config

    if settings.notify_config is not None and settings.notify_webhook_url is not None:
        raise ConfigError("give --config FILE or --webhook URL, not both")
    if settings.notify_config is not None:
        return load_config(settings.notify_config)
    if settings.notify_webhook_url is not None:
        return webhook_config(settings.notify_webhook_url, settings.notify_webhook_secret)
    raise ConfigError(
        f"nothing to notify: give --webhook URL (every event to one webhook) or --config FILE "
        f"({ENV_PREFIX}NOTIFY_WEBHOOK_URL, {ENV_PREFIX}NOTIFY_CONFIG): a file of three lines does, see docs/notify.md"
    )


def cmd_notify(args: argparse.Namespace) -> int:
    from undertow.worker.notify.service import Notifier

    settings = _settings(args)
    config = _config(settings)  # a bad file is one line before anything connects
    require_broker(settings)
    notifier = Notifier(settings, config, partitions=args.partitions)
    install_stop_handlers(notifier.request_stop)
    return notifier.run(until_idle=args.until_idle)


def _state(row: Any, now: float) -> str:
    if row.status == deliveries.Status.COLLECTING:
        return f"collecting a digest until {iso(row.due_at)}"
    if row.status == deliveries.Status.DEAD:
        return f"dead-lettered at {iso(row.finished_at)}"
    if row.attempts == 0:
        return "waiting"
    return f"backing off: attempt {row.attempts + 1} at {iso(max(row.due_at, now))}"


def cmd_notify_list(args: argparse.Namespace) -> int:
    now = time.time()
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        rows = [
            {
                "id": row.id,
                "sink": row.sink,
                "status": row.status,
                "state": _state(row, now),
                "ce_id": row.delivery_id,
                "model_id": row.model_id,
                "events": events,
                "type": event_type,
                "attempts": row.attempts,
                "queued_at": iso(row.created_at),
                "next_attempt_at": iso(row.due_at) if row.status in deliveries.OPEN else None,
                "last_error": row.last_error,
            }
            for row, events, event_type in deliveries.outstanding(session, args.sink)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no notification waiting, backing off or dead-lettered")
    for r in rows:
        what = r["type"] if r["events"] == 1 else f"digest of {r['events']} events"
        error = f"  last error: {r['last_error']}" if r["last_error"] else ""
        print(f"{r['id']}  {r['sink']}  {r['model_id']}  {what}  {r['state']}  attempts={r['attempts']}{error}")
    return 0


def cmd_notify_retry(args: argparse.Namespace) -> int:
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        if args.id is not None:
            row = deliveries.find(session, args.id)
            if row is None:
                raise NotFound(f"no delivery {args.id} (see `undertow notify list`)")
            if row.status != deliveries.Status.DEAD:
                raise NotFound(f"delivery {args.id} is {row.status}, not dead-lettered: nothing to retry")
        retried = deliveries.retry_dead(session, time.time(), None if args.all else [args.id])
        shown = [(row.id, row.sink, row.delivery_id) for row in retried]
    if not shown:
        print("no dead-lettered notification")
    for row_id, sink, delivery_id in shown:
        print(f"{row_id}  {sink}  {delivery_id}  pending again: the running `undertow notify` sends it next")
    return 0


def _test_event(sink: str) -> str:
    from undertow.worker.runtime import cloudevents

    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"test-{uuid.uuid4().hex}",
            "source": "/undertow/notify",
            "type": "undertow.notify.test",
            "subject": "undertow-notify-test",
            "time": cloudevents.rfc3339(time.time()),
            "datacontenttype": "application/json",
            "data": {"message": f"a test message to sink {sink} from `undertow notify test`"},
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def cmd_notify_test(args: argparse.Namespace) -> int:
    import httpx

    from undertow.worker.notify import webhook
    from undertow.worker.notify.attempt import send
    from undertow.worker.notify.notice import NoContext
    from undertow.worker.notify.request import Message, build

    settings = _settings(args)
    config = _config(settings)
    sink = config.sink(args.sink or config.sinks[0].name)
    event = _test_event(sink.name)
    request = build(sink, Message(json.loads(event)["id"], [event]), NoContext(), time.time())
    request = webhook.signed(request, sink.webhook.secret if sink.webhook else None, time.time())
    timeout = sink.target.timeout_seconds or settings.notify_timeout_seconds
    with httpx.Client(follow_redirects=False) as client:
        outcome = send(client, request, timeout)
    if not outcome.delivered:
        raise DeliveryFailed(f"sink {sink.name} ({sink.kind}) did not take the test message: {outcome.error}")
    print(f"delivered a test message to {sink.name} ({sink.kind}): HTTP {outcome.status} in {outcome.seconds:.2f}s")
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the rules and sinks file, YAML (docs/notify.md; {ENV_PREFIX}NOTIFY_CONFIG)",
    )
    p.add_argument(
        "--webhook",
        metavar="URL",
        help="without a file: every event to this webhook, each as its own CloudEvent "
        f"({ENV_PREFIX}NOTIFY_WEBHOOK_URL)",
    )
    p.add_argument(
        "--secret",
        metavar="SECRET",
        help="sign --webhook's requests with HMAC-SHA256 "
        f"(or {ENV_PREFIX}NOTIFY_WEBHOOK_SECRET, which `ps` does not show)",
    )


def add_parsers(sub: Any) -> None:
    p = command(
        sub,
        "notify",
        "deliver drift alerts and model events to webhooks, Slack or Alertmanager, by rules",
        "undertow notify --webhook https://hooks.example.com/undertow",
        "undertow notify --config notify.yaml --metrics-port 9103",
    )
    add_connection_flags(p, "kafka", "db", "topics", "group", service="notify")
    _add_config_flags(p)
    p.add_argument(
        "--until-idle",
        type=seconds,
        metavar="SECONDS",
        help="exit once the topics have given nothing for this long and no delivery is waiting or backing off "
        "(default: run until stopped)",
    )
    p.add_argument(
        "--partitions",
        type=positive_int,
        default=3,
        help="partitions of the topics it has to create (default: %(default)s)",
    )
    add_metrics_flag(p)
    p.set_defaults(func=cmd_notify)
    notify_sub = p.add_subparsers(dest="notify_command", metavar="COMMAND")

    q = command(
        notify_sub,
        "list",
        "list the deliveries waiting, backing off or dead-lettered",
        "undertow notify list --sink team-slack",
    )
    add_connection_flags(q, "db")
    q.add_argument("--sink", help="only this sink's")
    add_json_flag(q)
    q.set_defaults(func=cmd_notify_list)

    q = command(
        notify_sub,
        "retry",
        "send dead-lettered deliveries again",
        "undertow notify retry --id 42",
        "undertow notify retry --all",
    )
    add_connection_flags(q, "db")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=positive_int, help="the delivery (the first column of `undertow notify list`)")
    which.add_argument("--all", action="store_true", help="every dead-lettered delivery")
    q.set_defaults(func=cmd_notify_retry)

    q = command(
        notify_sub,
        "test",
        "send a test message to a sink, now, and say whether it was taken",
        "undertow notify test --config notify.yaml --sink team-slack",
    )
    _add_config_flags(q)
    q.add_argument("--sink", help="the sink's name in the config (default: the first)")
    q.set_defaults(func=cmd_notify_test)
