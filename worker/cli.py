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

from storage import db, repo
from storage.errors import UndertowError
from worker.settings import load_settings

log = logging.getLogger("undertow")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers",
                        help="Kafka bootstrap address (UNDERTOW_KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)")
    parser.add_argument("--db-url", help="SQLAlchemy URL (UNDERTOW_DB_URL, default sqlite:///undertow.db)")
    parser.add_argument("--artifacts-dir", help="artifact store (UNDERTOW_ARTIFACTS_DIR, default ./artifacts)")
    parser.add_argument("--topic-prefix", help="topic prefix (UNDERTOW_TOPIC_PREFIX, default 'undertow.')")
    parser.add_argument("--group-id", help="consumer group (UNDERTOW_GROUP_ID, default undertow-monitor)")


def _settings(args):
    keys = ("kafka_bootstrap_servers", "db_url", "artifacts_dir", "topic_prefix", "group_id")
    return load_settings({k: getattr(args, k, None) for k in keys})


def _install_stop_handlers(stop) -> None:
    def handler(signum, _frame):
        log.info("received %s: finishing the batch, then exiting", signal.Signals(signum).name)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_broker(args) -> int:
    from worker.broker import EmbeddedBroker
    broker = EmbeddedBroker(args.host, args.port)
    stopping = []
    _install_stop_handlers(lambda: stopping.append(True) or broker.stop())
    with broker:
        print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
        code = broker.wait()
    return 0 if stopping else code


def cmd_topics_create(args) -> int:
    from worker.topics import Topics, ensure_topics
    from worker.transport import make_admin
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
    from worker.monitor import Monitor
    monitor = Monitor(_settings(args), partitions=args.partitions)
    _install_stop_handlers(monitor.request_stop)
    return monitor.run(until_idle=args.until_idle)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def collect_status(settings) -> dict:
    engine = db.make_engine(settings.db_url)
    db.migrate(engine)
    sessions = db.make_session_factory(engine)
    with sessions.begin() as session:
        models = [{"model_id": m.model_id, "predictions": m.predictions, "labels": m.labels,
                   "duplicates": m.duplicates, "first_event_ts": _iso(m.first_event_ts),
                   "last_event_ts": _iso(m.last_event_ts)} for m in repo.model_stats(session)]
        offsets = [{"group_id": o.group_id, "topic": o.topic, "partition": o.partition,
                    "stored_offset": o.next_offset, "end_offset": None, "lag": None}
                   for o in repo.all_offsets(session)]
        dead = [{"source_topic": d.source_topic, "count": d.count, "last_error": d.last_error}
                for d in repo.dead_letter_stats(session)]
    engine.dispose()
    _fill_lag(settings, offsets)
    return {"models": models, "partitions": offsets, "dead_letters": dead}


def _fill_lag(settings, offsets: list[dict]) -> None:
    if not offsets:
        return
    from kafka.errors import KafkaError
    from worker.transport import log_end_offsets
    try:
        ends = log_end_offsets(settings, [(o["topic"], o["partition"]) for o in offsets])
    except (KafkaError, OSError) as exc:
        log.warning("broker unreachable, lag unknown: %s", exc)
        return
    for o in offsets:
        end = ends.get((o["topic"], o["partition"]))
        if end is not None:
            o["end_offset"], o["lag"] = end, max(0, end - o["stored_offset"])


def cmd_status(args) -> int:
    status = collect_status(_settings(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print("models:")
    for m in status["models"] or [{"model_id": "(none yet)"}]:
        print("  " + "  ".join(f"{k}={v}" for k, v in m.items()))
    print("partitions:")
    for o in status["partitions"]:
        lag = "?" if o["lag"] is None else o["lag"]
        print(f"  {o['topic']}[{o['partition']}]  stored={o['stored_offset']}  end={o['end_offset']}  lag={lag}")
    for d in status["dead_letters"]:
        print(f"dead letters from {d['source_topic']}: {d['count']} (last: {d['last_error']})")
    return 0


def cmd_demo(args) -> int:
    """Broker, topics, a sample stream, the monitor drained, then the status."""
    from kafka import KafkaProducer
    from worker.broker import EmbeddedBroker
    from worker.monitor import Monitor
    from worker.sample import SampleStream, encode
    from worker.topics import Topics
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="undertow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as broker:
        settings = load_settings({"kafka_bootstrap_servers": broker.bootstrap_servers,
                                  "db_url": f"sqlite:///{workdir / 'undertow.db'}",
                                  "artifacts_dir": str(workdir / "artifacts")})
        print(f"embedded broker on {broker.bootstrap_servers}; state in {workdir / 'undertow.db'}")
        topics = Topics(settings.topic_prefix)
        monitor = Monitor(settings, partitions=3)
        _install_stop_handlers(monitor.request_stop)
        from worker.topics import ensure_topics
        from worker.transport import make_admin
        admin = make_admin(settings)
        ensure_topics(admin, topics, 3)
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        stream = SampleStream(seed=7)
        for prediction, label in stream.events(args.events):
            key = prediction["model_id"].encode()
            producer.send(topics.predictions, key=key, value=encode(prediction))
            producer.send(topics.labels, key=key, value=encode(label))
        producer.send(topics.predictions, key=b"housing", value=b"{not json")
        producer.flush()
        producer.close()
        print(f"produced {args.events} predictions, {args.events} labels and 1 malformed record")
        code = monitor.run(until_idle=3.0)
        args.json = False
        cmd_status(argparse.Namespace(json=False, kafka_bootstrap_servers=broker.bootstrap_servers,
                                      db_url=settings.db_url, artifacts_dir=None, topic_prefix=None,
                                      group_id=None))
    return code


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

    p = sub.add_parser("demo", help="run everything end to end on the embedded defaults")
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--workdir", help="where the SQLite file goes (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except UndertowError as exc:
        print(f"undertow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
