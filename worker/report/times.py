"""How the report writes a time: RFC 3339 in tables and cards (what the CLI and the events print), and
day, month and clock time on the figures' axes and in the verdict (what a reader scans for)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float | None) -> str:
    """RFC 3339 in UTC, to the second, as in the model card: ``2026-12-06T03:04:05Z``."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> float:
    """An event's RFC 3339 time (``...Z``) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def readable(ts: float | None) -> str:
    """``06 Dec 2026 14:24:23 UTC``: the verdict's and the per-feature table's "since"."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%d %b %Y %H:%M:%S UTC")


def moment(ts: float) -> datetime:
    """An epoch time as the aware datetime matplotlib plots."""
    return datetime.fromtimestamp(ts, UTC)


def date_axis(axis) -> None:
    """Day and month on every tick of a time axis, with the clock time to the precision the ticks are
    apart (``06 Dec 14:24`` an hour apart, ``06 Dec 14:24:23`` seconds apart): matplotlib's default
    ``05 21:10`` leaves the month out. Few ticks, horizontal, so that their labels never touch."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=6)
    formatter = mdates.AutoDateFormatter(locator, tz=UTC)
    formatter.scaled = {
        365.0: "%Y",
        30.0: "%b %Y",
        1.0: "%d %b",
        1 / 24: "%d %b %H:%M",
        1 / (24 * 60): "%d %b %H:%M",
        1 / (24 * 3600): "%d %b %H:%M:%S",
        1 / (24 * 3600 * 1000): _fraction,
    }
    axis.set_major_locator(locator)
    axis.set_major_formatter(formatter)


def _fraction(x: float, pos: int | None = None) -> str:
    """A tick less than a second from its neighbours: milliseconds, and still the day and month."""
    import matplotlib.dates as mdates

    text = mdates.num2date(x, UTC).strftime("%d %b %H:%M:%S.%f")[:-3]
    return text.removesuffix(".000")
