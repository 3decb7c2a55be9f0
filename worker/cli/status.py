"""``undertow status``: what the monitor has done, read from the database, beside the broker's log ends."""

from __future__ import annotations

import json
import logging

from undertow.models import registry
from undertow.models.drift.drift_state import DEPENDENCE, MULTIVARIATE, PERFORMANCE, load_state
from undertow.models.segment_status import segment_status
from undertow.storage import repo, retention
from undertow.storage.tables import OTHER_UNREGISTERED
from undertow.worker.cli.common import add_connection_flags, database, iso, settings_from
from undertow.worker.monitor.spread.progress import print_spread, spread_status
from undertow.worker.runtime.settings import MonitorSettings

log = logging.getLogger("undertow")


def collect_status(settings: MonitorSettings) -> dict:
    with database(settings, must_exist=True) as sessions, sessions.begin() as session:
        stats = repo.model_stats(session)
        registered = registry.registered(session, [m.model_id for m in stats])
        # With UNDERTOW_WAIT_FOR_REGISTRATION, events of unregistered ids are counted here too: marked.
        models = [
            {
                "model_id": m.model_id,
                "registered": m.model_id in registered,
                "predictions": m.predictions,
                "labels": m.labels,
                "duplicates": m.duplicates,
                "first_event_ts": iso(m.first_event_ts),
                "last_event_ts": iso(m.last_event_ts),
            }
            for m in stats
        ]
        # Registered but not heard from yet: listed, so a model whose producer is not wired up shows.
        versions = registry.list_versions(session)  # read once: the segments below take them too
        silent = sorted({v.model_id for v in versions} - {m.model_id for m in stats})
        models += [
            {
                "model_id": model_id,
                "registered": True,
                "predictions": 0,
                "labels": 0,
                "duplicates": 0,
                "first_event_ts": None,
                "last_event_ts": None,
            }
            for model_id in silent
        ]
        offsets = {
            (o.group_id, o.topic, o.partition): {
                "group_id": o.group_id,
                "topic": o.topic,
                "partition": o.partition,
                "stored_offset": o.next_offset,
                "end_offset": None,
                "lag": None,
                "gaps": 0,
                "last_gap": None,
            }
            for o in repo.all_offsets(session)
        }
        for gap in repo.partition_gaps(session):
            row = offsets.get((gap.group_id, gap.topic, gap.partition))
            if row is not None:
                row["gaps"] += 1
                row["last_gap"] = {"kind": gap.kind, "detail": gap.detail, "detected_at": iso(gap.detected_at)}
        dead = [
            {"source_topic": d.source_topic, "count": d.count, "last_error": d.last_error}
            for d in repo.dead_letter_stats(session)
        ]
        windows = _last_windows(session)
        joins = [
            {
                "model_id": j.model_id,
                "pending_predictions": j.pending_predictions,
                "pending_labels": j.pending_labels,
                "joined": j.joined,
                "expired_predictions": j.expired_predictions,
                "expired_labels": j.expired_labels,
                "evicted_predictions": j.evicted_predictions,
                "evicted_labels": j.evicted_labels,
            }
            for j in repo.all_join_stats(session)
        ]
        concept = [
            {
                "model_id": c.model_id,
                "version": c.version,
                "labels": c.labels,
                "mean_error": c.error_sum / c.labels if c.labels else None,
                "in_episode": c.in_episode,
                "episodes": c.episodes,
                "silenced_alarms": c.silenced_alarms,
            }
            for c in repo.all_concept_states(session)
        ]
        checks = _data_checks(session)
        segments = [s.as_dict() for s in segment_status(session, versions)]
        unregistered = _unregistered(repo.unregistered_models(session))
        mismatches = [
            {
                "model_id": m.model_id,
                "reason": m.reason,
                "predictions": m.predictions,
                "dead_lettered": m.dead_lettered,
                "feature": m.feature,
                "model_version": m.model_version,
                "first_seen_at": iso(m.first_seen_at),
                "last_seen_at": iso(m.last_seen_at),
            }
            for m in repo.schema_mismatches(session)
        ]
        requests = [
            {
                "request_id": r.request_id,
                "model_id": r.model_id,
                "version": r.version,
                "status": r.status,
                "requested_at": iso(r.created_ts),
            }
            for r in repo.retrain_requests(session)
            if r.status == "open"
        ]
        size = retention.database_size(session)
        spread = spread_status(session, settings.spread_merge_wait_seconds)
    partitions, reachable = _with_log_ends(settings, offsets)
    return {
        "models": models,
        "last_windows": list(windows.values()),
        "label_join": joins,
        "data_checks": checks,
        "concept": concept,
        "segments": segments,
        "spread": spread,
        "open_retrain_requests": requests,
        "partitions": partitions,
        "dead_letters": dead,
        "unregistered": unregistered,
        "schema_mismatches": mismatches,
        "broker_reachable": reachable,
        "database_bytes": size,
    }


