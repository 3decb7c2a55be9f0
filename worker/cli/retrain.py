"""``undertow retrain``: the retrain requests, and closing one by hand."""

from __future__ import annotations

import json

from undertow.errors import NotFound
from undertow.storage import repo
from undertow.worker.cli.common import add_connection_flags, add_json_flag, command, database, settings_from


def cmd_retrain_list(args) -> int:
    from undertow.models import registry, runs

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        rows = []
        for r in repo.retrain_requests(session, args.model_id):
            run = runs.find_run(session, runs.run_id_for(r.request_id))
            rows.append(
                json.loads(r.cloudevent)
                | {
                    "status": r.status,
                    "outcome": r.outcome,
                    "run": None if run is None else {"run_id": run.run_id, "status": run.status, "detail": run.outcome},
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no retrain requests (none yet, or all older than UNDERTOW_RETAIN_RETRAIN_REQUESTS_SECONDS)")
    for r in [] if args.json else rows:
        d = r["data"]
        run = r["run"]
        state = (
            r["outcome"]
            if r["status"] == "closed"
            else ("not picked up by a trainer yet" if run is None else f"{run['status']}: {run['detail'] or ''}")
        )
        print(
            f"{r['time']}  {d['request_id']}  {d['model_id']}@{d['model_version']}  {r['status']}  "
            f"{d['reason']}  data={_policy(d['data_policy'])}  alerts={','.join(d['alert_ids']) or '-'}  [{state}]"
        )
    return 0


def _policy(policy: dict) -> str:
    """``{"kind": "rolling", "max_pairs": 50000}`` -> ``rolling(max_pairs=50000)``; ``{"kind": "all"}`` -> ``all``."""
    rest = ", ".join(f"{k}={v}" for k, v in policy.items() if k != "kind")
    return f"{policy.get('kind', '?')}({rest})" if rest else str(policy.get("kind", "?"))


def cmd_retrain_close(args) -> int:
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        if repo.close_retrain_request(session, args.request_id, args.outcome) is None:
            raise NotFound(f"no retrain request {args.request_id!r}")
    print(f"closed {args.request_id}")
    return 0


def add_parsers(sub) -> None:
    p = command(
        sub,
        "retrain",
        "the retrain requests the monitor made, and closing one by hand",
        "undertow retrain list --model-id churn",
    )
    retrain_sub = p.add_subparsers(dest="retrain_command", required=True, metavar="COMMAND")
    p = command(
        retrain_sub,
        "list",
        "retrain requests, oldest first, with their training run's state",
        "undertow retrain list --model-id churn --json",
    )
    add_connection_flags(p, "db")
    p.add_argument("--model-id", help="only this model's requests (default: every model's)")
    add_json_flag(p)
    p.set_defaults(func=cmd_retrain_list)
    p = command(
        retrain_sub,
        "close",
        "close an open request (the trainer does this after it ran)",
        'undertow retrain close --request-id 8c17d74366dcdc09 --outcome "retrained by hand"',
    )
    add_connection_flags(p, "db")
    p.add_argument("--request-id", required=True, help="as `undertow retrain list` shows it")
    p.add_argument("--outcome", default="closed by operator", help="recorded with it (default: %(default)s)")
    p.set_defaults(func=cmd_retrain_close)
