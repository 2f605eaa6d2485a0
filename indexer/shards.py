"""Latent-sharded builds: which latents a shard keeps, and the mark its file carries.

For SAEs wider than one process holds, `indexer build --latent-shard i/N` (or a torchrun rank
under `--shard-by latents`) splits the n latents evenly, shard i keeping [i*n//N, (i+1)*n//N).
A shard reads every token (a TopK code needs every pre-activation) but keeps the accumulators
of its latents only, and makes only their rows; `indexer merge` (indexer/merge.py) puts the N
files together into the index a single build writes. A shard file is an index file with one
more table, `shard`, holding one row: which shard it is and a digest of the tokens it read. The
app refuses to serve it and the merge checks with it that the shards belong together.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from indexer import schema
from sae.errors import AtlasError


class LatentSlice(NamedTuple):
    """The latents [first, stop) of an SAE of `n_latents` that a build keeps."""

    first: int
    stop: int
    n_latents: int

    @classmethod
    def every(cls, n_latents: int) -> LatentSlice:
        return cls(0, n_latents, n_latents)

    @classmethod
    def of_shard(cls, shard: int, n_shards: int, n_latents: int) -> LatentSlice:
        """Shard `shard` (from 0) of an even split into `n_shards`."""
        if not 0 <= shard < n_shards:
            raise AtlasError(
                f"latent shard {shard}/{n_shards}: shards count from 0 to {n_shards - 1}"
            )
        if n_shards > n_latents:
            raise AtlasError(f"cannot split {n_latents:,} latents into {n_shards:,} shards")
        return cls(shard * n_latents // n_shards, (shard + 1) * n_latents // n_shards, n_latents)

    @property
    def size(self) -> int:
        return self.stop - self.first

    @property
    def ids(self) -> range:
        return range(self.first, self.stop)

    @property
    def is_every(self) -> bool:
        return self.size == self.n_latents


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/N' → (i, N): shard i (from 0) of N. A ValueError names the flag and the value."""
    parts = spec.split("/")
    try:
        shard, n_shards = (int(p) for p in parts) if len(parts) == 2 else (-1, 0)
    except ValueError:
        shard, n_shards = -1, 0
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(
            f"latent_shard must be I/N with 0 <= I < N (shards count from 0), got {spec!r}"
        )
    return shard, n_shards


def tokens_digest(token_ids: np.ndarray, *, rows: int = 1 << 16) -> str:
    """sha256 of every context's token ids: shards built over other tokens do not merge."""
    digest = hashlib.sha256()
    for first in range(0, len(token_ids), rows):
        digest.update(np.ascontiguousarray(token_ids[first : first + rows], np.int64).data)
    return digest.hexdigest()


def shard_row(shard: int, n_shards: int, latents: LatentSlice, *, digest: str) -> pa.Table:
    """The `shard` table of a shard file: one row."""
    return pa.table(
        {
            "shard": pa.array([shard], pa.int32()),
            "n_shards": pa.array([n_shards], pa.int32()),
            "latent_from": pa.array([latents.first], pa.int32()),
            "latent_to": pa.array([latents.stop], pa.int32()),
            "tokens_sha256": [digest],
        }
    )


def scores(latents: pa.Table) -> pa.Table:
    """The `shard_scores` of a shard from its `latents` rows before they are written (float64;
    the index stores them as float32)."""
    return latents.select(["latent_id", "explanation_precision", "explanation_recall"])


class ShardMark(NamedTuple):
    """What a shard file's `shard` table says about it."""

    shard: int
    n_shards: int
    latent_from: int
    latent_to: int
    tokens_sha256: str

    def describe(self) -> str:
        return (
            f"shard {self.shard}/{self.n_shards} of a latent-sharded build "
            f"(latents {self.latent_from:,} to {self.latent_to - 1:,})"
        )


def read_mark(path: Path) -> ShardMark | None:
    """The shard mark of a DuckDB file of ours, None when it has none (an index)."""
    with duckdb.connect(str(path), read_only=True) as connection:
        if schema.shard.name not in table_names(connection):
            return None
        listed = ", ".join(ShardMark._fields)
        rows = connection.execute(f"SELECT {listed} FROM shard").fetchall()
    if len(rows) != 1:
        raise AtlasError(f"{path}: its shard table has {len(rows)} rows, not 1; rebuild the shard")
    return ShardMark(*rows[0])


def table_names(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """The tables of the connection's own database, by name."""
    return [row[0] for row in connection.execute(schema.TABLE_NAMES).fetchall()]


def not_servable(path: Path, mark: ShardMark) -> str:
    """Why the app does not serve a shard file, and what to do instead."""
    return (
        f"{path} is {mark.describe()}, not an index: put every shard together with "
        f"`indexer merge SHARD... --out INDEX` and serve that"
    )


class Plan(NamedTuple):
    """How one process of `indexer build` shares the work with the others."""

    latents: LatentSlice  # whose accumulators and rows it keeps
    shard: int | None  # the shard file it writes (None: it makes an index, or data for one)
    n_shards: int
    read_rank: int  # it reads chunks read_rank, read_rank + read_world, ...
    read_world: int


def plan(*, latent_shard: str, shard_by: str, rank: int, world: int, n_latents: int) -> Plan:
    """This process's share: a latent shard (`--latent-shard I/N`, or its torchrun rank under
    `--shard-by latents`: every chunk, a slice of the latents), or a slice of the chunks with
    every latent (data-sharded under torchrun; everything in a single build)."""
    if latent_shard:
        if world > 1:
            raise AtlasError(
                "--latent-shard builds one shard in one process; under torchrun give "
                "--shard-by latents and each rank builds the shard of its rank"
            )
        shard, n_shards = parse_shard(latent_shard)
        return Plan(LatentSlice.of_shard(shard, n_shards, n_latents), shard, n_shards, 0, 1)
    if world > 1 and shard_by == "latents":
        return Plan(LatentSlice.of_shard(rank, world, n_latents), rank, world, 0, 1)
    return Plan(LatentSlice.every(n_latents), None, 1, rank, world)


def rank_shard_path(out: Path, shard: int, n_shards: int) -> Path:
    """Where torchrun rank `shard` writes its shard of the index `out`, for rank 0 to merge."""
    return out.with_name(f".{out.name}.shard-{shard}-of-{n_shards}")
