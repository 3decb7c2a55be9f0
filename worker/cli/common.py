"""What every command shares: connection flags, settings, sessions, stop handling."""
from __future__ import annotations

import argparse
import logging
import signal
from datetime import datetime, timezone

from undertow.storage import db
from undertow.worker.runtime.settings import Settings, load_settings

log = logging.getLogger("undertow")

# Flags that override settings; a command without one of them leaves it to the environment.
_SETTINGS_FLAGS = ("kafka_bootstrap_servers", "db_url", "artifacts_dir", "topic_prefix", "group_id", "metrics_port",
                   "host", "port")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers",
                        help="Kafka bootstrap address (UNDERTOW_KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)")
    parser.add_argument("--db-url", help="SQLAlchemy URL (UNDERTOW_DB_URL, default sqlite:///undertow.db)")
    parser.add_argument("--artifacts-dir", help="artifact store (UNDERTOW_ARTIFACTS_DIR, default ./artifacts)")
    parser.add_argument("--topic-prefix", help="topic prefix (UNDERTOW_TOPIC_PREFIX, default 'undertow.')")
    parser.add_argument("--group-id", help="consumer group (UNDERTOW_GROUP_ID, default undertow-monitor)")


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int,
                        help="serve Prometheus /metrics on this port (UNDERTOW_METRICS_PORT; "
                             "UNDERTOW_METRICS_HOST, default 127.0.0.1)")


def settings_from(args: argparse.Namespace, cls: type[Settings] = Settings) -> Settings:
    """Flags over environment over ``.env`` over defaults, validated once."""
    return load_settings({k: getattr(args, k, None) for k in _SETTINGS_FLAGS}, cls)


def open_sessions(settings: Settings, must_exist: bool = False):
    engine = db.make_engine(settings.db_url, must_exist=must_exist)
    db.migrate(engine)
    return engine, db.make_session_factory(engine)


def install_stop_handlers(stop) -> None:
    """SIGTERM and SIGINT only ask to stop: the service finishes its batch and commits."""
    def handler(signum, _frame):
        log.info("received %s: finishing the batch, then exiting", signal.Signals(signum).name)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
