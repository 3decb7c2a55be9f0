"""Commands that run something: the embedded broker, topic creation, the monitor."""

from __future__ import annotations

import json
import logging

from undertow.worker.cli.common import (
    add_connection_flags,
    add_json_flag,
    add_metrics_flag,
    command,
    install_stop_handlers,
    positive_int,
    require_broker,
    seconds,
    settings_from,
    unreachable_broker,
)
from undertow.worker.runtime.settings import MonitorSettings, ServerSettings

log = logging.getLogger("undertow")


def cmd_broker(args) -> int:
    import threading

    from undertow.worker.dev.broker import EmbeddedBroker

    stopping = threading.Event()
    install_stop_handlers(stopping.set)
    with EmbeddedBroker(args.host, args.port) as broker:
        print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
        while not stopping.wait(0.2):
            code = broker.poll()
            if code is not None:
                log.error("broker exited with %s", code)
                return 1
    return 0


def cmd_topics_create(args) -> int:
    from undertow.worker.runtime.topics import Topics, ensure_topics
    from undertow.worker.runtime.transport import make_admin

    settings = settings_from(args)
    require_broker(settings)
    admin = make_admin(settings)
    try:
        counts = ensure_topics(admin, Topics(settings.topic_prefix), args.partitions)
    finally:
        admin.close()
    if args.json:
        print(json.dumps([{"topic": name, "partitions": n} for name, n in sorted(counts.items())], indent=2))
    for name, n in [] if args.json else sorted(counts.items()):
        print(f"{name}\t{n} partitions")
    return 0


def cmd_monitor(args) -> int:
    from undertow.worker.monitor.service import Monitor

    settings = settings_from(args, MonitorSettings)
    require_broker(settings)  # before the database is created or migrated
    monitor = Monitor(settings, partitions=args.partitions)
    install_stop_handlers(monitor.request_stop)
    return monitor.run(until_idle=args.until_idle)


def cmd_serve(args) -> int:
    from undertow.models.ids import check_id

    settings = settings_from(args, ServerSettings)
    model_id = check_id(args.model_id)
    # Before uvicorn binds (and before it and FastAPI are even imported, to exit sooner): an unknown id, a
    # champion without an artifact or one that will not load would otherwise answer 503 for ever; here they
    # raise an UndertowError, which cli.main prints as one line with exit code 2.
    served = _first_version(settings, model_id)

    import uvicorn

    from undertow.worker.monitor.model_events import warn_if_unsigned
    from undertow.worker.server.app import create_app

    app = create_app(settings, model_id)
    # The app's follower then finds this version already served and only watches for the next one.
    app.state.slot.current = served
    app.state.metrics.swapped(served.version, "loaded")
    log.info("model %s: serving version %s", model_id, served.version)
    unreachable = unreachable_broker(settings)
    if unreachable is not None:
        # Serving does not wait for Kafka (its events wait in memory, up to UNDERTOW_EVENT_QUEUE_SIZE):
        # one line now, and the client's own retries from here on.
        log.warning(
            "no Kafka broker reachable at %s (%s): serving anyway; prediction events wait in memory "
            "until one is (start one with `undertow broker`)",
            settings.kafka_bootstrap_servers,
            unreachable,
        )
    # The server follows undertow.models too (a model event only makes it re-read the registry's champion).
    warn_if_unsigned(settings, log)
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown: requests finish, the lifespan flushes the producer.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level.lower(), access_log=False)
    return 0


def _first_version(settings, model_id: str):
    """The champion, loaded and warmed up (``follower.load_champion``), on an engine of its own."""
    from undertow.storage.db import make_engine, make_session_factory
    from undertow.worker.server.follower import load_champion

    engine = make_engine(settings.db_url, must_exist=True)
    try:
        return load_champion(make_session_factory(engine), model_id, settings.max_batch_rows, settings.model_threads)
    finally:
        engine.dispose()


def add_parsers(sub) -> None:
    p = command(
        sub,
        "broker",
        "run the embedded Kafka-compatible broker in the foreground, until Ctrl-C",
        "undertow broker --port 9092",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default: %(default)s)")
    p.set_defaults(func=cmd_broker)

    p = command(sub, "topics", "manage the Kafka topics", "undertow topics create --partitions 3")
    topics_sub = p.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")
    p = command(
        topics_sub,
        "create",
        "create the topics, or check the ones there (idempotent)",
        "undertow topics create --bootstrap-servers 127.0.0.1:9092 --partitions 6",
    )
    add_connection_flags(p, "kafka", "topics")
    p.add_argument(
        "--partitions", type=positive_int, default=3, help="partitions of each new topic (default: %(default)s)"
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_topics_create)

    p = command(
        sub,
        "monitor",
        "run the drift monitor: consume predictions and labels, publish alerts",
        "undertow monitor --bootstrap-servers 127.0.0.1:9092 --db-url sqlite:///undertow.db",
    )
    add_connection_flags(p, "kafka", "db", "topics", "group", service="monitor")
    p.add_argument(
        "--until-idle",
        type=seconds,
        metavar="SECONDS",
        help="exit once the input topics have given nothing for this long (default: run until stopped)",
    )
    p.add_argument(
        "--partitions",
        type=positive_int,
        default=3,
        help="partitions of the topics it has to create (default: %(default)s)",
    )
    add_metrics_flag(p)
    p.set_defaults(func=cmd_monitor)

    p = command(
        sub,
        "serve",
        "serve a model's champion over HTTP, emitting prediction events",
        "undertow serve --model-id churn --port 8000",
    )
    add_connection_flags(p, "kafka", "db", "topics")
    p.add_argument("--model-id", required=True, help="the registered model to serve")
    fields = ServerSettings.model_fields
    p.add_argument("--host", help=f"address to listen on (default: {fields['host'].default}; UNDERTOW_HOST)")
    p.add_argument("--port", type=int, help=f"port (default: {fields['port'].default}; UNDERTOW_PORT)")
    p.set_defaults(func=cmd_serve)
