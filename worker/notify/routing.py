"""Which sinks an event goes to: the rules of the config, or every sink when it has none.

Alertmanager sinks take alerts only: an alert there fires and resolves, and a
promotion or a rejected candidate is news, not a condition that holds.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from undertow.worker.notify.config import TYPE_PREFIX, NotifyConfig, Rule, SinkConfig


def _any(value: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def matches(rule: Rule, event: Any) -> bool:
    """Whether ``event`` (a CloudEvent model) meets every condition of ``rule``.

    A severity or episode condition never matches a model event, which has neither.
    """
    if not _any(event.subject, rule.model_id):
        return False
    if not (_any(event.type, rule.type) or _any(event.type.removeprefix(TYPE_PREFIX), rule.type)):
        return False
    severity = getattr(event.data, "severity", None)
    if rule.severity is not None and severity not in rule.severity:
        return False
    episode = getattr(event.data, "episode", None)
    return rule.episode is None or episode in rule.episode


def is_alert(event: Any) -> bool:
    return hasattr(event.data, "episode")


class Router:
    def __init__(self, config: NotifyConfig):
        self.config = config

    def sinks_for(self, event: Any) -> list[SinkConfig]:
        """The sinks ``event`` goes to, in the order the config lists them."""
        if self.config.rules is None:
            wanted = {sink.name for sink in self.config.sinks}
        else:
            wanted = {name for rule in self.config.rules if matches(rule, event) for name in rule.sinks}
        return [
            sink
            for sink in self.config.sinks
            if sink.name in wanted and (sink.kind != "alertmanager" or is_alert(event))
        ]
