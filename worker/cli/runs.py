"""``undertow runs``: training runs as experiments - cause, data, parameters, metrics, durations, outcome."""
from __future__ import annotations

import json

from undertow.worker.cli.common import add_connection_flags, iso, open_sessions, settings_from


def cmd_runs_list(args) -> int:
    from undertow.models import runs
    engine, sessions = open_sessions(settings_from(args), must_exist=True)
    from undertow.models import registry
    with sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        rows = [runs.as_dict(r) for r in runs.list_runs(session, args.model_id)]
    engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no training runs yet")
    for r in rows:
        gate = r["metrics"].get("gate") or {}
        numbers = (f"  error {gate['champion_mean_error']:.4g} -> {gate['candidate_mean_error']:.4g}"
                   if "candidate_mean_error" in gate else "")
        print(f"{iso(r['accepted_at'])}  {r['run_id']}  {r['model_id']}  {r['status']:<10} "
              f"{r['champion_version'] or '-'} -> {r['candidate_version'] or '-'}{numbers}  "
              f"{r['trigger'].get('reason', '')}: {r['outcome'] or ''}")
    return 0


def cmd_runs_show(args) -> int:
    from undertow.models import runs
    engine, sessions = open_sessions(settings_from(args), must_exist=True)
    with sessions.begin() as session:
        shown = runs.as_dict(runs.get_run(session, args.run_id))
    engine.dispose()
    print(json.dumps(shown, indent=2, default=str))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("runs", help="training runs")
    runs_sub = p.add_subparsers(dest="runs_command", required=True)
    p = runs_sub.add_parser("list", help="training runs, oldest first")
    add_connection_flags(p)
    p.add_argument("--model-id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_list)
    p = runs_sub.add_parser("show", help="one run in full")
    add_connection_flags(p)
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_runs_show)
