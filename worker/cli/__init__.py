"""The ``undertow`` command line: one module per command group, each adding its parsers."""
from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.exc import InterfaceError, OperationalError

from undertow.storage.errors import UndertowError
from undertow.worker.cli import alerts, demo, models, report, retrain, runs, services, status, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="undertow", description="Drift monitor for models in production.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (services, train, status, models, runs, alerts, report, retrain, demo):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's requests, one line each
    logging.getLogger("alembic").setLevel(logging.WARNING)  # storage.db logs the revisions it applies
    try:
        return args.func(args)
    except UndertowError as exc:
        print(f"undertow: error: {exc}", file=sys.stderr)
        return 2
    except (OperationalError, InterfaceError) as exc:
        # Connection refused, database or directory missing, authentication:
        # the driver's first line says which.
        reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
        print(f"undertow: error: database unavailable: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
