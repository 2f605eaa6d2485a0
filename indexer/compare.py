"""`indexer compare A B`: whether two indexes hold the same rows, table by table.

Two builds of the same SAE over the same activations must agree row for row: after a change to
the code (a refactor must change nothing), between a data-sharded and a single build, or after an
interrupted build was rerun. Rows are compared in a canonical order (ORDER BY every column), so
the order in which a build wrote them does not matter; JSON columns are compared as values.
Columns that say when and where a build ran differ by nature and are left out unless asked.
The tables of the main schema are compared: `latent_documents` among them, but not the text
index DuckDB's FTS extension makes from it in a schema of its own (`fts_main_latent_documents`):
it holds nothing the documents do not, in the extension's layout rather than ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from indexer.schema import TABLE_NAMES
from sae.errors import AtlasError

# When the build ran, how long it took and where it wrote (settings.out): the columns two builds
# of the same inputs may differ in.
VOLATILE = ("created_at", "seconds", "settings.out")
SHOWN = 3  # differing rows printed per table


def _as_is(column: str, value: Any) -> Any:
    return value


def table_rows(
    index: Path,
    *,
    leave_out: Collection[str] = (),
    value: Callable[[str, Any], Any] = _as_is,
) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the index file, its rows in a canonical order (ORDER BY every column),
    without the columns in `leave_out`; `value(column, v)` makes a value comparable."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    try:
        connection = duckdb.connect(str(index), read_only=True)
    except duckdb.Error as exc:
        raise AtlasError(f"{index}: not a readable index ({exc})") from None
    with connection:
        names = [row[0] for row in connection.execute(TABLE_NAMES).fetchall()]
        for name in sorted(names):
            described = connection.execute(f'DESCRIBE "{name}"').fetchall()
            columns = [row[0] for row in described if row[0] not in leave_out]
            listed = ", ".join(f'"{c}"' for c in columns)
            rows = connection.execute(f'SELECT {listed} FROM "{name}" ORDER BY ALL').fetchall()
            tables[name] = [
                tuple(value(column, v) for column, v in zip(columns, row, strict=True))
                for row in rows
            ]
    return tables


@dataclass
class TableDifference:
    table: str
    rows: tuple[int, int]  # in A, in B
    differing: int = 0  # positions at which the canonical rows differ
    examples: list[tuple[Any, Any]] = field(default_factory=list)  # (row of A, row of B)

    def lines(self) -> Iterator[str]:
        a, b = self.rows
        if a != b:
            yield f"{self.table}: {a:,} rows in A, {b:,} in B"
        if self.differing:
            yield f"{self.table}: {self.differing:,} of the rows differ, e.g."
            for left, right in self.examples:
                yield f"  A: {_short(left)}"
                yield f"  B: {_short(right)}"


def compare(
    a: Path, b: Path, *, ignore: Collection[str] = VOLATILE, rel: float = 0.0
) -> list[TableDifference]:
    """What differs between the indexes `a` and `b` (empty: the same rows in every table).

    `ignore` names columns (`column`) or JSON keys inside a column (`column.key`) to leave
    out; floats agree within a relative tolerance `rel` (0: exactly; NaN equals NaN)."""
    columns = {name for name in ignore if "." not in name}
    keys: dict[str, set[str]] = {}
    for name in ignore:
        if "." in name:
            column, key = name.split(".", 1)
            keys.setdefault(column, set()).add(key)

    def comparable(column: str, value: Any) -> Any:
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return value
            if isinstance(value, dict) and column in keys:
                value = {k: v for k, v in value.items() if k not in keys[column]}
        return value

    left = table_rows(a, leave_out=columns, value=comparable)
    right = table_rows(b, leave_out=columns, value=comparable)
    found = []
    for name in sorted(left.keys() | right.keys()):
        x, y = left.get(name, []), right.get(name, [])
        difference = TableDifference(name, (len(x), len(y)))
        for row_a, row_b in zip(x, y, strict=False):
            if not same(row_a, row_b, rel):
                difference.differing += 1
                if len(difference.examples) < SHOWN:
                    difference.examples.append((row_a, row_b))
        if difference.differing or len(x) != len(y):
            found.append(difference)
    return found


def same(x: Any, y: Any, rel: float = 0.0) -> bool:
    """Equal, floats within `rel` (NaN equals NaN), inside rows, lists and JSON values too."""
    if isinstance(x, float) and isinstance(y, float):
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y or (rel > 0 and math.isclose(x, y, rel_tol=rel))
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(same(p, q, rel) for p, q in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[key], y[key], rel) for key in x)
    return bool(x == y)


def _short(row: Any, width: int = 300) -> str:
    text = repr(row)
    return text if len(text) <= width else text[: width - 1] + "…"


def report(a: Path, b: Path, differences: list[TableDifference]) -> list[str]:
    if not differences:
        return [f"{a} and {b} hold the same rows in every table"]
    return [line for difference in differences for line in difference.lines()]
