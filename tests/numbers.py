"""Comparing recorded results with today's where floating point may differ in the last bits.

Recorded states and alerts were written by the code, NumPy and SciPy of their day; a newer NumPy may sum in
another order (SIMD) and move a float by an ulp or two (seen: numpy 2.4 against the recordings, a z of
1.0000526197439026 against ...028, a calibrated CUSUM threshold 1.7e-10 apart). What the format tests hold is
that the logic is the same; within one environment they still compare bytes where they say so.
"""

from __future__ import annotations

import json
import math
from typing import Any

REL = 1e-8  # far above an ulp's drift, far below any change of logic (thresholds move by 1e-4 at least)


def _parsed(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def differences(a: Any, b: Any, where: str = "", rel: float = REL) -> list[str]:
    """Where ``a`` and ``b`` differ beyond ``rel`` for numbers (JSON text compared parsed)."""
    a, b = _parsed(a), _parsed(b)
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return [f"{where}: keys {sorted(a.keys() ^ b.keys())} differ"]
            return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}", rel)]
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            if len(a) != len(b):
                return [f"{where}: length {len(a)} != {len(b)}"]
            return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", rel)]
        return [] if a == b else [f"{where}: {a!r} != {b!r}"]
    if a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12):
        return []
    return [f"{where}: {a!r} != {b!r}"]


def assert_same(a: Any, b: Any, rel: float = REL) -> None:
    found = differences(a, b, rel=rel)
    assert not found, "; ".join(found[:5])
