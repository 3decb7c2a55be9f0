"""Commands that run something: the embedded broker, topic creation, the monitor."""
from __future__ import annotations

import logging

from undertow.worker.cli.common import add_connection_flags, add_metrics_flag, install_stop_handlers, settings_from
from undertow.worker.runtime.settings import MonitorSettings

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
    admin = make_admin(settings)
    try:
        counts = ensure_topics(admin, Topics(settings.topic_prefix), args.partitions)
    finally:
        admin.close()
    for name, n in sorted(counts.items()):
        print(f"{name}\t{n} partitions")
    return 0


def cmd_monitor(args) -> int:
    from undertow.worker.monitor.service import Monitor
    monitor = Monitor(settings_from(args, MonitorSettings), partitions=args.partitions)
    install_stop_handlers(monitor.request_stop)
    return monitor.run(until_idle=args.until_idle)


def cmd_serve(args) -> int:
    from undertow.models.ids import check_id
    from undertow.worker.runtime.settings import ServerSettings
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
        return load_champion(make_session_factory(engine), model_id, settings.max_batch_rows,
                             settings.model_threads)
    finally:
        engine.dispose()


def add_parsers(sub) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="manage topics")
    topics_sub = p.add_subparsers(dest="topics_command", required=True)
    p = topics_sub.add_parser("create", help="create the topics (idempotent)")
    add_connection_flags(p)
    p.add_argument("--partitions", type=int, default=3)
    p.set_defaults(func=cmd_topics_create)

    p = sub.add_parser("monitor", help="run the drift monitor")
    add_connection_flags(p)
    p.add_argument("--until-idle", type=float, metavar="SECONDS",
                   help="exit once the input topics have given nothing for this long")
    p.add_argument("--partitions", type=int, default=3, help="partitions for topics it has to create")
    add_metrics_flag(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("serve", help="serve a model's champion over HTTP, emitting prediction events")
    add_connection_flags(p)
    p.add_argument("--model-id", required=True, help="the registered model to serve")
    p.add_argument("--host", help="address to listen on (UNDERTOW_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (UNDERTOW_PORT, default 8000)")
    p.set_defaults(func=cmd_serve)
