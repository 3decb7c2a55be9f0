"""Settings: one frozen object per service, built at start-up and passed down.

Read (pydantic-settings) from ``UNDERTOW_*`` environment variables and an
optional ``.env`` file in the working directory, overridden by command-line
flags. ``Settings`` holds what every command needs (broker, database,
artifacts, topics, Kafka security); ``ServiceSettings`` adds the consume
loop's knobs; each service has its own subclass. Kafka security options are
typed fields named ``UNDERTOW_KAFKA_<OPTION>`` (kafka-python's option
names); passwords are secrets that never appear in ``repr`` or logs.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from undertow.errors import ConfigError
from undertow.storage.retention import Retention
from undertow.worker.runtime.events import DEFAULT_MAX_EVENT_BYTES

ENV_PREFIX = "UNDERTOW_"
log = logging.getLogger(__name__)
_warned: set[str] = set()  # misspelt variables already named by this process

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_KAFKA_PREFIX = "kafka_"


class Settings(BaseSettings):
    """What every command needs: where the broker, the database and the artifacts are."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        # ignore: a .env file serves every service, each reads its own
        frozen=True,
        extra="ignore",
        # NaN and infinity parse as floats; refused as such ("should be a finite number"), not by a bound
        # they only fail by accident (NaN > 0 is false: "should be greater than 0" named the wrong rule).
        allow_inf_nan=False,
    )

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    db_url: str = "sqlite:///undertow.db"
    artifacts_dir: Path = Path("./artifacts")
    topic_prefix: str = "undertow."
    group_id: str | None = None
    # Kafka security, passed to kafka-python under the name after "kafka_".
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_plain_username: str | None = None
    kafka_sasl_plain_password: SecretStr | None = None
    kafka_sasl_kerberos_service_name: str | None = None
    kafka_sasl_kerberos_domain_name: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_password: SecretStr | None = None
    kafka_ssl_crlfile: Path | None = None
    kafka_ssl_ciphers: str | None = None
    kafka_ssl_check_hostname: bool | None = None

    # HMAC-SHA256 key of control events (retrain requests, model events): with it
    # set, producers sign them and consumers dead-letter unsigned or forged ones.
    signing_key: SecretStr | None = None
    # Optional mirror of training runs and versions to MLflow (pip install 'undertow[mlflow]').
    mlflow_tracking_uri: str | None = None

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        return _non_blank_secret(value)

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

    @property
    def kafka_options(self) -> dict[str, Any]:
        """The security options that are set, as kafka-python takes them (secrets revealed)."""
        options = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.startswith(_KAFKA_PREFIX) and name != "kafka_bootstrap_servers" and value is not None:
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                options[name[len(_KAFKA_PREFIX) :]] = str(value) if isinstance(value, Path) else value
        return options

    def group_for(self, service: str) -> str:
        return self.group_id or f"undertow-{service}"


def _non_blank_secret(value: SecretStr | None) -> SecretStr | None:
    # An empty key would sign and verify like any other: a typo in a deployment must not pass as security.
    if value is not None and not value.get_secret_value().strip():
        raise ValueError("is empty or blank: unset it, or give a real secret")
    return value


DAY = 86_400


class RetentionSettings(Settings):
    """How long the tables that grow with the stream keep their rows (storage/retention.py), and how often a
    service prunes them. Event time for what the monitor derives from events, wall clock for what services do."""

    retain_windows_seconds: float = Field(default=30 * DAY, gt=0)
    retain_alerts_seconds: float = Field(default=90 * DAY, gt=0)
    retain_retrain_requests_seconds: float = Field(default=180 * DAY, gt=0)
    retain_training_runs_seconds: float = Field(default=365 * DAY, gt=0)
    retain_partition_gaps_seconds: float = Field(default=90 * DAY, gt=0)
    # Wall clock between two prunes of a running service, each in short transactions of its own; 0: never
    # (prune with `undertow db prune` from cron instead).
    prune_interval_seconds: float = Field(default=300, ge=0)

    def retention(self) -> Retention:
        return Retention(
            windows_seconds=self.retain_windows_seconds,
            alerts_seconds=self.retain_alerts_seconds,
            retrain_requests_seconds=self.retain_retrain_requests_seconds,
            training_runs_seconds=self.retain_training_runs_seconds,
            partition_gaps_seconds=self.retain_partition_gaps_seconds,
        )


class ServiceSettings(RetentionSettings):
    """A consuming service: the consume loop's knobs."""

    batch_max_records: int = Field(default=5000, ge=1)
    poll_timeout_ms: int = Field(default=500, ge=10)
    # Prometheus /metrics of the service (off unless a port is given); 0.0.0.0 in a container.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class MonitorSettings(ServiceSettings):
    # Records larger than this are dead-lettered before they are parsed.
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
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
    # Events of a model id that nobody registered (a typo in a producer, a model not yet registered):
    # counted and logged, not kept, unless wait_for_registration keeps them for the join until the
    # model is registered (at most unregistered_max_pending in all, each at most unregistered_ttl_seconds
    # of wall-clock time). Per-id counts are kept for the unregistered_tracked_ids most frequent ids.
    wait_for_registration: bool = False
    unregistered_max_pending: int = Field(default=10_000, ge=0)
    unregistered_ttl_seconds: float = Field(default=3600, gt=0)
    unregistered_tracked_ids: int = Field(default=100, ge=1, le=10_000)
    unregistered_warn_interval_seconds: float = Field(default=3600, gt=0)
    # Predictions whose features do not match their version's schema are counted per model and reason
    # (status, /metrics) and warned about at most once per model and reason per this many seconds.
    schema_warn_interval_seconds: float = Field(default=3600, gt=0)
    # A spread model's merge waits for every partition's partials up to this much event time behind the
    # newest partition; a partition further behind (silent, or its monitor gone) is not waited for, and what
    # it sends later is merged late (counted). Event time, so a replay merges the same way.
    spread_merge_wait_seconds: float = Field(default=30.0, gt=0)


