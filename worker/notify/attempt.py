"""One attempt to send a request, its outcome, and when to try again.

Outcomes: a 2xx answer delivers. 408, 425, 429 and 5xx answers, timeouts
and connection errors are worth another attempt; the answer's
``Retry-After`` (seconds or an HTTP date) is honoured when it asks for
longer than the backoff. Other answers (400, 401, 403, 404, a redirect) are
the request's or the configuration's fault: retrying the same request cannot
help, so the delivery is dead-lettered at once (``undertow notify retry``
sends it again once the receiver or the config is fixed).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from undertow.worker.notify.request import Request

RETRYABLE = {408, 425, 429}
ANSWER_CHARS = 200  # of a refusing answer's body, in the error


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retryable: bool
    error: str  # "" when delivered
    seconds: float
    status: int | None = None
    retry_after: float | None = None  # seconds the receiver asked to wait


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date (None if absent or bad).

    >>> retry_after("120", 0.0), retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0), retry_after("soon", 0.0)
    (120.0, 30.0, None)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _refused(response: httpx.Response) -> str:
    text = " ".join(response.text.split())[:ANSWER_CHARS]
    reason = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.is_redirect:
        return f"{reason}: redirected to {response.headers.get('location')} (configure the final URL)"
    return f"{reason}: {text}" if text else reason


def send(client: httpx.Client, request: Request, timeout: float) -> Outcome:
    """POST ``request``; every failure becomes an Outcome, nothing raises."""
    started = time.perf_counter()
    try:
        response = client.post(request.url, content=request.body, headers=request.headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        return Outcome(
            False, True, f"timed out after {timeout:g}s ({type(exc).__name__})", time.perf_counter() - started
        )
    except httpx.TransportError as exc:
        return Outcome(False, True, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    except httpx.HTTPError as exc:  # an unsupported URL, a malformed header: the configuration's fault
        return Outcome(False, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    seconds = time.perf_counter() - started
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(True, False, "", seconds, status)
    return Outcome(
        False,
        status in RETRYABLE or status >= 500,
        _refused(response),
        seconds,
        status,
        retry_after(response.headers.get("retry-after"), time.time()),
    )


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: the n-th retry waits between half and all of
    ``min(maximum, initial * 2**(n-1))`` (so retries of many deliveries spread out, and none comes at once),
    or what the receiver asked for (``Retry-After``) when that is longer."""

    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int, asked: float | None = None) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(attempts - 1, 60))
        jittered = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        return max(jittered, asked or 0.0)
