"""`indexer merge SHARD... --out INDEX`: a latent-sharded build's shards put together into the
index a single build of every latent writes (the same rows: `indexer compare`).

Each shard holds the rows of its latents (indexer/shards.py), so a table with a `latent_id`
column is concatenated, shard by shard, without knowing what it holds. What is not per latent
is merged by its own rule: `token_latents` keeps each token's best latents of the union of the
shards' lists (each shard's list holds its best, so the union holds the best of all);
`density_histogram` adds up the shards' counts; `contexts` is the union of the contexts that
examples show; `vocab` is the same in every shard; the `build` row's metrics are recomputed
from the merged `latents` rows. The shards are checked to belong together first (one SAE, the
same tokens and settings, every shard of one split once), and an error names the file at fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from indexer import fts, schema
from indexer.config import BuildConfig
from indexer.finalize import summary_metrics
from indexer.index_file import BuildSummary, is_complete_index, is_index, replace_hint
from indexer.shards import LatentSlice, ShardMark, read_mark, table_names
from indexer.store import Rows, write_index
from sae.errors import AtlasError
from sae.outputs import check_output_file

# Settings that say how the work was shared and where the files are, not what the rows hold:
# they may differ between shards, and the index gets a single build's (out: its own path).
SHARING = ("latent_shard", "shard_by")
WHERE = ("out", "sae", "acts")
# Columns of `build` that may differ between the shards (paths on other machines, when and how
# long); every other column must be the same in each, and the index takes the first shard's.
BUILD_MAY_DIFFER = (
    "sae_path",
    "activations",
    "settings",
    "versions",
    "metrics",
    "report",
    "created_at",
    "seconds",
)


class Shard(NamedTuple):
    """A shard file as the merge reads it."""

    path: Path
    mark: ShardMark
    build: dict[str, Any]  # its `build` row
    tables: tuple[str, ...]


def merge_shards(paths: Sequence[Path], out: Path) -> BuildSummary:
    """Write the index of the shards at `paths` (every shard of one build, in any order) to
    `out`: a new path or an index (never a shard nor another kind of file)."""
    started = time.perf_counter()
    if out.is_file() and is_index(out) and (mark := read_mark(out)) is not None:
        raise AtlasError(f"--out {out} is {mark.describe()}; write the index somewhere else")
    check_output_file(
        out, kind="a Latent Atlas index", is_ours=is_complete_index, hint=replace_hint(out)
    )
    fts.extension_path()  # the text index is made last: a missing extension fails now
    shards = in_order([read_shard(Path(p)) for p in paths])
    connection = duckdb.connect()
    try:
        for i, shard in enumerate(shards):
            connection.execute(f"ATTACH '{_quoted(shard.path)}' AS s{i} (READ_ONLY)")
        tables = _merged_tables(connection, shards)
        metrics = _metrics(connection, shards)
        build_seconds = max(float(s.build["seconds"]) for s in shards)
        seconds = build_seconds + time.perf_counter() - started
        tables["build"] = _build_row(shards[0], out, metrics=metrics, seconds=seconds)
        write_index(out, tables)
    finally:
        connection.close()
    return BuildSummary(
        out=str(out),
        seconds=seconds,
        n_tokens=int(shards[0].build["n_tokens"]),
        file_bytes=out.stat().st_size,
        metrics=metrics,
    )


def read_shard(path: Path) -> Shard:
    """The shard at `path`, with an error naming it when it is not one we can merge."""
    if not path.is_file():
        raise AtlasError(f"{path}: no such shard file")
    if not is_index(path):  # it checks the DuckDB magic bytes before opening
        raise AtlasError(f"{path} is not a shard of a Latent Atlas build")
    mark = read_mark(path)
    if mark is None:
        raise AtlasError(
            f"{path} is a complete index, not a shard: merge the files that "
            f"`indexer build --latent-shard I/N` wrote"
        )
    with duckdb.connect(str(path), read_only=True) as connection:
        cursor = connection.execute("SELECT * FROM build")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        tables = tuple(table_names(connection))
    if len(rows) != 1:
        raise AtlasError(f"{path}: its build table has {len(rows)} rows, not 1")
    build = dict(zip(names, rows[0], strict=True))
    if build["schema_version"] != schema.SCHEMA_VERSION:
        raise AtlasError(
            f"{path} is a shard of schema version {build['schema_version']}; this merge writes "
            f"version {schema.SCHEMA_VERSION}: rebuild the shard with this `indexer build`"
        )
    return Shard(path, mark, build, tables)


def in_order(shards: list[Shard]) -> list[Shard]:
    """The shards by number, checked to be every shard of one build exactly once."""
    if not shards:
        raise AtlasError("no shard to merge: give every shard file of the build")
    first = shards[0]
    for shard in shards[1:]:
        _check_together(first, shard)
    n_shards = first.mark.n_shards
    by_number: dict[int, Shard] = {}
    for shard in shards:
        if shard.mark.shard in by_number:
            raise AtlasError(
                f"shard {shard.mark.shard}/{n_shards} given twice: "
                f"{by_number[shard.mark.shard].path} and {shard.path}"
            )
        by_number[shard.mark.shard] = shard
    missing = [str(i) for i in range(n_shards) if i not in by_number]
    if missing:
        given = ", ".join(f"{s.path} ({s.mark.shard}/{n_shards})" for s in shards)
        raise AtlasError(
            f"shard {', '.join(missing)} of {n_shards} missing: give every shard from 0 to "
            f"{n_shards - 1} (given: {given})"
        )
    for shard in by_number.values():
        expected = LatentSlice.of_shard(shard.mark.shard, n_shards, int(shard.build["n_latents"]))
        if (shard.mark.latent_from, shard.mark.latent_to) != (expected.first, expected.stop):
            raise AtlasError(
                f"{shard.path}: latents {shard.mark.latent_from} to {shard.mark.latent_to - 1} "
                f"are not shard {shard.mark.shard}/{n_shards} of {shard.build['n_latents']}"
            )
    return [by_number[i] for i in range(n_shards)]


def _check_together(first: Shard, other: Shard) -> None:
    """Whether `other` is a shard of the same build as `first`; an error naming both if not."""
    a, b = first.build, other.build
    if a["sae_hash"] != b["sae_hash"]:
        raise AtlasError(
            f"{other.path} and {first.path} are shards of different SAEs "
            f"(sae_hash {b['sae_hash'][:12]}… and {a['sae_hash'][:12]}…)"
        )
    if other.mark.n_shards != first.mark.n_shards:
        raise AtlasError(
            f"{other.path} is shard {other.mark.shard}/{other.mark.n_shards} but {first.path} is "
            f"shard {first.mark.shard}/{first.mark.n_shards}: shards of different splits"
        )
    if other.mark.tokens_sha256 != first.mark.tokens_sha256:
        raise AtlasError(f"{other.path} and {first.path} were built over different tokens")
    mine, theirs = _settings(b), _settings(a)
    for key in sorted(mine.keys() | theirs.keys()):
        if mine.get(key) != theirs.get(key):
            raise AtlasError(
                f"{other.path} was built with {key}={mine.get(key)!r} but {first.path} with "
                f"{key}={theirs.get(key)!r}"
            )
    for column in sorted(a.keys() | b.keys()):
        if column not in BUILD_MAY_DIFFER and a.get(column) != b.get(column):
            raise AtlasError(
                f"{other.path} and {first.path} differ in build.{column}: "
                f"{b.get(column)!r} and {a.get(column)!r}"
            )
    if other.tables != first.tables:
        raise AtlasError(
            f"{other.path} holds the tables {', '.join(other.tables)} but {first.path} holds "
            f"{', '.join(first.tables)}"
        )


def _settings(build: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide the rows: all but how the work was shared and the paths."""
    settings = json.loads(build["settings"])
    return {k: v for k, v in settings.items() if k not in SHARING + WHERE}


