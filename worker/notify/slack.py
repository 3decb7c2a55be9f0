"""Slack sinks: an incoming-webhook message, ``text`` (the notification's fallback) and Block Kit ``blocks``.

One event: a header, a section of fields (model, what drifted, severity,
the value against its threshold, since when), what happens next, and a
context line with the event's time, type and id. A digest: a header naming
the model and how many notices, one section per notice (at most
``DIGEST_SHOWN``, the rest counted), the same context line. Texts are cut to
Slack's limits (header 150 characters, section text 3000, field 2000, 50
blocks); ``&``, ``<`` and ``>`` are escaped, so nothing in an event can ping
a channel.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from undertow.worker.notify.config import SlackSink
from undertow.worker.notify.notice import Context, Notice, notice
from undertow.worker.notify.request import Message, Request
from undertow.worker.notify.segments import segment_of

HEADER_CHARS, TEXT_CHARS, FIELD_CHARS = 150, 3000, 2000
DIGEST_SHOWN = 20
ICONS = {"significant": ":red_circle:", "moderate": ":large_orange_circle:", "stable": ":large_green_circle:"}


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn and plain text.

    >>> escape("<!channel> & co")
    '&lt;!channel&gt; &amp; co'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int = HEADER_CHARS) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def _mrkdwn(text: str, limit: int = TEXT_CHARS) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _cut(text, limit)}


def _icon(n: Notice) -> str:
    return ICONS.get(n.severity or "", ":information_source:")


def _fields(n: Notice) -> list[dict[str, Any]]:
    version = f" v{n.version}" if n.version else ""
    pairs = [
        ("Model", f"`{escape(n.model_id)}`{escape(version)}"),
        ("What", escape(n.what)),
        ("Severity", escape(f"{n.severity} ({n.phase})" if n.severity else str(n.phase))),
        ("Value", escape(n.value)),
        ("Since", escape(n.since or "–")),
    ]
    return [_mrkdwn(f"*{name}*\n{value}", FIELD_CHARS) for name, value in pairs]


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(escape(text))]}


def single(n: Notice) -> dict[str, Any]:
    return {
        "text": _cut(f"{n.title}. {n.value}. {n.next_step}", TEXT_CHARS),
        "blocks": [
            {"type": "header", "text": _plain(f"{n.title}")},
            {"type": "section", "fields": _fields(n)},
            {"type": "section", "text": _mrkdwn(f"*Next:* {escape(n.next_step)}")},
            _context(f"{n.time} · {n.event_type} · id {n.event_id}"),
        ],
    }


def digest(model_id: str, notices: list[Notice], delivery_id: str) -> dict[str, Any]:
    title = f"{len(notices)} Undertow notices for {model_id}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": _plain(title)}]
    for n in notices[:DIGEST_SHOWN]:
        since = f" · since {n.since}" if n.since and n.phase != "started" else ""
        blocks.append(
            {
                "type": "section",
                "text": _mrkdwn(
                    f"{_icon(n)} *{escape(n.title)}*\n{escape(n.what)}\n{escape(n.value)}{escape(since)}\n"
                    f"_Next:_ {escape(n.next_step)}"
                ),
            }
        )
    if len(notices) > DIGEST_SHOWN:
        blocks.append({"type": "section", "text": _mrkdwn(f"…and {len(notices) - DIGEST_SHOWN} more")})
    blocks.append(_context(f"{notices[0].time} to {notices[-1].time} · digest id {delivery_id}"))
    lines = "; ".join(n.title for n in notices[:5]) + ("; …" if len(notices) > 5 else "")
    return {"text": _cut(f"{title}: {lines}", TEXT_CHARS), "blocks": blocks}


def _in_segment(n: Notice, event: Any) -> Notice:
    """A segment's notice says so in its title and its what (drift per segment: models register --segment-by)."""
    segment = segment_of(event)
    if segment is None:
        return n
    return replace(n, title=f"{n.title} in segment {segment}", what=f"{n.what}, in segment {segment}")


def payload(message: Message, context: Context) -> dict[str, Any]:
    notices = [_in_segment(notice(event, context), event) for event in message.events()]
    if len(notices) == 1:
        return single(notices[0])
    return digest(notices[0].model_id, notices, message.delivery_id)


def request(sink: SlackSink, message: Message, context: Context) -> Request:
    body = json.dumps(payload(message, context), ensure_ascii=False, separators=(",", ":")).encode()
    return Request(sink.url, body, {"content-type": "application/json; charset=utf-8"})
