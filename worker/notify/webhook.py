"""Webhook sinks: the CloudEvents HTTP binding, structured mode, and an HMAC-SHA256 signature.

One event: the body is the event's JSON exactly as Undertow published it,
``content-type: application/cloudevents+json``. A digest: a JSON array of the
events, ``application/cloudevents-batch+json`` (the binding's batched mode).
``ce-id`` carries the CloudEvent id (a digest's own id), the receiver's
idempotency key: a redelivery carries the same.

With a secret, ``X-Undertow-Timestamp`` is the Unix time of the attempt and
``X-Undertow-Signature`` is ``sha256=`` and the hex HMAC-SHA256, keyed by the
secret, of ``<timestamp>.<body>`` (the timestamp, a dot, the raw body bytes):
a receiver recomputes it, compares in constant time and refuses old
timestamps (a replay). Signed at each attempt, so the timestamp is fresh.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from undertow.worker.notify.config import WebhookSink
from undertow.worker.notify.request import Message, Request

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SIGNATURE_HEADER = "X-Undertow-Signature"
TIMESTAMP_HEADER = "X-Undertow-Timestamp"


def request(sink: WebhookSink, message: Message) -> Request:
    if message.digest:
        body = ("[" + ",".join(message.raw) + "]").encode()
        content_type = BATCH
    else:
        body = message.raw[0].encode()
        content_type = STRUCTURED
    return Request(sink.url, body, {"content-type": content_type, "ce-id": message.delivery_id})


def signature(secret: SecretStr, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of ``<timestamp>.<body>``.

    >>> signature(SecretStr("s3cret"), 1700000000, b'{"id":"1"}')[:15]
    'sha256=2b9dee6c'
    """
    digest = hmac.new(secret.get_secret_value().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def signed(request: Request, secret: SecretStr | None, now: float) -> Request:
    """``request`` with its signature headers for an attempt at ``now`` (unchanged without a secret)."""
    if secret is None:
        return request
    timestamp = int(now)
    headers = {
        **request.headers,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, request.body),
    }
    return Request(request.url, request.body, headers)