# --- the tables ----------------------------------------------------------------------------


def _merged_tables(connection: duckdb.DuckDBPyConnection, shards: list[Shard]) -> dict[str, Rows]:
    """Every table but `build`, streamed from the attached shards s0, s1, ..."""
    settings = json.loads(shards[0].build["settings"])
    every = " UNION ALL ".join(f"SELECT * FROM s{i}.{{name}}" for i in range(len(shards)))
    rules: dict[str, Callable[[str], str]] = {
        "vocab": lambda name: f"SELECT * FROM s0.{name}",  # the same LM's in every shard
        "contexts": lambda name: (
            f"SELECT DISTINCT ON (context_id) * FROM ({every.format(name=name)}) "
            "ORDER BY context_id"
        ),
        "density_histogram": lambda name: (
            "SELECT lower, upper, sum(n_latents)::INTEGER AS n_latents "
            f"FROM ({every.format(name=name)}) GROUP BY lower, upper ORDER BY lower"
        ),
        "token_latents": lambda name: (
            "SELECT token_id, (row_number() OVER best - 1)::INTEGER AS rank, latent_id, count, "
            f"mean_activation FROM ({every.format(name=name)}) "
            "WINDOW best AS (PARTITION BY token_id ORDER BY count DESC, latent_id) "
            f"QUALIFY row_number() OVER best <= {int(settings['top_tokens'])} "
            "ORDER BY token_id, rank"
        ),
    }
    out: dict[str, Rows] = {}
    for name in shards[0].tables:
        made_anew = ("build", schema.latent_pages.name, schema.latent_documents.name)
        if name in made_anew or name in schema.shard_metadata.tables:
            continue  # made anew (pages, documents: from the merged tables); only a shard's
        if name in rules:
            out[name] = _reader(connection, [rules[name](name)])
        elif "latent_id" in _column_names(connection, name):
            each = [f"SELECT * FROM s{i}.{name}" for i in range(len(shards))]
            out[name] = _reader(connection, each)  # in shard order: rows by latent, as built
        else:
            raise AtlasError(
                f"{shards[0].path}: no rule to merge table {name}, which is not per latent "
                f"(no latent_id column)"
            )
    return out


