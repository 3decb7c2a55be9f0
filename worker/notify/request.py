"""An HTTP request to a sink, as sent, and the messages it is built from.

``Message`` is what a delivery carries: its CloudEvent id (the idempotency
key, the same on every attempt) and its events, each as consumed (the JSON
text a webhook receives unchanged) and parsed (what Slack and Alertmanager
messages are made of). ``build`` turns one into the sink's request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from undertow import __version__
from undertow.worker.notify.config import SinkConfig
from undertow.worker.notify.notice import TEST_TYPE, Context
from undertow.worker.runtime.output_events import parse_event

USER_AGENT = f"undertow-notify/{__version__}"


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    delivery_id: str  # ce-id
    raw: list[str]  # the CloudEvents as consumed, in order
    digest: bool = False

    def events(self) -> list[Any]:
        """Each event parsed (an Undertow event model), or a dict for a test message."""
        parsed: list[Any] = []
        for text in self.raw:
            loaded = json.loads(text)
            parsed.append(loaded if loaded.get("type") == TEST_TYPE else parse_event(text))
        return parsed


def build(sink: SinkConfig, message: Message, context: Context, now: float) -> Request:
    """The request that delivers ``message`` to ``sink`` (signed webhooks are signed when sent)."""
    from undertow.worker.notify import alertmanager, slack, webhook

    target = sink.target
    if sink.webhook is not None:
        request = webhook.request(sink.webhook, message)
    elif sink.slack is not None:
        request = slack.request(sink.slack, message, context)
    else:
        assert sink.alertmanager is not None
        request = alertmanager.request(sink.alertmanager, message, context, now)
    return Request(request.url, request.body, {"user-agent": USER_AGENT, **request.headers, **target.headers})
