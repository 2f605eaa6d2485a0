"""What an index file is: the summary a build or a merge prints, and the checks that a file is
one of our indexes (a DuckDB file with our `build` table) and a complete one (not a shard)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.shards import read_mark


@dataclass(frozen=True)
class BuildSummary:
    out: str
    seconds: float
    n_tokens: int
    file_bytes: int
    metrics: dict[str, Any]
    what: str = "index"  # or "shard I/N (latents A to B)"

    def lines(self) -> list[str]:
        m = self.metrics
        density = m["median_density"]
        precision, recall = m["median_explanation_precision"], m["median_explanation_recall"]
        return [
            f"{self.what} {self.out}: {self.file_bytes / 2**20:.1f} MiB, {self.n_tokens:,} tokens "
            f"in {self.seconds:.1f} s ({self.n_tokens / max(self.seconds, 1e-9):,.0f} tok/s)",
            f"latents: {m['alive']:,} alive, {m['dead']:,} dead, {m['dense']:,} dense "
            f"(of {m['n_latents']:,}); median density "
            + ("-" if density is None else f"{density:.2e}"),
            f"explanations: {m['explained']:,} latents; median held-out precision "
            + ("-" if precision is None else f"{precision:.2f}")
            + ", recall "
            + ("-" if recall is None else f"{recall:.2f}"),
        ]


DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file, after a checksum


def is_index(path: Path) -> bool:
    """Whether `path` is a Latent Atlas index: a DuckDB file with our `build` table.

    The magic bytes come first, so no other file is ever opened as a database.
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(12)[8:] != DUCKDB_MAGIC:
                return False
    except OSError:
        return False
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as connection:
            found = connection.execute(
                "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'build' "
                "AND column_name IN ('schema_version', 'sae_hash')"
            ).fetchone()
    except duckdb.Error:
        return False  # damaged, or a storage version this DuckDB cannot read: not provably ours
    return found is not None and found[0] == 2


REPLACE_HINT = "choose another path, or remove the file yourself"


def replace_hint(path: Path) -> str:
    """What to do about a file that is not provably an index: the usual words, or, for a
    DuckDB file in a storage format this DuckDB cannot read (an index an earlier Latent Atlas
    wrote with DuckDB 2.0, say), that it must be removed before building again."""
    import duckdb

    try:
        with open(path, "rb") as handle:
            if handle.read(12)[8:] != DUCKDB_MAGIC:
                return REPLACE_HINT
        duckdb.connect(str(path), read_only=True).close()
    except OSError:
        return REPLACE_HINT
    except duckdb.Error as exc:
        if "version number" in str(exc):
            return (
                f"it is a DuckDB file in a storage format DuckDB {duckdb.__version__} cannot "
                "read, such as an index an earlier Latent Atlas wrote with DuckDB 2.0; remove "
                "it yourself and build again"
            )
    return REPLACE_HINT


def is_complete_index(path: Path) -> bool:
    """An index `indexer build` or `indexer merge` wrote, not a shard: what merging may replace."""
    return is_index(path) and read_mark(path) is None
