"""``undertow retrain``: the retrain requests, and closing one by hand."""
from __future__ import annotations

import json

from undertow.storage import repo
from undertow.storage.errors import NotFound
from undertow.worker.cli.common import add_connection_flags, open_sessions, settings_from


def cmd_retrain_list(args) -> int:
    from undertow.models import registry, runs
    from undertow.storage.tables import TrainingRun
    engine, sessions = open_sessions(settings_from(args), must_exist=True)
    with sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        rows = []
        for r in repo.retrain_requests(session, args.model_id):
            run = session.get(TrainingRun, runs.run_id_for(r.request_id))
            rows.append(json.loads(r.cloudevent) | {"status": r.status, "outcome": r.outcome, "run": None if run is None
                        else {"run_id": run.run_id, "status": run.status, "detail": run.outcome}})
    engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no retrain requests yet")
    for r in [] if args.json else rows:
        d = r["data"]
        run = r["run"]
        state = r["outcome"] if r["status"] == "closed" else (
            "not picked up by a trainer yet" if run is None else f"{run['status']}: {run['detail'] or ''}")
        print(f"{r['time']}  {d['request_id']}  {d['model_id']}@{d['model_version']}  {r['status']}  "
              f"{d['reason']}  policy={d['data_policy']}  alerts={','.join(d['alert_ids'])}  [{state}]")
    return 0


def cmd_retrain_close(args) -> int:
    engine, sessions = open_sessions(settings_from(args), must_exist=True)
    with sessions.begin() as session:
        if repo.close_retrain_request(session, args.request_id, args.outcome) is None:
            raise NotFound(f"no retrain request {args.request_id!r}")
    engine.dispose()
    print(f"closed {args.request_id}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("retrain", help="retrain requests")
    retrain_sub = p.add_subparsers(dest="retrain_command", required=True)
    p = retrain_sub.add_parser("list", help="retrain requests, oldest first")
    add_connection_flags(p)
    p.add_argument("--model-id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrain_list)
    p = retrain_sub.add_parser("close", help="close an open request (the trainer does this after it ran)")
    add_connection_flags(p)
    p.add_argument("--request-id", required=True)
    p.add_argument("--outcome", default="closed by operator")
    p.set_defaults(func=cmd_retrain_close)
