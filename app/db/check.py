"""The read of every table that names a damaged index file before it is served.

DuckDB keeps a checksum per storage block and checks it only when it reads the block, so a
truncated or corrupt file opens fine and fails on the first query that touches a bad block.
Hashing every column of every table makes DuckDB read each block once: it streams (a few
blocks in memory at a time), costs O(file size), and nothing comes back to Python but one
number per column.

A small file is read whole before the app starts. A large one (a wide SAE) has its tables whose
size does not grow with the width read before the app starts and the others right after, in the
background (`IndexDB`): the first page does not wait for the file to be read, and damage found
later is answered with the same clear 500 on every request from then on.
"""

from __future__ import annotations

import sqlalchemy as sa

from indexer import schema as s

SMALL_FILE = 64 * 2**20  # bytes: read whole before serving, in well under a second
START_TABLES = ("build", "vocab", "density_histogram")  # read before serving, whatever the size


def _quoted(name: str) -> str:
    """A table's name for SQL: `schema.table` for one outside the main schema."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split(".", 1))


def table_names(connection: sa.Connection) -> list[str]:
    """The tables of the main schema: the index's own."""
    return [row[0] for row in connection.exec_driver_sql(s.TABLE_NAMES).all()]


def stored_tables(connection: sa.Connection) -> list[str]:
    """Every table in the file: the main schema's by name, then the others (the text index's)
    as `schema.table`."""
    others = connection.exec_driver_sql(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name <> 'main' ORDER BY ALL"
    ).all()
    return table_names(connection) + [row[0] for row in others]


def read_tables(connection: sa.Connection, tables: list[str]) -> None:
    """Read every block of `tables`; DuckDB raises on the first one it cannot read."""
    for table in tables:
        # bit_xor needs every value, so no column can be skipped or answered from statistics
        connection.exec_driver_sql(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {_quoted(table)}").all()


def split_tables(tables: list[str], *, file_size: int) -> tuple[list[str], list[str]]:
    """The tables to read before serving a file of `file_size` bytes, and those to read after."""
    if file_size <= SMALL_FILE:
        return tables, []
    return [t for t in tables if t in START_TABLES], [t for t in tables if t not in START_TABLES]
