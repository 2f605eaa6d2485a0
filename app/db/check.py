"""The start-up read of every table, so that a damaged index file is named before it is served.

DuckDB keeps a checksum per storage block and checks it only when it reads the block, so a
truncated or corrupt file opens fine and fails on the first query that touches a bad block.
Hashing every column of every table makes DuckDB read each block once: it streams (a few
blocks in memory at a time), costs O(file size), and nothing comes back to Python but one
number per column.
"""

from __future__ import annotations

import sqlalchemy as sa

TABLES = "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_every_table(connection: sa.Connection) -> None:
    """Read every block of every table; DuckDB raises on the first one it cannot read."""
    tables = [row[0] for row in connection.exec_driver_sql(TABLES).all()]
    for table in tables:
        # bit_xor needs every value, so no column can be skipped or answered from statistics
        connection.exec_driver_sql(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {_quoted(table)}").all()
