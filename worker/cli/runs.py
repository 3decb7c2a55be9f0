"""``undertow runs``: training runs as experiments - cause, data, parameters, metrics, durations, outcome."""

from __future__ import annotations

import json

from undertow.worker.cli.common import add_connection_flags, add_json_flag, command, database, iso, settings_from

# The run's own times, and the trigger's estimated start of a concept change, are stored as epoch seconds.
_TIMES = ("accepted_at", "started_at", "finished_at", "wait_until")


def readable(run: dict) -> dict:
    """A run of ``runs.as_dict`` with its times in RFC 3339, as every other time the CLI prints."""
    shown = run | {key: iso(run[key]) for key in _TIMES}
    if isinstance(shown["trigger"].get("change_at"), (int, float)):
        shown["trigger"] = shown["trigger"] | {"change_at": iso(shown["trigger"]["change_at"])}
    return shown


def cmd_runs_list(args) -> int:
    from undertow.models import registry, runs

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        rows = [readable(runs.as_dict(r)) for r in runs.list_runs(session, args.model_id)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no training runs (none yet, or all older than UNDERTOW_RETAIN_TRAINING_RUNS_SECONDS)")
    for r in rows:
        gate = r["metrics"].get("gate") or {}
        numbers = (
            f"  error {gate['champion_mean_error']:.4g} -> {gate['candidate_mean_error']:.4g}"
            if "candidate_mean_error" in gate
            else ""
        )
        print(
            f"{r['accepted_at']}  {r['run_id']}  {r['model_id']}  {r['status']:<10} "
            f"{r['champion_version'] or '-'} -> {r['candidate_version'] or '-'}{numbers}  "
            f"{r['trigger'].get('reason', '')}: {r['outcome'] or ''}"
        )
    return 0


def cmd_runs_show(args) -> int:
    from undertow.models import runs

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        shown = readable(runs.as_dict(runs.get_run(session, args.run_id)))
    print(json.dumps(shown, indent=2, default=str))
    return 0


def add_parsers(sub) -> None:
    p = command(
        sub,
        "runs",
        "training runs: cause, data, parameters, metrics, durations, outcome",
        "undertow runs list --model-id churn",
    )
    runs_sub = p.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    p = command(runs_sub, "list", "training runs, oldest first", "undertow runs list --model-id churn --json")
    add_connection_flags(p, "db")
    p.add_argument("--model-id", help="only this model's runs (default: every model's)")
    add_json_flag(p)
    p.set_defaults(func=cmd_runs_list)
    p = command(runs_sub, "show", "one run in full, as JSON", "undertow runs show run-3f2a9c0d1e4b5a67")
    add_connection_flags(p, "db")
    p.add_argument("run_id", metavar="RUN_ID", help="as `undertow runs list` shows it")
    p.set_defaults(func=cmd_runs_show)
