"""The ``undertow`` command line: one module per command group, each adding its parsers."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError

from undertow import __version__
from undertow.errors import UndertowError
from undertow.worker.cli import alerts, db, demo, models, notify, report, retrain, runs, services, status, train
from undertow.worker.cli.common import HelpFormatter, Parser

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.upper()


_LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR, any case (default: INFO); before or after the command"

# Commands whose module adds its parser without ``common.command`` (status.py): their example.
_EXAMPLES = {"status": "undertow status --json"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="undertow",
        description="Drift monitor for models in production.",
        formatter_class=HelpFormatter,
        epilog="Examples:\n  undertow demo                     # the whole loop end to end, in about a minute\n"
        "  undertow models register --help   # each command's options, and an example",
    )
    parser.add_argument("--version", action="version", version=f"undertow {__version__}")
    parser.add_argument("--log-level", type=_log_level, default="INFO", metavar="LEVEL", help=_LOG_LEVEL_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (services, train, status, models, runs, alerts, report, retrain, notify, db, demo):
        group.add_parsers(sub)
    _global_options_everywhere(parser)
    return parser


def _global_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` also after the subcommand (``undertow status --log-level debug``), as users of
    Typer or MLflow tools expect; given there, it overrides the one before. A command added without
    ``common.command`` gets its description and example here."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, subparser in action.choices.items():
            if "--log-level" not in subparser._option_string_actions:
                subparser.add_argument(
                    "--log-level", type=_log_level, default=argparse.SUPPRESS, metavar="LEVEL", help=_LOG_LEVEL_HELP
                )
            if subparser.epilog is None and name in _EXAMPLES:
                subparser.formatter_class = HelpFormatter
                subparser.description = subparser.description or f"{helps[name][:1].upper()}{helps[name][1:]}."
                subparser.epilog = f"Example:\n  {_EXAMPLES[name]}"
            _global_options_everywhere(subparser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe must meet the handler below
        return code
    except BrokenPipeError:
        # `undertow alerts | head`: the reader closed the pipe. Python would print a traceback at exit
        # when flushing stdout again, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("undertow: error: the output was closed before everything was written (broken pipe)", file=sys.stderr)
        return 1


def _run(args) -> int:
    # The user's own modules (a custom transformer in a pickled pipeline) import from the folder the command
    # runs in, as with `python -m undertow` or uvicorn's default --app-dir: appended, so that a module there
    # never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python's own event loop warns when one of its tasks ran over 0.1 s, which a busy machine causes
    # and nobody can act on (seen in a trial and in CI): its errors still show.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's requests, one line each
    logging.getLogger("alembic").setLevel(logging.WARNING)  # storage.db logs the revisions it applies
    try:
        return args.func(args)
    except UndertowError as exc:
        print(f"undertow: error: {exc}", file=sys.stderr)
        return 2
    except (DatabaseError, InterfaceError) as exc:
        if exc.__class__ not in (DatabaseError, OperationalError, InterfaceError):
            raise  # integrity, data or programming errors are bugs: their traceback says where
        # Connection refused, database or directory missing, authentication, a file that is not a
        # database: the driver's first line says which.
        reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
        print(f"undertow: error: database unavailable: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
