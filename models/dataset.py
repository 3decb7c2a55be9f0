"""Reading reference data (CSV or Parquet) into columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from undertow.models.profile import ProfileError


def _parse_csv_column(raw: list[str]) -> list[Any]:
    values: list[Any] = [None if v == "" else v for v in raw]
    try:
        return [None if v is None else float(v) for v in values]
    except ValueError:
        return values  # categorical


def read_table(path: str | Path) -> dict[str, list[Any]]:
    """Columns of a CSV (header row, empty cell = missing) or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"reference file {str(path)!r} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ProfileError("reading Parquet needs pyarrow: pip install 'undertow[parquet]'") from None
        columns: dict[str, list[Any]] = pq.read_table(path).to_pydict()
        return columns
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ProfileError(f"{path} is empty") from None
        rows = [row for row in reader if row]  # blank lines carry no record
    if len(set(header)) != len(header):
        raise ProfileError(f"{path}: duplicate column names")
    bad = [i + 2 for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        raise ProfileError(f"{path}: line(s) {bad[:5]} do not have {len(header)} fields")
    return {name: _parse_csv_column([row[i] for row in rows]) for i, name in enumerate(header)}
