"""``models register`` flags generated from :class:`DriftConfig`: one list of names, defaults and help texts.

A field ``window_size: int`` becomes ``--window-size`` (type int); ``X | None``
the same with X; a ``Literal`` gets its values as choices; a boolean that
defaults to True becomes ``--no-<name>`` (and one that defaults to False
``--<name>``). Help is the field's description and its default.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Literal

from pydantic import ValidationError

from undertow.errors import UndertowError
from undertow.models.drift.config import DriftConfig


def add_drift_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("drift rules (stored with the version; defaults in brackets)")
    for name, field in DriftConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        help_text = f"{field.description} [{default}]"
        kind = _base_type(field.annotation)
        if kind is bool:
            switch = "--no-" + name.replace("_", "-") if default else flag
            group.add_argument(
                switch,
                dest=name,
                action="store_const",
                const=not default,
                help=f"{'turn off: ' if default else ''}{field.description}",
            )
        elif typing.get_origin(kind) is Literal:
            group.add_argument(flag, dest=name, choices=typing.get_args(kind), help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, metavar="N" if kind is int else "X", help=help_text)


def drift_config_from(args: argparse.Namespace) -> DriftConfig:
    """The flags the user gave over the defaults; a rule that does not hold names its flag."""
    given = {name: getattr(args, name) for name in DriftConfig.model_fields if getattr(args, name, None) is not None}
    try:
        return DriftConfig(**given)
    except ValidationError as exc:
        raise UndertowError(
            "; ".join(
                (f"--{e['loc'][0].replace('_', '-')}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
        ) from None


def _base_type(annotation):
    """``int | None`` → int; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (kind,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind
    return annotation
