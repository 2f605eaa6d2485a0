"""Helpers that several test files share (fixtures stay in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import duckdb

from indexer import schema


def _as_is(column: str, value: Any) -> Any:
    return value


def index_rows(
    index: Path,
    *,
    leave_out: Collection[str] = (),
    value: Callable[[str, Any], Any] = _as_is,
) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the index, its rows in a canonical order (ORDER BY every column), without
    the columns in `leave_out`; `value(column, v)` makes a value comparable (e.g. NaN)."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with duckdb.connect(str(index), read_only=True) as connection:
        for name, table in schema.metadata.tables.items():
            columns = [c.name for c in table.columns if c.name not in leave_out]
            listed = ", ".join(f'"{c}"' for c in columns)
            rows = connection.execute(f"SELECT {listed} FROM {name} ORDER BY ALL").fetchall()
            tables[name] = [
                tuple(value(column, v) for column, v in zip(columns, row, strict=True))
                for row in rows
            ]
    return tables
