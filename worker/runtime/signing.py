"""Signed control events: an HMAC-SHA256 of the record value in the header ``undertow.signature``.

Retrain requests and model events make things happen (a training run, a
promotion), so with ``UNDERTOW_SIGNING_KEY`` set their producers sign them
and their consumers dead-letter any that is unsigned or whose signature
does not match, acting on nothing. Kafka ACLs (who may write to the control
topics at all) stay the first line of defence; the signature is the second.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from undertow.errors import InvalidEvent

SIGNATURE_HEADER = "undertow.signature"


def signature(value: bytes, key: SecretStr) -> bytes:
    return hmac.new(key.get_secret_value().encode(), value, hashlib.sha256).hexdigest().encode()


def signed_headers(headers: list[tuple[str, bytes]], value: bytes, key: SecretStr | None) -> list[tuple[str, bytes]]:
    """``headers`` plus the signature of ``value`` when a key is set."""
    return headers if key is None else [*headers, (SIGNATURE_HEADER, signature(value, key))]


def verify(record, key: SecretStr | None) -> None:
    """Raise InvalidEvent unless the record carries the right signature (no key: nothing to check)."""
    if key is None:
        return
    given = [v for k, v in (record.headers or []) if k == SIGNATURE_HEADER]
    if not given:
        raise InvalidEvent(f"unsigned control event (no {SIGNATURE_HEADER} header); UNDERTOW_SIGNING_KEY is set")
    if len(given) > 1 or not hmac.compare_digest(given[0], signature(record.value or b"", key)):
        raise InvalidEvent("the control event's signature does not match its value: not acted on")
