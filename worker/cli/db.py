"""``undertow db``: the database itself - ``prune`` applies the retention (storage/retention.py) now."""

from __future__ import annotations

import json

from undertow.storage import retention
from undertow.worker.cli.common import add_connection_flags, add_json_flag, command, database, settings_from
from undertow.worker.runtime.settings import ENV_PREFIX, RetentionSettings


def cmd_db_prune(args) -> int:
    settings = settings_from(args, RetentionSettings)
    with database(settings, must_exist=True) as sessions:
        pruner = retention.Pruner(sessions, settings.retention())
        if args.dry_run:
            rows = pruner.dry_run()
        else:
            rows, _ = pruner.prune()  # no chunk limit: an operator's prune deletes everything due
        with sessions() as session:
            size = retention.database_size(session)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "rows": rows, "database_bytes": size}, indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for table, count in rows.items():
        print(f"{table:<18} {verb} {count:>10,} rows")
    print(f"database size: {retention.human_bytes(size)}")
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "db", "the database: apply the retention now", "undertow db prune --dry-run")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = command(
        db_sub,
        "prune",
        f"delete the rows the retention ({ENV_PREFIX}RETAIN_*, docs/configuration.md) no longer keeps, as the "
        f"services do every {ENV_PREFIX}PRUNE_INTERVAL_SECONDS; prints the rows deleted per table and the "
        "database size",
        "undertow db prune --dry-run",
    )
    add_connection_flags(p, "db")
    p.add_argument("--dry-run", action="store_true", help="count the rows each table would lose; delete nothing")
    add_json_flag(p, "a JSON object (dry_run, rows per table, database_bytes)", times=False)
    p.set_defaults(func=cmd_db_prune)
