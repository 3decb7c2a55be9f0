"""The ``undertow`` command line."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError

from storage import db, repo
from storage.errors import UndertowError
from worker.runtime.settings import MonitorSettings, Settings, load_settings

log = logging.getLogger("undertow")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers",
                        help="Kafka bootstrap address (UNDERTOW_KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)")
    parser.add_argument("--db-url", help="SQLAlchemy URL (UNDERTOW_DB_URL, default sqlite:///undertow.db)")
    parser.add_argument("--artifacts-dir", help="artifact store (UNDERTOW_ARTIFACTS_DIR, default ./artifacts)")
    parser.add_argument("--topic-prefix", help="topic prefix (UNDERTOW_TOPIC_PREFIX, default 'undertow.')")
    parser.add_argument("--group-id", help="consumer group (UNDERTOW_GROUP_ID, default undertow-monitor)")


def _settings(args, cls=Settings):
    keys = ("kafka_bootstrap_servers", "db_url", "artifacts_dir", "topic_prefix", "group_id")
    return load_settings({k: getattr(args, k, None) for k in keys}, cls)


def _install_stop_handlers(stop) -> None:
    def handler(signum, _frame):
        log.info("received %s: finishing the batch, then exiting", signal.Signals(signum).name)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_broker(args) -> int:
    import threading

    from worker.dev.broker import EmbeddedBroker
    stopping = threading.Event()
    _install_stop_handlers(stopping.set)
    with EmbeddedBroker(args.host, args.port) as broker:
        print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
        while not stopping.wait(0.2):
            code = broker.poll()
            if code is not None:
                log.error("broker exited with %s", code)
                return 1
    return 0


def cmd_topics_create(args) -> int:
    from worker.runtime.topics import Topics, ensure_topics
    from worker.runtime.transport import make_admin
    settings = _settings(args)
    admin = make_admin(settings)
    try:
        counts = ensure_topics(admin, Topics(settings.topic_prefix), args.partitions)
    finally:
        admin.close()
    for name, n in sorted(counts.items()):
        print(f"{name}\t{n} partitions")
    return 0


def cmd_monitor(args) -> int:
    from worker.monitor.service import Monitor
    monitor = Monitor(_settings(args, MonitorSettings), partitions=args.partitions)
    _install_stop_handlers(monitor.request_stop)
    return monitor.run(until_idle=args.until_idle)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def collect_status(settings) -> dict:
    engine, sessions = _sessions(settings, must_exist=True)
    with sessions.begin() as session:
        models = [{"model_id": m.model_id, "predictions": m.predictions, "labels": m.labels,
                   "duplicates": m.duplicates, "first_event_ts": _iso(m.first_event_ts),
                   "last_event_ts": _iso(m.last_event_ts)} for m in repo.model_stats(session)]
        offsets = {(o.group_id, o.topic, o.partition): {
            "group_id": o.group_id, "topic": o.topic, "partition": o.partition, "stored_offset": o.next_offset,
            "end_offset": None, "lag": None, "gaps": 0, "last_gap": None} for o in repo.all_offsets(session)}
        for gap in repo.partition_gaps(session):
            row = offsets.get((gap.group_id, gap.topic, gap.partition))
            if row is not None:
                row["gaps"] += 1
                row["last_gap"] = {"kind": gap.kind, "detail": gap.detail, "detected_at": _iso(gap.detected_at)}
        dead = [{"source_topic": d.source_topic, "count": d.count, "last_error": d.last_error}
                for d in repo.dead_letter_stats(session)]
        windows: dict[tuple[str, str], dict] = {}
        for r in repo.latest_window_results(session):
            w = windows.setdefault((r.model_id, r.version), {
                "model_id": r.model_id, "version": r.version, "window_index": r.window_index,
                "start_ts": _iso(r.start_ts), "end_ts": _iso(r.end_ts), "n": r.n, "features": {}})
            w["features"][r.feature] = {"psi": r.psi, "ks_statistic": r.ks_statistic, "ks_pvalue": r.ks_pvalue,
                                        "chi2_pvalue": r.chi2_pvalue, "missing_share": r.missing_share,
                                        "severity": r.severity}
        joins = [{"model_id": j.model_id, "pending_predictions": j.pending_predictions,
                  "pending_labels": j.pending_labels, "joined": j.joined,
                  "expired_predictions": j.expired_predictions, "expired_labels": j.expired_labels,
                  "evicted_predictions": j.evicted_predictions, "evicted_labels": j.evicted_labels}
                 for j in repo.all_join_stats(session)]
        concept = [{"model_id": c.model_id, "version": c.version, "labels": c.labels,
                    "mean_error": c.error_sum / c.labels if c.labels else None, "in_episode": c.in_episode,
                    "episodes": c.episodes, "silenced_alarms": c.silenced_alarms}
                   for c in repo.all_concept_states(session)]
        requests = [{"request_id": r.request_id, "model_id": r.model_id, "version": r.version,
                     "status": r.status, "requested_at": _iso(r.created_ts)}
                    for r in repo.retrain_requests(session) if r.status == "open"]
    engine.dispose()
    partitions, reachable = _with_log_ends(settings, offsets)
    return {"models": models, "last_windows": list(windows.values()), "label_join": joins,
            "concept": concept, "open_retrain_requests": requests, "partitions": partitions, "dead_letters": dead,
            "broker_reachable": reachable}


BROKER_PROBE_TIMEOUT_S = 3.0


def _with_log_ends(settings, offsets: dict) -> tuple[list[dict], bool]:
    """Stored offsets beside the log ends, plus every input partition the monitor never stored.

    With the broker down this answers within about BROKER_PROBE_TIMEOUT_S,
    lag unknown, and says so in one line.
    """
    from worker.runtime.topics import Topics
    from worker.runtime.transport import TransientError, log_end_offsets
    topics = Topics(settings.topic_prefix)
    group = settings.group_for("monitor")
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # the client logs every failed connection attempt
    try:
        ends = log_end_offsets(settings, [(o["topic"], o["partition"]) for o in offsets.values()],
                               timeout_s=BROKER_PROBE_TIMEOUT_S, topics=[topics.predictions, topics.labels])
        reachable = True
    except TransientError as exc:
        log.warning("%s: log ends and lag unknown", exc)
        ends, reachable = {}, False
    finally:
        kafka_log.setLevel(level)
    for topic, partition in ends:
        if topic in (topics.predictions, topics.labels) and (group, topic, partition) not in offsets:
            offsets[(group, topic, partition)] = {
                "group_id": group, "topic": topic, "partition": partition, "stored_offset": None,
                "end_offset": None, "lag": None, "gaps": 0, "last_gap": None}
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
    status = collect_status(_settings(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print("models:")
    for m in status["models"] or [{"model_id": "(none yet)"}]:
        print("  " + "  ".join(f"{k}={v}" for k, v in m.items()))
    for w in status["last_windows"]:
        print(f"last window of {w['model_id']}@{w['version']}: #{w['window_index']} n={w['n']} "
              f"{w['start_ts']} .. {w['end_ts']}")
        for name, f in w["features"].items():
            ks = "" if f["ks_statistic"] is None else f"  ks={f['ks_statistic']:.3f} (p={f['ks_pvalue']:.2g})"
            print(f"    {name:<20} psi={f['psi']:.3f}{ks}  missing={f['missing_share']:.2%}  {f['severity']}")
    for j in status["label_join"]:
        print(f"label join of {j['model_id']}: joined={j['joined']} waiting predictions={j['pending_predictions']} "
              f"labels={j['pending_labels']} expired={j['expired_predictions']}/{j['expired_labels']} "
              f"evicted={j['evicted_predictions']}/{j['evicted_labels']}")
    for c in status["concept"]:
        mean = "-" if c["mean_error"] is None else f"{c['mean_error']:.4g}"
        print(f"concept drift of {c['model_id']}@{c['version']}: labels={c['labels']} mean error={mean} "
              f"{'IN EPISODE' if c['in_episode'] else 'stable'} episodes={c['episodes']}")
    for r in status["open_retrain_requests"]:
        print(f"open retrain request {r['request_id']} for {r['model_id']}@{r['version']} since {r['requested_at']}")
    print("partitions:")
    for o in status["partitions"]:
        lag = "?" if o["lag"] is None else o["lag"]
        note = "  (stored offset beyond the log end: the log started again)" if o.get("beyond_log_end") else ""
        gaps = f"  gaps={o['gaps']} (last: {o['last_gap']['detail']})" if o["gaps"] else ""
        print(f"  {o['topic']}[{o['partition']}]  stored={o['stored_offset']}  end={o['end_offset']}  "
              f"lag={lag}{note}{gaps}")
    for d in status["dead_letters"]:
        print(f"dead letters from {d['source_topic']}: {d['count']} (last: {d['last_error']})")
    return 0


def cmd_demo(args) -> int:
    """Broker, topics, a registered reference, a drifting sample stream, the monitor drained, then status."""
    from kafka import KafkaProducer

    from worker.dev.broker import EmbeddedBroker
    from worker.dev.sample import SampleStream, encode, write_reference_csv
    from worker.monitor.service import Monitor
    from worker.runtime.topics import Topics, ensure_topics
    from worker.runtime.transport import make_admin
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="undertow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as broker:
        common = ["--bootstrap-servers", broker.bootstrap_servers, "--db-url", f"sqlite:///{workdir / 'undertow.db'}",
                  "--artifacts-dir", str(workdir / "artifacts")]
        settings = _settings(build_parser().parse_args(["status", *common]), MonitorSettings)
        print(f"embedded broker on {broker.bootstrap_servers}; state in {workdir / 'undertow.db'}")
        stream = SampleStream(seed=7)
        write_reference_csv(stream, workdir / "reference.csv")
        main(["models", "register", *common, "--model-id", "housing", "--reference", str(workdir / "reference.csv"),
              "--target", "target", "--prediction-column", "prediction"])
        topics = Topics(settings.topic_prefix)
        admin = make_admin(settings)
        ensure_topics(admin, topics, 3)
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, enable_idempotence=False)
        quarter = args.events // 4
        pairs = [*stream.events(2 * quarter), *stream.events(quarter, start_index=2 * quarter, shift=1.5),
                 *stream.events(args.events - 3 * quarter, start_index=3 * quarter, shift=1.5, concept_shift=1.0)]
        for i, (prediction, _) in enumerate(pairs):
            key = prediction["model_id"].encode()
            producer.send(topics.predictions, key=key, value=encode(prediction))
            if i >= 500:  # labels arrive 500 predictions late
                producer.send(topics.labels, key=key, value=encode(pairs[i - 500][1]))
        for _, label in pairs[-500:]:
            producer.send(topics.labels, key=b"housing", value=encode(label))
        producer.send(topics.predictions, key=b"housing", value=b"{not json")
        producer.flush()
        producer.close()
        print(f"produced {args.events} predictions (x0 shifted by 1.5 sd after {2 * quarter}; labels off by 1.0 "
              f"after {3 * quarter}), their labels 500 predictions late, and 1 malformed record")
        monitor = Monitor(settings, partitions=3)
        _install_stop_handlers(monitor.request_stop)
        code = monitor.run(until_idle=3.0)
        print()
        main(["status", *common])
        print("\nalerts:")
        main(["alerts", *common])
        print("\nretrain requests:")
        main(["retrain", "list", *common])
    return code


def _sessions(settings, must_exist: bool = False):
    engine = db.make_engine(settings.db_url, must_exist=must_exist)
    db.migrate(engine)
    return engine, db.make_session_factory(engine)


def cmd_models_register(args) -> int:
    from pydantic import ValidationError

    from models import registry
    from models.ids import check_id
    from models.profile import ProfileError
    from models.reference import load_reference
    settings = _settings(args)
    # Everything the user typed is checked before anything is read or written.
    check_id(args.model_id, "--model-id")
    if args.version is not None:
        check_id(args.version, "--version")
    try:
        config = registry.DriftConfig(**{k: getattr(args, k) for k in _DRIFT_FLAGS if getattr(args, k) is not None})
    except ValidationError as exc:
        raise registry.RegistryError("; ".join(
            (f"--{e['loc'][0].replace('_', '-')}: " if e["loc"] else "") + e["msg"] for e in exc.errors())) from None
    try:
        reference = load_reference(args.reference, args.target, args.prediction_column)
    except ProfileError as exc:
        raise ProfileError(f"--reference: {exc}") from None
    if args.artifact:
        registry.check_model_file(Path(args.artifact))  # before the database is created or touched
    engine, sessions = _sessions(settings)
    with sessions.begin() as session:
        row = registry.register(
            session, model_id=args.model_id, version=args.version, profile=reference.profile,
            artifacts_dir=Path(settings.artifacts_dir), artifact=Path(args.artifact) if args.artifact else None,
            drift_config=config, baseline_error=reference.baseline_error, error_sample=reference.error_sample, data_sha256=reference.data_sha256,
            card={"intended_use": {"description": args.description}} if args.description else None)
        summary = {"model_id": row.model_id, "version": row.version, "stage": row.stage,
                   "features": json.loads(row.feature_schema), "artifact_sha256": row.artifact_sha256,
                   "baseline_error": reference.baseline_error, "drift_config": config.model_dump()}
    engine.dispose()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_models_list(args) -> int:
    from models import registry
    engine, sessions = _sessions(_settings(args), must_exist=True)
    with sessions.begin() as session:
        rows = [{"model_id": r.model_id, "version": r.version, "stage": r.stage,
                 "artifact_sha256": r.artifact_sha256, "registered_at": _iso(r.created_at)}
                for r in registry.list_versions(session, args.model_id)]
    engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    for r in [] if args.json else rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


def cmd_alerts(args) -> int:
    engine, sessions = _sessions(_settings(args), must_exist=True)
    with sessions.begin() as session:
        events = [json.loads(a.cloudevent) for a in repo.alerts(session, args.model_id, args.limit)]
    engine.dispose()
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        d = e["data"]
        subject = d.get("feature") or ",".join(d.get("drifted_features", [])) or d.get("detector", "")
        numbers = "  ".join(f"{k}={d[k]:.4g}" for k in ("psi", "ks_statistic", "drifted_share", "value")
                            if isinstance(d.get(k), (int, float)))
        print(f"{e['time']}  {e['type']:<24} {d['model_id']}@{d['model_version']}  {subject}  "
              f"{d['severity']} ({d['episode']})  {numbers}")
    return 0


def cmd_retrain_list(args) -> int:
    engine, sessions = _sessions(_settings(args), must_exist=True)
    with sessions.begin() as session:
        rows = [json.loads(r.cloudevent) | {"status": r.status, "outcome": r.outcome}
                for r in repo.retrain_requests(session, args.model_id)]
    engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    for r in [] if args.json else rows:
        d = r["data"]
        print(f"{r['time']}  {d['request_id']}  {d['model_id']}@{d['model_version']}  {r['status']}  "
              f"{d['reason']}  policy={d['data_policy']}  alerts={','.join(d['alert_ids'])}")
    return 0


def cmd_retrain_close(args) -> int:
    from storage.errors import NotFound
    engine, sessions = _sessions(_settings(args), must_exist=True)
    with sessions.begin() as session:
        if repo.close_retrain_request(session, args.request_id, args.outcome) is None:
            raise NotFound(f"no retrain request {args.request_id!r}")
    engine.dispose()
    print(f"closed {args.request_id}")
    return 0


_DRIFT_FLAGS = ("window_size", "hop", "window_seconds", "psi_moderate", "psi_significant", "alpha",
                "dataset_share", "end_after", "ph_delta", "ph_threshold", "cusum_k", "cusum_false_alarm_every",
                "rolling_window", "rolling_step", "rolling_sigmas", "retrain_on_data_drift",
                "retrain_cooldown_seconds", "retrain_data_policy", "retrain_window_pairs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="undertow", description="Drift monitor for models in production.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="manage topics")
    topics_sub = p.add_subparsers(dest="topics_command", required=True)
    p = topics_sub.add_parser("create", help="create the topics (idempotent)")
    _common(p)
    p.add_argument("--partitions", type=int, default=3)
    p.set_defaults(func=cmd_topics_create)

    p = sub.add_parser("monitor", help="run the drift monitor")
    _common(p)
    p.add_argument("--until-idle", type=float, metavar="SECONDS",
                   help="exit once the input topics have given nothing for this long")
    p.add_argument("--partitions", type=int, default=3, help="partitions for topics it has to create")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("status", help="per model counts, per partition offsets and lag")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("models", help="the model registry")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("register", help="register a model version as champion, with its reference profile")
    _common(p)
    p.add_argument("--model-id", required=True)
    p.add_argument("--reference", required=True, help="reference (training) data, CSV or Parquet")
    p.add_argument("--target", help="target column (excluded from features; with --prediction-column gives "
                                    "the baseline error)")
    p.add_argument("--prediction-column", help="the model's predictions on the reference; profiled like a feature")
    p.add_argument("--artifact", help="model file copied into the artifact store, SHA-256 recorded")
    p.add_argument("--version", help="default: the next integer")
    p.add_argument("--description", help="intended use, for the model card")
    p.add_argument("--window-size", type=int, help="predictions per window (default 1000)")
    p.add_argument("--hop", type=int, help="evaluate the last window-size predictions every HOP (hopping)")
    p.add_argument("--window-seconds", type=float, help="tumbling event-time windows of this length instead")
    p.add_argument("--psi-moderate", type=float, help="PSI from which a feature drifts moderately (0.1)")
    p.add_argument("--psi-significant", type=float, help="PSI from which drift is significant (0.25)")
    p.add_argument("--alpha", type=float, help="p-value below which a shift is not noise (0.01)")
    p.add_argument("--dataset-share", type=float, help="share of drifted inputs for dataset drift (0.5)")
    p.add_argument("--end-after", type=int, help="stable windows in a row that end an episode (2)")
    p.add_argument("--ph-delta", type=float, help="Page-Hinkley tolerance, in baseline error sd (0.25)")
    p.add_argument("--ph-threshold", type=float, help="Page-Hinkley alarm level, in baseline error sd (50)")
    p.add_argument("--cusum-k", type=float, help="CUSUM reference value, in baseline error sd (0.5)")
    p.add_argument("--cusum-false-alarm-every", type=float,
                   help="CUSUM threshold for one false alarm per this many labels (1000000)")
    p.add_argument("--rolling-window", type=int, help="labels in the rolling mean error (500)")
    p.add_argument("--rolling-step", type=int, help="labels between rolling evaluations (50)")
    p.add_argument("--rolling-sigmas", type=float, help="standard errors above the baseline mean (4)")
    p.add_argument("--no-retrain-on-data-drift", dest="retrain_on_data_drift", action="store_const",
                   const=False, help="only concept drift asks for retraining")
    p.add_argument("--retrain-cooldown-seconds", type=float, help="event time between requests (86400)")
    p.add_argument("--retrain-data-policy", choices=("rolling", "all"), help="data the trainer uses (rolling)")
    p.add_argument("--retrain-window-pairs", type=int, help="labelled pairs of the rolling policy (50000)")
    p.set_defaults(func=cmd_models_register)
    p = models_sub.add_parser("list", help="registered versions")
    _common(p)
    p.add_argument("--model-id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)

    p = sub.add_parser("alerts", help="list drift alerts, newest first")
    _common(p)
    p.add_argument("--model-id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("retrain", help="retrain requests")
    retrain_sub = p.add_subparsers(dest="retrain_command", required=True)
    p = retrain_sub.add_parser("list", help="retrain requests, oldest first")
    _common(p)
    p.add_argument("--model-id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrain_list)
    p = retrain_sub.add_parser("close", help="close an open request (the trainer does this after it ran)")
    _common(p)
    p.add_argument("--request-id", required=True)
    p.add_argument("--outcome", default="closed by operator")
    p.set_defaults(func=cmd_retrain_close)

    p = sub.add_parser("demo", help="run everything end to end on the embedded defaults")
    p.add_argument("--events", type=int, default=8000)
    p.add_argument("--workdir", help="where the SQLite file goes (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
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
