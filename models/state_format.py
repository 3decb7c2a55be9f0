"""Stored state with its format number beside it, never guessed from its shape.

Quix Streams' rule (a store carries its format version out of band) with
Alembic's idea applied to JSON: each kind of stored state has a pydantic
model of its current format, a number for it, and one upgrade function per
older number (format n to format n + 1). Writers store the number beside the
blob (a column of the same row); readers hand both to ``StateCodec.load``,
which upgrades step by step and validates. Nothing looks at a blob's length
or keys to tell its format.

>>> from pydantic import BaseModel
>>> class Counter(BaseModel):
...     count: int
...     label: str
>>> codec = StateCodec("counter", Counter, current=2, upgrades={1: lambda old: {"count": old[0], "label": "-"}})
>>> codec.load("[3]", 1), codec.load('{"count": 4, "label": "x"}', 2)
(Counter(count=3, label='-'), Counter(count=4, label='x'))
>>> codec.dump(Counter(count=5, label="y"))
('{"count":5,"label":"y"}', 2)
>>> codec.load("{}", 3)
Traceback (most recent call last):
...
undertow.errors.UndertowError: counter state of format 3 is newer than this release reads (format 2): upgrade Undertow
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from undertow.errors import UndertowError

M = TypeVar("M", bound=BaseModel)


class StateCodec(Generic[M]):
    """One kind of stored state: its current model and format number, and the upgrades from older ones."""

    def __init__(self, name: str, model: type[M], current: int, upgrades: Mapping[int, Callable[[Any], Any]]):
        missing = [n for n in range(1, current) if n not in upgrades]
        if current < 1 or missing or any(n >= current or n < 1 for n in upgrades):
            raise ValueError(f"{name}: formats 1..{current - 1} need one upgrade each (missing {missing})")
        self.name, self.model, self.current, self.upgrades = name, model, current, dict(upgrades)

    def dump(self, state: M) -> tuple[str, int]:
        """The blob to store and the format number to store beside it."""
        return state.model_dump_json(), self.current

    def load(self, blob: str, format_number: int) -> M:
        """The state in the current format, from a blob of format ``format_number``."""
        if format_number > self.current:
            raise UndertowError(
                f"{self.name} state of format {format_number} is newer than this release reads "
                f"(format {self.current}): upgrade Undertow"
            )
        if format_number < 1:
            raise UndertowError(f"{self.name} state of format {format_number}: no such format")
        data = json.loads(blob)
        for n in range(format_number, self.current):
            data = self.upgrades[n](data)
        return self.model.model_validate(data)