def _last_windows(session) -> dict[tuple[str, str], dict]:
    windows: dict[tuple[str, str], dict] = {}
    for r in repo.latest_window_results(session):
        w = windows.setdefault(
            (r.model_id, r.version),
            {
                "model_id": r.model_id,
                "version": r.version,
                "window_index": r.window_index,
                "start_ts": iso(r.start_ts),
                "end_ts": iso(r.end_ts),
                "n": r.n,
                "features": {},
            },
        )
        w["features"][r.feature] = {
            "psi": r.psi,
            "ks_statistic": r.ks_statistic,
            "ks_pvalue": r.ks_pvalue,
            "chi2_pvalue": r.chi2_pvalue,
            "missing_share": r.missing_share,
            "severity": r.severity,
        }
    return windows


def _data_checks(session) -> list[dict]:
    """The multivariate, dependence and estimated-performance checks of each version's last window."""
    checks = []
    for stored in repo.drift_states(session):
        version = registry.find_version(session, stored.model_id, stored.version)
        columns = len(json.loads(version.feature_schema or "{}")) if version is not None else 0
        state = load_state(stored, columns)
        row = {"model_id": stored.model_id, "version": stored.version}
        for key, label in (
            (MULTIVARIATE, "multivariate_z"),
            (DEPENDENCE, "dependence_z"),
            (PERFORMANCE, "estimated_accuracy"),
        ):
            check = state.checks.get(key)
            if check is not None:
                row[label] = {"value": check.value, "severity": check.level}
        if len(row) > 2:
            checks.append(row)
    return checks


UNREGISTERED_SHOWN = 10


def _unregistered(rows) -> dict:
    """Events of model ids nobody registered: totals, then the most frequent ids."""
    totals = {
        "model_ids": sum(r.ids for r in rows),
        "predictions": sum(r.predictions for r in rows),
        "labels": sum(r.labels for r in rows),
        "kept_for_join": sum(r.kept for r in rows),
        "expired": sum(r.expired for r in rows),
    }
    top = [
        {
            "model_id": r.model_id,
            "predictions": r.predictions,
            "labels": r.labels,
            "first_seen_at": iso(r.first_seen_at),
            "last_seen_at": iso(r.last_seen_at),
        }
        for r in rows
        if r.model_id != OTHER_UNREGISTERED
    ][:UNREGISTERED_SHOWN]
    return {**totals, "most_frequent": top}


BROKER_PROBE_TIMEOUT_S = 3.0


