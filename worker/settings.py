"""One frozen settings object, built at start-up and passed down.

Read from ``UNDERTOW_*`` environment variables, overridden by command-line
flags. Kafka security options pass through as ``UNDERTOW_KAFKA_<OPTION>``
(for example ``UNDERTOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import ConfigError

ENV_PREFIX = "UNDERTOW_"

# kafka-python client options accepted through UNDERTOW_KAFKA_<NAME>.
KAFKA_PASSTHROUGH = (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "sasl_kerberos_service_name", "sasl_kerberos_domain_name", "ssl_cafile", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_crlfile", "ssl_ciphers", "ssl_check_hostname",
)

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    db_url: str = "sqlite:///undertow.db"
    artifacts_dir: Path = Path("./artifacts")
    topic_prefix: str = "undertow."
    group_id: str | None = None
    kafka_options: dict[str, str] = Field(default_factory=dict)
    # Records larger than this are dead-lettered before they are parsed.
    max_event_bytes: int = Field(default=256 * 1024, ge=1024)
    # Event ids remembered per source partition, in records: a retry that
    # arrives within this many records of the original is counted once.
    duplicate_horizon: int = Field(default=1_000_000, ge=1)
    # Join buffer per model: predictions wait this long (event time) for their
    # label and labels for their prediction, at most join_max_pending of each.
    join_ttl_seconds: float = Field(default=7 * 86_400, gt=0)
    join_max_pending: int = Field(default=200_000, ge=100)
    # Joined pairs kept per model as training data (the newest ones).
    pairs_retention: int = Field(default=100_000, ge=100)
    # Events dated further ahead of the monitor's clock are dead-lettered:
    # one event from the year 2999 would otherwise move the event-time
    # watermark and expire every waiting label.
    max_clock_skew_seconds: float = Field(default=3600, gt=0)
    batch_max_records: int = Field(default=2000, ge=1)
    poll_timeout_ms: int = Field(default=500, ge=10)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("no bootstrap server given")
        for server in servers:
            match = _HOST_PORT.match(server)
            if not match or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("db_url")
    @classmethod
    def _check_db_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _TOPIC_CHARS.match(value) or len(value) > 180:
            raise ValueError("may only hold letters, digits, '.', '_' and '-' (at most 180)")
        return value

    def group_for(self, service: str) -> str:
        return self.group_id or f"undertow-{service}"


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, then ``overrides`` (flags; None means unset).

    Raises ConfigError with one line per problem.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    kafka_options: dict[str, str] = {}
    for name in Settings.model_fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None and name != "kafka_options":
            values[name] = env_value
    for option in KAFKA_PASSTHROUGH:
        env_value = environ.get(f"{ENV_PREFIX}KAFKA_{option.upper()}")
        if env_value is not None:
            kafka_options[option] = env_value
    values["kafka_options"] = kafka_options
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
