"""The rules and sinks of ``undertow notify``: a YAML file validated once, at start-up (docs/notify.md).

Every model is frozen and forbids unknown keys, so a typo is an error that
names it, not a setting silently ignored. Secrets need not be in the file:
``url_env``/``secret_env`` name an environment variable holding the value,
and ``${VAR}`` anywhere in a string is replaced by that variable. Every
problem becomes one ``ConfigError`` line naming the file and the key.

>>> config = parse_config({"sinks": [{"name": "team", "webhook": {"url": "https://example.com/hook"}}]}, "x.yaml")
>>> config.sinks[0].kind, config.sinks[0].group_seconds, config.rules is None
('webhook', 0.0, True)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from undertow.errors import ConfigError
from undertow.worker.runtime.output_events import EVENT_TYPES, RetrainRequested

SINK_KINDS = ("webhook", "slack", "alertmanager")
SINK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a metrics label value and a column value
SEVERITIES = ("stable", "moderate", "significant")
EPISODES = ("started", "escalated", "improved", "changed", "ended", "deployment_gap")
# Keys whose value may come from the environment instead: `<key>_env: VARIABLE`.
FROM_ENV = ("url", "secret")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The CloudEvent types notify reads (alerts and model events; retrain requests go to the trainer).
NOTIFIED_TYPES = tuple(str(cls.model_fields["type"].default) for cls in EVENT_TYPES if cls is not RetrainRequested)
TYPE_PREFIX = "undertow."


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Sink(_Strict):
    url: str
    timeout_seconds: float | None = Field(default=None, gt=0, description="per attempt; default notify_timeout")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every request (e.g. Authorization)")
    group_interval_seconds: float = Field(default=0.0, ge=0, description="digest per model; 0: each event alone")

    @field_validator("url")
    @classmethod
    def _check(cls, value: str) -> str:
        return _check_url(value)


class WebhookSink(_Sink):
    """CloudEvents over HTTP, structured mode; signed with HMAC-SHA256 when a secret is set."""

    secret: SecretStr | None = None

    @field_validator("secret")
    @classmethod
    def _non_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: leave it out, or give a real secret")
        return value


class SlackSink(_Sink):
    """A Slack incoming webhook; a digest per model every minute by default."""

    group_interval_seconds: float = Field(default=60.0, ge=0)


class AlertmanagerSink(_Sink):
    """Alertmanager's API (``<url>/api/v2/alerts``); an ended episode resolves its alert."""

    # An alert whose episode sends nothing for this long resolves by itself (Alertmanager's endsAt).
    resolve_after_seconds: float = Field(default=86_400.0, gt=0)
    generator_url: str | None = None  # the alert's link back (e.g. your `undertow report` page)
    labels: dict[str, str] = Field(default_factory=dict)  # added to every alert (e.g. env: prod)

    @field_validator("generator_url")
    @classmethod
    def _check_generator(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


SinkTarget = WebhookSink | SlackSink | AlertmanagerSink


class SinkConfig(_Strict):
    name: Annotated[str, Field(pattern=SINK_NAME_PATTERN)]
    webhook: WebhookSink | None = None
    slack: SlackSink | None = None
    alertmanager: AlertmanagerSink | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SinkConfig:
        given = [kind for kind in SINK_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"a sink is exactly one of {', '.join(SINK_KINDS)} (given: {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> Literal["webhook", "slack", "alertmanager"]:
        return "webhook" if self.webhook else "slack" if self.slack else "alertmanager"

    @property
    def target(self) -> SinkTarget:
        target = self.webhook or self.slack or self.alertmanager
        assert target is not None  # _one_kind
        return target

    @property
    def group_seconds(self) -> float:
        return self.target.group_interval_seconds


Patterns = Annotated[list[str], Field(min_length=1)]


class Rule(_Strict):
    """Events matching every condition given go to ``sinks`` (an event goes to the sinks of every rule it
    matches). Patterns are shell globs; ``type`` matches with or without the ``undertow.`` prefix."""

    sinks: Annotated[list[str], Field(min_length=1)]
    model_id: Patterns = Field(default_factory=lambda: ["*"])
    type: Patterns = Field(default_factory=lambda: ["*"])
    severity: list[Literal["stable", "moderate", "significant"]] | None = None
    episode: list[Literal["started", "escalated", "improved", "changed", "ended", "deployment_gap"]] | None = None

    @field_validator("model_id", "type", "severity", "episode", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("type")
    @classmethod
    def _types_exist(cls, patterns: list[str]) -> list[str]:
        """A type pattern that matches no event notify reads is a typo (``drfit.*``), not a quiet rule."""
        for pattern in patterns:
            if not any(
                fnmatchcase(t, pattern) or fnmatchcase(t.removeprefix(TYPE_PREFIX), pattern) for t in NOTIFIED_TYPES
            ):
                known = ", ".join(t.removeprefix(TYPE_PREFIX) for t in NOTIFIED_TYPES)
                raise ValueError(f"{pattern!r} matches no event type (the types: {known})")
        return patterns


class NotifyConfig(_Strict):
    sinks: Annotated[list[SinkConfig], Field(min_length=1)]
    rules: list[Rule] | None = None  # None: every event to every sink

    @model_validator(mode="after")
    def _names(self) -> NotifyConfig:
        names = [sink.name for sink in self.sinks]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"sink names must be unique: {', '.join(doubled)} given twice")
        for rule in self.rules or ():
            unknown = [name for name in rule.sinks if name not in names]
            if unknown:
                raise ValueError(f"a rule names sink {unknown[0]!r}, which is not defined (sinks: {', '.join(names)})")
        return self

    def sink(self, name: str) -> SinkConfig:
        for sink in self.sinks:
            if sink.name == name:
                return sink
        raise ConfigError(f"no sink named {name!r} (sinks: {', '.join(s.name for s in self.sinks)})")


def _from_environment(raw: Any, where: str, environ: Mapping[str, str]) -> Any:
    """``${VAR}`` replaced in every string, and ``<key>_env: VAR`` turned into ``<key>: <value of VAR>``."""
    if isinstance(raw, str):

        def value_of(match: re.Match[str]) -> str:
            if match.group(1) not in environ:
                raise ConfigError(f"{where}: environment variable {match.group(1)} is not set")
            return environ[match.group(1)]

        return _VARIABLE.sub(value_of, raw)
    if isinstance(raw, list):
        return [_from_environment(item, f"{where}.{i}", environ) for i, item in enumerate(raw)]
    if not isinstance(raw, dict):
        return raw
    out: dict[Any, Any] = {}
    for key, value in raw.items():
        here = f"{where}.{key}" if where else str(key)
        name = key.removesuffix("_env") if isinstance(key, str) else None
        if name in FROM_ENV and key != name:
            if name in raw:
                raise ConfigError(f"{here}: give {name} or {key}, not both")
            if not isinstance(value, str) or value not in environ:
                raise ConfigError(f"{here}: environment variable {value} is not set")
            out[name] = environ[value]
        else:
            out[key] = _from_environment(value, here, environ)
    return out


class _EveryVariableSet(dict[str, str]):
    """The environment, with a placeholder (a valid URL, a non-blank secret) for every variable not set."""

    def __init__(self, environ: Mapping[str, str]):
        super().__init__(environ)

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return "https://unset.invalid/"


def _problem(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    if not loc:  # a check across keys (a rule naming a sink that is not defined): its message says where
        return str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if len(loc) == 3 and loc[0] == "sinks":
            return f"{where}: unknown sink type {loc[-1]!r} (a sink is one of: {', '.join(SINK_KINDS)})"
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: missing"
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


def parse_config(raw: Any, source: str, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    """A parsed YAML document to a NotifyConfig; ConfigError with one line naming ``source`` otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"notify config {source}: expected a mapping with `sinks:` at the top")
    environ = os.environ if environ is None else environ
    try:
        # The file's shape first, with every variable taken as set: a typo in a key or a sink type is named
        # as such, not as the environment variable its sink would have read.
        NotifyConfig.model_validate(_from_environment(raw, "", _EveryVariableSet(environ)))
        expanded = _from_environment(raw, "", environ)
        return NotifyConfig.model_validate(expanded)
    except ConfigError as exc:
        raise ConfigError(f"notify config {source}: {exc}") from None
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError(f"notify config {source}: {'; '.join(problems[:3])}{more}") from None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read and validate the rules and sinks file."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"notify config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"notify config {path}: not valid YAML{at}: {reason}") from None
    return parse_config(raw, str(path), environ)


def webhook_config(url: str, secret: SecretStr | None) -> NotifyConfig:
    """``--webhook URL [--secret S]``: one sink named ``webhook``, every event to it, each on its own."""
    try:
        return NotifyConfig(sinks=[SinkConfig(name="webhook", webhook=WebhookSink(url=url, secret=secret))])
    except ValidationError as exc:
        raise ConfigError(f"--webhook: {_problem(exc.errors()[0]).split(': ', 1)[-1]}") from None
