"""Write the index: all tables into a temporary DuckDB file, renamed into place at the end.

A killed build leaves at most a stray temporary file (removed by the next build of the same
output) and never touches the index already at `out`, which the app may be serving.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import sqlalchemy as sa

from indexer import documents, fts, pages, schema

DUCKDB_MEMORY = "1GB"  # the writing connection's buffer manager
# DuckDB writes files any release since 0.10.2 reads unless told otherwise, without its newer
# compression; the index is read by the DuckDB it was written with (constraints.txt), so it
# takes this release's storage: a third smaller at 4,608 latents.
STORAGE_VERSION = "latest"
Rows: TypeAlias = (
    pa.Table | pa.RecordBatchReader
)  # a table's rows, whole or streamed a batch at a time


def temporary_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.building-{os.getpid()}")


def remove_stale(out: Path) -> None:
    """Temporary files of earlier builds of `out` that were killed."""
    for stale in out.parent.glob(f".{out.name}.building-*"):
        pid = stale.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue  # another build of the same file is running right now
        _remove(stale)


def _remove(path: Path) -> None:
    """A temporary file of a build, or the folder DuckDB spills into beside it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_index(out: Path, tables: dict[str, Rows]) -> None:
    """Create every table of `schema`, bulk-load `tables` into them, rename into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = temporary_path(out)
    tmp.unlink(missing_ok=True)
    try:
        _write(tmp, tables)
    except BaseException:  # interrupted: nothing half-written stays behind
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal"), tmp.with_name(tmp.name + ".tmp")):
            _remove(leftover)
        raise
    os.replace(tmp, out)


def _write(path: Path, tables: dict[str, Rows]) -> None:
    config = {"storage_compatibility_version": STORAGE_VERSION}
    engine = sa.create_engine(f"duckdb:///{path}", connect_args={"config": config})
    try:
        schema.metadata.create_all(engine)
        if schema.shard.name in tables:  # a shard file: its mark, and what the merge needs
            schema.shard_metadata.create_all(engine)
        raw = engine.raw_connection()
        try:
            connection: Any = raw.driver_connection
            # DuckDB's own cache would grow to most of the RAM while the pages are made; a
            # bounded one spills what it must to a temporary file beside the index instead.
            connection.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
            for name, table in tables.items():
                _insert(connection, name, table)
            if schema.shard.name not in tables:  # a merge makes these for all latents
                _derived(connection)
            for table_name, column in schema.INDEXES:
                connection.execute(
                    f"CREATE INDEX idx_{table_name}_{column} ON {table_name} ({column})"
                )
            connection.execute("CHECKPOINT")
        finally:
            raw.close()
    finally:
        engine.dispose()


def _derived(connection: Any) -> None:
    """The tables made from those just written: the pages, the documents and their text index."""
    for block in pages.page_blocks(connection):
        _insert(connection, schema.latent_pages.name, block)
    for block in documents.document_blocks(connection):
        _insert(connection, schema.latent_documents.name, block)
    fts.create_index(connection)


def _insert(connection: Any, name: str, table: Rows) -> None:
    """Bulk insert through DuckDB's Arrow scan, by column name; a reader's batches stream in."""
    defined = schema.metadata.tables.get(name)
    if defined is None:
        defined = schema.shard_metadata.tables[name]
    known = {c.name for c in defined.columns}
    unknown = set(table.schema.names) - known
    if unknown:
        raise ValueError(f"table {name}: no column(s) {', '.join(sorted(unknown))}")
    columns = ", ".join(f'"{c}"' for c in table.schema.names)
    view = f"incoming_{name}"
    connection.register(view, table)
    try:
        connection.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {view}")
    finally:
        connection.unregister(view)
