"""``undertow report``: the HTML drift report of one model."""

from __future__ import annotations

from undertow.worker.cli.common import add_connection_flags, command, settings_from


def cmd_report(args) -> int:
    from undertow.models.ids import check_id
    from undertow.worker.report.build import write_report

    settings = settings_from(args)
    path = write_report(settings.db_url, check_id(args.model_id), args.out, force=args.force)
    print(f"report of {args.model_id}: {path} ({path.stat().st_size / 1024:,.0f} KiB)")
    return 0


def add_parsers(sub) -> None:
    p = command(
        sub,
        "report",
        "write a self-contained HTML drift report of a model",
        "undertow report --model-id churn --out reports/churn.html",
    )
    add_connection_flags(p, "db")
    p.add_argument("--model-id", required=True)
    p.add_argument(
        "--out",
        default="report.html",
        help="the HTML file to write (default: %(default)s); its folder must exist, and a file "
        "already there is replaced only if it is an earlier Undertow report",
    )
    p.add_argument("--force", action="store_true", help="replace the --out file even if it is not an Undertow report")
    p.set_defaults(func=cmd_report)