def _with_log_ends(settings, offsets: dict) -> tuple[list[dict], bool]:
    """Stored offsets beside the log ends, plus every input partition the monitor never stored.

    With the broker down this answers within about BROKER_PROBE_TIMEOUT_S,
    lag unknown, and says so in one line.
    """
    from undertow.worker.runtime.topics import Topics
    from undertow.worker.runtime.transport import TransientError, log_end_offsets

    topics = Topics(settings.topic_prefix)
    group = settings.group_for("monitor")
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # the client logs every failed connection attempt
    try:
        ends = log_end_offsets(
            settings,
            [(o["topic"], o["partition"]) for o in offsets.values()],
            timeout_s=BROKER_PROBE_TIMEOUT_S,
            topics=[topics.predictions, topics.labels],
        )
        reachable = True
    except TransientError as exc:
        log.warning("broker unreachable at %s: log ends and lag unknown (%s)", settings.kafka_bootstrap_servers, exc)
        ends, reachable = {}, False
    finally:
        kafka_log.setLevel(level)
    for topic, partition in ends:
        if topic in (topics.predictions, topics.labels) and (group, topic, partition) not in offsets:
            offsets[(group, topic, partition)] = {
                "group_id": group,
                "topic": topic,
                "partition": partition,
                "stored_offset": None,
                "end_offset": None,
                "lag": None,
                "gaps": 0,
                "last_gap": None,
            }
    for o in offsets.values():
        end = ends.get((o["topic"], o["partition"]))
        if end is not None:
            o["end_offset"] = end
            stored = o["stored_offset"] or 0
            # A stored offset beyond the end: the log started again; the monitor moves to its start.
            o["lag"] = end - stored if end >= stored else None
            o["beyond_log_end"] = end < stored
    return sorted(offsets.values(), key=lambda o: (o["group_id"], o["topic"], o["partition"])), reachable


def cmd_status(args) -> int:
    settings = settings_from(args, MonitorSettings)
    status = collect_status(settings)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for section in (
        _print_models,
        _print_drift,
        _print_joins,
        _print_segments,
        lambda status: print_spread(status["spread"], settings.spread_merge_wait_seconds),
        _print_problems,
        _print_partitions,
        _print_database,
    ):
        section(status)
    return 0


def _print_database(status: dict) -> None:
    # What retention bounds (docs/operations.md, "Retention and database size"); `undertow db prune` applies it.
    print(f"database size: {retention.human_bytes(status['database_bytes'])}")


def _print_models(status: dict) -> None:
    print("models:")
    if not status["models"]:
        print("  (none registered or heard from yet)")
    for m in status["models"]:
        if m["first_event_ts"] is None:
            print(f"  model_id={m['model_id']}  registered, no events yet")
            continue
        print("  " + "  ".join(f"{k}={v}" for k, v in m.items()))


def _print_drift(status: dict) -> None:
    for w in status["last_windows"]:
        print(
            f"last window of {w['model_id']}@{w['version']}: #{w['window_index']} n={w['n']} "
            f"{w['start_ts']} .. {w['end_ts']}"
        )
        for name, f in w["features"].items():
            ks = "" if f["ks_statistic"] is None else f"  ks={f['ks_statistic']:.3f} (p={f['ks_pvalue']:.2g})"
            print(f"    {name:<20} psi={f['psi']:.3f}{ks}  missing={f['missing_share']:.2%}  {f['severity']}")
    for c in status["data_checks"]:
        parts = []
        if "multivariate_z" in c:
            parts.append(f"multivariate z={c['multivariate_z']['value']:.2f} ({c['multivariate_z']['severity']})")
        if "dependence_z" in c:
            parts.append(f"dependence z={c['dependence_z']['value']:.2f} ({c['dependence_z']['severity']})")
        if "estimated_accuracy" in c:
            parts.append(
                f"estimated accuracy={c['estimated_accuracy']['value']:.3f} "
                f"({c['estimated_accuracy']['severity']}, no labels used)"
            )
        print(f"last window checks of {c['model_id']}@{c['version']}: " + "; ".join(parts))


