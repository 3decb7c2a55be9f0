"""What every command shares: connection flags, settings, sessions, stop handling."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import faulthandler
import logging
import math
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import overload

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from undertow.errors import ConfigError
from undertow.storage import db
from undertow.worker.runtime import transport
from undertow.worker.runtime.settings import ENV_PREFIX, ServiceSettings, Settings, SettingsType, load_settings

log = logging.getLogger("undertow")

# Flags that override settings; a command without one of them leaves it to the environment.
_SETTINGS_FLAGS = (
    "kafka_bootstrap_servers",
    "db_url",
    "artifacts_dir",
    "topic_prefix",
    "group_id",
    "metrics_port",
    "host",
    "port",
)


class Parser(argparse.ArgumentParser):
    """argparse as users of a production tool expect: a flag is spelled out (``--js`` is not taken as
    ``--json``), and a flag the command does not know is named, with the closest one it does, by the
    command's own parser (argparse named a missing required flag instead, or the top-level usage)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]  # argparse's own signature
        strings = list(sys.argv[1:] if args is None else args)
        unknown = [s for s in strings if s.startswith("--") and s.split("=", 1)[0] not in self._option_string_actions]
        # A subcommand's flags belong to its own parser: only the flags before a subcommand are this one's.
        if unknown and not self._subcommand_in(strings):
            flag = unknown[0].split("=", 1)[0]
            like = difflib.get_close_matches(flag, [o for o in self._option_string_actions if o.startswith("--")], 1)
            self.error(f"unrecognized argument: {flag}" + (f" (did you mean {like[0]}?)" if like else ""))
        namespace, extras = super().parse_known_args(strings, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def _subcommand_in(self, strings: list[str]) -> bool:
        names = {
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        }
        return any(s in names for s in strings)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and the examples as written (one line each), the options wrapped as usual."""


def command(sub, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
    """A (sub)command whose ``--help`` starts with a one-line description and ends with an example.

    ``help`` is the line in the parent's command list; the description is the same sentence.
    """
    label = "Example" if len(examples) == 1 else "Examples"
    return sub.add_parser(
        name,
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog=f"{label}:\n" + "\n".join(f"  {e}" for e in examples) if examples else None,
        formatter_class=HelpFormatter,
    )


# use -> (flag, settings field, metavar, what it is). Each command shows the ones it uses, with their real default.
_CONNECTION = {
    "kafka": (
        "--bootstrap-servers",
        "kafka_bootstrap_servers",
        "HOST:PORT",
        "Kafka bootstrap address(es), comma-separated",
    ),
    "db": ("--db-url", "db_url", "URL", "SQLAlchemy database URL"),
    "artifacts": ("--artifacts-dir", "artifacts_dir", "DIR", "where model files are stored"),
    "topics": ("--topic-prefix", "topic_prefix", "PREFIX", "prefix of the topic names"),
    "group": ("--group-id", "group_id", "GROUP", "Kafka consumer group"),
}
_STATUS_USES = ("kafka", "db", "topics", "group")


def add_connection_flags(parser: argparse.ArgumentParser, *uses: str, service: str = "monitor") -> None:
    """The connection flags of the settings ``uses`` names (``status``'s four when none is named), each help
    with the default the command really gets and its ``UNDERTOW_*`` variable.

    The others are still accepted and ignored, but not listed: like the ``UNDERTOW_*`` variables of a
    shared ``.env``, one set of connection flags can be passed to every command of a script.
    """
    uses = uses or _STATUS_USES
    group = parser.add_argument_group("connection (flag, else environment or .env, else default)")
    for use, (flag, field, metavar, what) in _CONNECTION.items():
        if use not in uses:
            parser.add_argument(flag, dest=field, help=argparse.SUPPRESS)
            continue
        default = f"undertow-{service}" if use == "group" else Settings.model_fields[field].default
        group.add_argument(
            flag, dest=field, metavar=metavar, help=f"{what} (default: {default}; {ENV_PREFIX}{field.upper()})"
        )


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    host = ServiceSettings.model_fields["metrics_host"].default
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help=f"serve Prometheus /metrics on this port (default: off; {ENV_PREFIX}METRICS_PORT); "
        f"the address is {ENV_PREFIX}METRICS_HOST (default: {host})",
    )


def add_json_flag(parser: argparse.ArgumentParser, what: str = "a JSON array", times: bool = True) -> None:
    in_rfc3339 = " (times in RFC 3339)" if times else ""
    parser.add_argument("--json", action="store_true", help=f"print {what} instead of text{in_rfc3339}")


@overload
def settings_from(args: argparse.Namespace) -> Settings: ...
@overload
def settings_from(args: argparse.Namespace, cls: type[SettingsType]) -> SettingsType: ...


def settings_from(args: argparse.Namespace, cls: type[Settings] = Settings) -> Settings:
    """Flags over environment over ``.env`` over defaults, validated once."""
    return load_settings({k: getattr(args, k, None) for k in _SETTINGS_FLAGS}, cls)


@contextlib.contextmanager
def database(settings: Settings, must_exist: bool = False) -> Iterator[sessionmaker[Session]]:
    """``with database(settings) as sessions:`` the database's session factory, its schema migrated; the
    engine is disposed when the block ends, by an exception too. ``must_exist``: a SQLite file that is not
    there is an error, not created."""
    engine = db.make_engine(settings.db_url, must_exist=must_exist)
    try:
        if must_exist and not db.has_schema(engine):
            # A command that reads state must not write Undertow's tables into a database that is not
            # Undertow's (a --dry-run pointed at the wrong database had created 28 tables there).
            shown = make_url(settings.db_url).render_as_string(hide_password=True)
            raise ConfigError(
                f"no Undertow tables in {shown}: nothing has been recorded there yet (check --db-url / "
                f"{ENV_PREFIX}DB_URL)"
            )
        db.migrate(engine)
        yield db.make_session_factory(engine)
    finally:
        engine.dispose()


def install_stop_handlers(stop) -> None:
    """SIGTERM and SIGINT only ask to stop: the service finishes its batch and commits. SIGUSR1 writes every
    thread's stack to stderr and the service goes on (Python's faulthandler): what a service that does not
    stop, or does not move, is doing, without a debugger."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def handler(signum, _frame):
        log.info("received %s: finishing the batch, then exiting", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with milliseconds, as the events' own times: ``2026-12-06T03:04:05.123Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1 (a larger one than any table holds means all)."""
    number = int(value) if value.strip().isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return min(number, 2**62)  # SQLite's and PostgreSQL's LIMIT take at most a signed 64-bit integer


def seconds(value: str) -> float:
    """An argparse type: a finite number of seconds, at least 0 (NaN would compare false forever)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (finite, at least 0)")
    return number


def rfc3339_time(value: str) -> str:
    """An argparse type: an RFC 3339 time with its offset (``Z`` or ``+02:00``), kept as given."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an RFC 3339 time with its offset, "
            "such as 2026-12-06T03:04:05Z or 2026-12-06T04:04:05+01:00"
        )
    return value


BROKER_PROBE_SECONDS = 4.0


def unreachable_broker(settings: Settings, seconds: float = BROKER_PROBE_SECONDS) -> str | None:
    """Why no bootstrap server of ``settings`` takes a TCP connection within ``seconds``, or None
    (``transport.unreachable_broker``: a pre-flight check, so the Kafka client's half minute of retries
    and log lines never starts)."""
    return transport.unreachable_broker(settings.kafka_bootstrap_servers, seconds)


def require_broker(settings: Settings) -> None:
    """Stop in a few seconds with one line, not half a minute of client log lines, when no broker is there."""
    from undertow.worker.runtime.transport import BrokerUnavailable

    reason = unreachable_broker(settings)
    if reason is not None:
        raise BrokerUnavailable(
            f"no Kafka broker reachable at {settings.kafka_bootstrap_servers} ({reason}): start one with "
            f"`undertow broker`, or point --bootstrap-servers / {ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS at yours"
        )