class TrainerSettings(ServiceSettings):
    # Data: the newest labelled pairs are held out (at least gate_min_holdout),
    # after a gap of older pairs that neither side sees.
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)
    gap_fraction: float = Field(default=0.02, ge=0, lt=0.5)
    min_train_pairs: int = Field(default=1000, ge=50)
    # After a concept drift: how long (wall clock) to wait for enough labelled
    # pairs predicted after the change, and how often to look.
    max_wait_seconds: float = Field(default=6 * 3600, ge=0)
    wait_check_seconds: float = Field(default=30, gt=0)
    # The gate (models/gate.py).
    gate_min_holdout: int = Field(default=500, ge=30)
    gate_min_gain: float = 0.0
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1)
    gate_resamples: int = Field(default=1000, ge=100)
    gate_tolerance: float = Field(default=0.10, ge=0)


class NotifySettings(ServiceSettings):
    """``undertow notify``: where its rules and sinks are, and how it retries (docs/notify.md)."""

    # The rules and sinks file (YAML); or one webhook for every event without a file.
    notify_config: Path | None = None
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr | None = None
    # Each attempt: this long at most for the whole request (connect, send, answer), unless a sink sets its own.
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    # Retries: exponential backoff from the initial delay, doubling up to the maximum, with full jitter, or
    # the receiver's Retry-After when it asks for longer. A delivery is dead-lettered after max_attempts
    # attempts, or at its first failed attempt give_up_after_seconds after it was queued.
    notify_max_attempts: int = Field(default=10, ge=1)
    notify_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    notify_backoff_max_seconds: float = Field(default=300.0, gt=0)
    notify_give_up_after_seconds: float = Field(default=3600.0, gt=0)
    # Delivered deliveries are kept this long (an event read again within it is not sent again), dead-lettered
    # ones this long (for `undertow notify list` and `retry`); then deleted.
    notify_retention_seconds: float = Field(default=7 * 86_400, gt=0)
    notify_dead_letter_retention_seconds: float = Field(default=30 * 86_400, gt=0)

    @field_validator("notify_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return _non_blank_secret(value)


class ServerSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_batch_rows: int = Field(default=1000, ge=1)
    # The monitor's limit: the server refuses (422) a row whose event the monitor would dead-letter.
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
    # OpenMP threads inside one prediction: requests already run in parallel on the thread pool.
    model_threads: int = Field(default=1, ge=1)
    # Events wait here for the producer; beyond it they are dropped (counted).
    event_queue_size: int = Field(default=100_000, ge=1)
    # Records handed to the producer and not yet acknowledged (kafka-python 3 has no buffer bound).
    producer_max_pending: int = Field(default=100_000, ge=1)
    producer_max_block_ms: int = Field(default=1000, ge=1)
    # The registry's champion is checked this often, besides every model event.
    registry_check_seconds: float = Field(default=10.0, gt=0)
    shutdown_flush_seconds: float = Field(default=10.0, gt=0)
    # With it set, POST /predict and /labels need "Authorization: Bearer <token>".
    server_token: SecretStr | None = None

    @field_validator("server_token")
    @classmethod
    def _check_server_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _non_blank_secret(value)


SettingsType = TypeVar("SettingsType", bound=Settings)


@overload
def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings: ...
@overload
def load_settings(overrides: Mapping[str, Any] | None, cls: type[SettingsType]) -> SettingsType: ...


def load_settings(overrides: Mapping[str, Any] | None = None, cls: type[Settings] = Settings) -> Settings:
    """Settings from the environment and ``.env``, then ``overrides`` (flags; None means unset).

    Raises ConfigError with one line naming each problem's variable.
    """
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name, meant in misspelt_variables(os.environ, _dotenv_names()):
        if name not in _warned:
            _warned.add(name)
            log.warning("%s is not a setting of any Undertow command and is ignored; did you mean %s?", name, meant)
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def _settings_names() -> set[str]:
    """Every field name (lower case, no prefix) of every settings class."""
    names: set[str] = set()
    classes: list[type[Settings]] = [Settings]
    while classes:
        cls = classes.pop()
        names |= set(cls.model_fields)
        classes += cls.__subclasses__()
    return names


def _dotenv_names() -> list[str]:
    from dotenv import dotenv_values

    path = Path(".env")
    return list(dotenv_values(path)) if path.is_file() else []


def misspelt_variables(environ: Mapping[str, str], more: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``UNDERTOW_*`` names no settings class reads but one nearly spelt so: (name, the setting meant).

    pydantic-settings ignores a variable it does not know (a ``.env`` serves every service, each reads its
    own), so a typo such as ``UNDERTOW_RETAIN_WINDOWS`` (for ..._SECONDS) would otherwise leave the default
    in force without a word. Only near misses are named: an ``UNDERTOW_*`` variable of the user's own (a
    notify file's secret, say) is not a typo.
    """
    known = _settings_names()
    found = []
    for name in sorted({*environ, *more}):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX) :].lower()
        if field in known:
            continue
        # A name cut short (UNDERTOW_RETAIN_WINDOWS for ..._WINDOWS_SECONDS), else one a letter or two off.
        longer = [k for k in known if k.startswith(field + "_")]
        close = longer if len(longer) == 1 else difflib.get_close_matches(field, known, n=1, cutoff=0.8)
        if close:
            found.append((name, ENV_PREFIX + close[0].upper()))
    return found
