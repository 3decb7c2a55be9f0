"""``undertow alerts``: the drift alerts the monitor published, newest first."""

from __future__ import annotations

import json

from undertow.models import registry
from undertow.storage import repo
from undertow.worker.cli.common import (
    add_connection_flags,
    add_json_flag,
    command,
    database,
    positive_int,
    settings_from,
)


def cmd_alerts(args) -> int:
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        events = [json.loads(a.cloudevent) for a in repo.alerts(session, args.model_id, args.limit)]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print("no alerts (none raised yet, or all older than UNDERTOW_RETAIN_ALERTS_SECONDS)")
    for e in events:
        d = e["data"]
        # The estimated accuracy has neither feature nor detector: "estimate on accuracy".
        subject = d.get("feature") or ",".join(d.get("drifted_features", [])) or d.get("detector") or "estimate"
        if d.get("metric"):  # concept drift watches the 0/1 error and, with scores, the log loss: say which
            subject = f"{subject} on {d['metric']}"
        # The multivariate check compares z (standard errors) with its threshold, not its raw value.
        measured = "z" if "z" in d else "value"
        numbers = "  ".join(
            f"{k}={d[k]:.4g}"
            for k in ("psi", "ks_statistic", "drifted_share", measured, "threshold")
            if isinstance(d.get(k), (int, float))
        )
        if d.get("segment"):  # a segment's alert: which one
            subject += " [" + ", ".join(f"{k}={v}" for k, v in d["segment"].items()) + "]"
        if d.get("explained_by"):  # the input that explains a concept drift
            subject += f", explained by {d['explained_by'][0]['feature']}"
        print(
            f"{e['time']}  {e['type']:<24} {d['model_id']}@{d['model_version']}  {subject}  "
            f"{d['severity']} ({d['episode']})  {numbers}"
        )
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "alerts", "list drift alerts, newest first", "undertow alerts --model-id churn --limit 20")
    add_connection_flags(p, "db")
    p.add_argument("--model-id", help="only this model's alerts (default: every model's)")
    p.add_argument(
        "--limit", type=positive_int, default=100, help="newest alerts shown, at least 1 (default: %(default)s)"
    )
    add_json_flag(p, "the alerts' CloudEvents as a JSON array")
    p.set_defaults(func=cmd_alerts)