def _print_joins(status: dict) -> None:
    for j in status["label_join"]:
        model_id, _, partition = j["model_id"].partition("@")  # a spread model's join, per partition
        where = f"{model_id} (partition {partition})" if partition else model_id
        print(
            f"label join of {where}: joined={j['joined']} waiting predictions={j['pending_predictions']} "
            f"labels={j['pending_labels']} expired={j['expired_predictions']}/{j['expired_labels']} "
            f"evicted={j['evicted_predictions']}/{j['evicted_labels']}"
        )
    for c in status["concept"]:
        mean = "-" if c["mean_error"] is None else f"{c['mean_error']:.4g}"
        print(
            f"concept drift of {c['model_id']}@{c['version']}: labels={c['labels']} mean error={mean} "
            f"{'IN EPISODE' if c['in_episode'] else 'stable'} episodes={c['episodes']}"
        )
    for r in status["open_retrain_requests"]:
        print(f"open retrain request {r['request_id']} for {r['model_id']}@{r['version']} since {r['requested_at']}")


def _print_segments(status: dict) -> None:
    """One line per segment of a segmented version: its windows and open episodes, its error stream."""
    for s in status["segments"]:
        name = ",".join(f"{c}={v}" for c, v in s["segment"].items())
        head = f"segment {name} of {s['model_id']}@{s['version']}:"
        if not s["monitored"]:
            print(f"{head} not watched ({s['reference_rows']} reference rows, too few for a profile of its own)")
            continue
        data = ", ".join(f"{k} {v}" for k, v in s["open_data_episodes"].items()) or "none open"
        mean = "-" if s["mean_error"] is None else f"{s['mean_error']:.4g}"
        concept = "IN EPISODE" if s["in_concept_episode"] else "stable"
        print(
            f"{head} windows={s['windows']} data drift: {data}; labels={s['labels']} mean error={mean} {concept} "
            f"episodes={s['concept_episodes']}"
        )


def _print_partitions(status: dict) -> None:
    print("partitions:")
    for o in status["partitions"]:
        lag = "?" if o["lag"] is None else o["lag"]
        note = "  (stored offset beyond the log end: the log started again)" if o.get("beyond_log_end") else ""
        gaps = f"  gaps={o['gaps']} (last: {o['last_gap']['detail']})" if o["gaps"] else ""
        stored = "-" if o["stored_offset"] is None else o["stored_offset"]
        end = "?" if o["end_offset"] is None else o["end_offset"]
        print(f"  {o['topic']}[{o['partition']}]  stored={stored}  end={end}  lag={lag}{note}{gaps}")


def _print_problems(status: dict) -> None:
    for d in status["dead_letters"]:
        print(f"dead letters from {d['source_topic']}: {d['count']} (last: {d['last_error']})")
    _print_schema_mismatches(status)
    u = status["unregistered"]
    if u["model_ids"]:
        print(
            f"unregistered model ids: {u['model_ids']:,} ({u['predictions']:,} predictions, {u['labels']:,} labels, "
            f"{u['kept_for_join']:,} kept for the join, {u['expired']:,} of those expired); most frequent: "
            + ", ".join(
                f"{m['model_id']} ({m['predictions'] + m['labels']:,} events, last {m['last_seen_at']})"
                for m in u["most_frequent"]
            )
        )


_REASON_TEXT = {
    "missing": "without feature {f!r}",
    "extra": "with feature {f!r}, not in the schema",
    "type": "with a string for numeric feature {f!r}",
    "label": "label {f}, not one of its classes or values",
}


def _print_schema_mismatches(status: dict) -> None:
    for m in status["schema_mismatches"]:
        fate = f", {m['dead_lettered']:,} dead-lettered" if m["dead_lettered"] else ""
        what = "labels refused" if m["reason"] == "label" else f"predictions {m['reason']}"
        print(
            f"schema mismatches of {m['model_id']}: {m['predictions']:,} {what} "
            f"(newest: {_REASON_TEXT[m['reason']].format(f=m['feature'])}, checked against version "
            f"{m['model_version']}, last {m['last_seen_at']}{fate})"
        )


def add_parsers(sub) -> None:
    p = sub.add_parser("status", help="per model counts, per partition offsets and lag")
    add_connection_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
