"""An index read back in latent order, a block of latents at a time: what an export reads.

The app reads one latent's page when asked (app/db/); an export reads every latent once. Both
read the same rows: a latent's `latent_pages` row (its JSON layout is in indexer/schema.py), or,
in an index built before that table, the same JSON made from the tables it is made of
(`indexer.pages.block_sql`), and the contexts its examples show. Memory does not grow with the
width: the build row and the vocabulary (V strings) are read once, pages and their contexts a
block at a time, and DuckDB's cache of the blocks it has read is capped.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from indexer import pages
from indexer import schema as s
from indexer.index_file import is_index
from indexer.shards import read_mark, table_names
from sae.errors import AtlasError

# DuckDB keeps the blocks it has read until this much memory is in use; an export reads every
# block once, so without a cap (its default is 80% of the RAM) the whole file would stay.
MEMORY = "256MB"
Page = dict[str, Any]  # one latent's page, as indexer/schema.py lays out `latent_pages`


def open_index(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the index at `path`; an AtlasError naming it when it is not
    an index this code reads (missing, another file, a shard, another schema version)."""
    if path.is_dir():
        raise AtlasError(f"{path} is a folder; give the index's .duckdb file")
    if not path.is_file():
        raise AtlasError(f"{path}: no such index file")
    if not is_index(path):
        raise AtlasError(f"{path} is not a Latent Atlas index (a file written by `indexer build`)")
    mark = read_mark(path)
    if mark is not None:
        raise AtlasError(
            f"{path} is {mark.describe()}, not an index: put every shard together with "
            "`indexer merge SHARD... --out INDEX` and use that"
        )
    try:
        connection = duckdb.connect(str(path), read_only=True, config={"memory_limit": MEMORY})
        connection.execute("SET enable_progress_bar = false")  # the export prints its own
        versions = connection.execute("SELECT schema_version FROM build LIMIT 1").fetchall()
    except duckdb.Error as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise AtlasError(f"{path} cannot be opened: {lines[0]}") from None
    problem = None
    if not versions:
        problem = f"{path} has an empty build table: rebuild it with `indexer build`"
    elif versions[0][0] != s.SCHEMA_VERSION:
        problem = (
            f"{path} is an index of schema version {versions[0][0]}; this code reads version "
            f"{s.SCHEMA_VERSION}: rebuild it with `indexer build`"
        )
    if problem:
        connection.close()
        raise AtlasError(problem)
    return connection


def build_row(connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The index's one `build` row, by column name (JSON columns as text)."""
    result = connection.execute("SELECT * FROM build LIMIT 1")
    names = [d[0] for d in result.description]
    return dict(zip(names, result.fetchall()[0], strict=True))


def vocab_texts(connection: duckdb.DuckDBPyConnection, *, missing: str) -> list[str]:
    """Every token's text by id, `missing` for an id below the largest that has no row."""
    rows = connection.execute("SELECT token_id, text FROM vocab").fetchall()
    texts = [missing] * (max((token_id for token_id, _ in rows), default=-1) + 1)
    for token_id, text in rows:
        texts[token_id] = text
    return texts


def page_blocks(
    connection: duckdb.DuckDBPyConnection, size: int
) -> Iterator[tuple[int, list[Page]]]:
    """(first, the pages of latents first .. first + size - 1), in latent_id order."""
    stored = s.latent_pages.name in table_names(connection)
    [(found,)] = connection.execute("SELECT max(latent_id) FROM latents").fetchall()
    last = -1 if found is None else int(found)
    for first in range(0, last + 1, size):
        block = (first, min(first + size - 1, last))
        if stored:
            rows = connection.execute(
                "SELECT page FROM latent_pages WHERE latent_id BETWEEN ? AND ? ORDER BY latent_id",
                list(block),
            ).fetchall()
            yield first, [json.loads(zlib.decompress(page)) for (page,) in rows]
        else:  # built before `latent_pages`: the same JSON, made from the tables
            rows = connection.execute(pages.block_sql(*block)).fetchall()
            yield first, [json.loads(page) for _, page in rows]


def contexts_of(
    connection: duckdb.DuckDBPyConnection, context_ids: Iterable[int]
) -> dict[int, list[int]]:
    """The token ids (position 0 included) of the contexts `context_ids`, by id."""
    wanted = sorted(set(context_ids))
    if not wanted:
        return {}
    rows = connection.execute(
        "SELECT context_id, token_ids FROM contexts WHERE context_id IN (SELECT unnest(?))",
        [wanted],
    ).fetchall()
    return dict(rows)