def _reader(connection: duckdb.DuckDBPyConnection, queries: list[str]) -> pa.RecordBatchReader:
    """The rows of `queries`, one after the other, a batch at a time: each query runs when the
    writer reaches it, on its own cursor, so no table is ever held whole."""
    empty = connection.sql(f"SELECT * FROM ({queries[0]}) LIMIT 0").to_arrow_table()

    def batches() -> Iterator[pa.RecordBatch]:
        for query in queries:
            cursor = connection.cursor()
            try:
                yield from cursor.sql(query).to_arrow_reader(1 << 16)
            finally:
                cursor.close()

    return pa.RecordBatchReader.from_batches(empty.schema, batches())


def _metrics(connection: duckdb.DuckDBPyConnection, shards: list[Shard]) -> dict[str, Any]:
    """The build row's metrics from every shard's latents, as a single build makes them: the
    density from the exact counts, the scores at the precision they were computed in."""
    n_tokens = max(int(shards[0].build["n_tokens"]), 1)
    parts = [
        connection.execute(
            f"SELECT l.n_fires / {n_tokens} AS density, dead, dense, "
            "coalesce(s.explanation_precision, 'NaN'::DOUBLE) AS p, "
            "coalesce(s.explanation_recall, 'NaN'::DOUBLE) AS r, explanation IS NOT NULL AS e "
            f"FROM s{i}.latents l JOIN s{i}.shard_scores s USING (latent_id) ORDER BY latent_id"
        ).fetchnumpy()
        for i in range(len(shards))
    ]
    column = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}
    n_latents = int(shards[0].build["n_latents"])
    if len(column["density"]) != n_latents:
        raise AtlasError(
            f"the shards hold {len(column['density']):,} latents' rows, not {n_latents:,}"
        )
    return summary_metrics(
        density=column["density"].astype(np.float64),
        dead=column["dead"].astype(bool),
        dense=column["dense"].astype(bool),
        precision=column["p"].astype(np.float64),
        recall=column["r"].astype(np.float64),
        n_explained=int(column["e"].sum()),
        n_sample_contexts=int(shards[0].build["token_sample_contexts"]),
    )


def _build_row(first: Shard, out: Path, *, metrics: dict[str, Any], seconds: float) -> pa.Table:
    """The first shard's build row, with a single build's settings and the merged metrics."""
    settings = json.loads(first.build["settings"])
    defaults = {f.name: f.default for f in fields(BuildConfig) if f.name in SHARING}
    settings.update(defaults, out=str(out))
    row = dict(first.build)
    row.update(
        settings=json.dumps(settings),
        metrics=json.dumps(metrics),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=seconds,
    )
    return pa.table({key: [value] for key, value in row.items()})


# --- DuckDB helpers ------------------------------------------------------------------------


def _column_names(connection: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    found = connection.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = 's0' AND table_name = ?",
        [table],
    ).fetchall()
    return [row[0] for row in found]


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
