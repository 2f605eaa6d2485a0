"""A synthetic index of any width, for the server's benchmarks at 65k-1M latents.

    python bench/wide_index.py --latents 262144 --out runs/wide/wide-262144.duckdb [--contexts 3200]

The rows are random but schema-valid and of realistic counts per latent: 20 top examples and
10 quantile bands of 5 (each example a context's activation row), 10 promoted and 10 suppressed
logits, 10 neighbours, 10 co-activations, 10 top tokens, 3 patterns, a histogram of ~10 bins.
Tables are written in the order `indexer build` writes them, each clustered by latent_id the way
it is (examples: every top example, then every quantile example; logits: promoted, then
suppressed), so DuckDB's zone maps prune a `WHERE latent_id = ?` as they do on a real index.
Rows are generated and inserted in blocks of latents, through the indexer's own writer
(`indexer.store.write_index`: the same temporary file, indexes and `latent_pages` as a build),
so memory does not grow with the width and the layout is the real one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer import schema as s
from indexer.store import write_index

BLOCK = 8192  # latents generated and inserted at a time
CONTEXT_LENGTH = 63  # tokens of a context, position 0 included
VOCAB = 49_152
TOP, BANDS, PER_BAND, RELATED, PATTERNS, BINS = 20, 10, 5, 10, 3, 10


def _blocks(n_latents: int) -> Iterator[np.ndarray]:
    for first in range(0, n_latents, BLOCK):
        yield np.arange(first, min(first + BLOCK, n_latents), dtype=np.int32)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(list(keys))


def _repeat(ids: np.ndarray, times: int) -> np.ndarray:
    return np.repeat(ids, times).astype(np.int32)


def _ranks(ids: np.ndarray, times: int) -> np.ndarray:
    return np.tile(np.arange(times, dtype=np.int32), len(ids))


def _latents(ids: np.ndarray) -> pa.Table:
    rng = _rng(1, int(ids[0]))
    m = len(ids)
    n_fires = rng.integers(1, 5000, m)
    density = n_fires / 200_000
    flags = np.where(rng.random(m) < 0.02, "dense", "")
    return pa.table(
        {
            "latent_id": ids,
            "n_fires": n_fires,
            "n_contexts": np.minimum(n_fires, 3200),
            "density": density,
            "log10_density": np.log10(density),
            "mean_activation": rng.random(m) + 0.5,
            "max_activation": rng.random(m) * 4 + 1.5,
            "dead": np.zeros(m, bool),
            "dense": flags == "dense",
            "special_share": rng.random(m) * 0.1,
            "repeat_share": rng.random(m) * 0.1,
            "flags": flags,
            "top_token_text": [f" tok{t}" for t in rng.integers(0, VOCAB, m)],
            "explanation": [f"[␣tok{t}] | [x{t % 97}]" for t in rng.integers(0, VOCAB, m)],
            "explanation_precision": rng.random(m),
            "explanation_recall": rng.random(m),
        }
    )


def _activation_rows(rng: np.random.Generator, n: int, peak: np.ndarray) -> pa.ListArray:
    """`n` context rows of activations: zeros but at a few positions, float16 values as stored."""
    values = np.zeros((n, CONTEXT_LENGTH), np.float32)  # (n, T)
    where = rng.integers(1, CONTEXT_LENGTH, (n, 3))  # (n, 3)
    values[np.arange(n)[:, None], where] = rng.random((n, 3)) * peak[:, None]
    values[np.arange(n), where[:, 0]] = peak
    values = values.astype(np.float16).astype(np.float32)
    offsets = np.arange(0, (n + 1) * CONTEXT_LENGTH, CONTEXT_LENGTH, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _example_rows(
    ids: np.ndarray, per_latent: int, n_contexts: int, *, kind: str, seed: int
) -> pa.Table:
    rng = _rng(seed, int(ids[0]))
    n = len(ids) * per_latent
    peak = (rng.random(n) * 4 + 0.1).astype(np.float16).astype(np.float32)
    activations = _activation_rows(rng, n, peak)
    ranks = _ranks(ids, per_latent)
    band = None if kind == s.TOP else (ranks // PER_BAND).astype(np.int32)
    return pa.table(
        {
            "latent_id": _repeat(ids, per_latent),
            "kind": [kind] * n,
            "rank": ranks if kind == s.TOP else ranks % PER_BAND,
            "band": pa.nulls(n, pa.int32()) if band is None else band,
            "context_id": rng.integers(0, n_contexts, n).astype(np.int32),
            "position": rng.integers(1, CONTEXT_LENGTH, n).astype(np.int32),
            "activation": peak,
            "activations": activations,
        }
    )


def _bands(ids: np.ndarray) -> pa.Table:
    band = _ranks(ids, BANDS)
    low = np.sort(_rng(3, int(ids[0])).random((len(ids), BANDS)), axis=1).reshape(-1)
    return pa.table(
        {
            "latent_id": _repeat(ids, BANDS),
            "band": band,
            "rank_from": band / BANDS,
            "rank_to": (band + 1) / BANDS,
            "min_activation": low,
            "max_activation": low + 0.05,
        }
    )


def _histograms(ids: np.ndarray) -> pa.Table:
    edges = np.logspace(-1, 1, BINS + 1)
    return pa.table(
        {
            "latent_id": _repeat(ids, BINS),
            "lower": np.tile(edges[:-1], len(ids)),
            "upper": np.tile(edges[1:], len(ids)),
            "count": _rng(4, int(ids[0])).integers(1, 500, len(ids) * BINS),
        }
    )


def _ranked(ids: np.ndarray, seed: int, other: str, value: str, **extra: Any) -> pa.Table:
    rng = _rng(seed, int(ids[0]))
    n = len(ids) * RELATED
    high = VOCAB if other == "token_id" else int(extra.pop("n_latents"))
    columns: dict[str, Any] = {
        "latent_id": _repeat(ids, RELATED),
        "rank": _ranks(ids, RELATED),
        other: rng.integers(0, high, n).astype(np.int32),
        value: -np.sort(-rng.random((len(ids), RELATED)), axis=1).reshape(-1),
    }
    if extra.get("count"):
        columns["count"] = rng.integers(1, 1000, n)
    if extra.get("kind"):
        columns["kind"] = [extra["kind"]] * n
    return pa.table(columns)


def _patterns(ids: np.ndarray) -> pa.Table:
    rng = _rng(5, int(ids[0]))
    n = len(ids) * PATTERNS
    tokens = rng.integers(0, VOCAB, n)
    precision = rng.random(n)
    return pa.table(
        {
            "latent_id": _repeat(ids, PATTERNS),
            "rank": _ranks(ids, PATTERNS),
            "pattern": [f"[␣tok{t}]" for t in tokens],
            "token_ids": [[int(t)] for t in tokens],
            "precision": pa.array(precision, mask=precision < 0.05),  # NULL: never matched
            "recall": pa.array(rng.random(n), mask=precision < 0.05),
            "n_matches": rng.integers(1, 100, n),
            "n_hits": rng.integers(0, 50, n),
        }
    )


def _vocab() -> pa.Table:
    ids = np.arange(VOCAB, dtype=np.int32)
    return pa.table({"token_id": ids, "text": [f" tok{t}" for t in ids], "special": ids < 3})


def _contexts(n_contexts: int) -> pa.Table:
    rng = _rng(6)
    tokens = rng.integers(0, VOCAB, (n_contexts, CONTEXT_LENGTH)).astype(np.int32)
    offsets = np.arange(0, (n_contexts + 1) * CONTEXT_LENGTH, CONTEXT_LENGTH, dtype=np.int32)
    return pa.table(
        {
            "context_id": np.arange(n_contexts, dtype=np.int32),
            "doc_id": [f"doc{i // 8}" for i in range(n_contexts)],
            "start": np.arange(n_contexts, dtype=np.int64) * CONTEXT_LENGTH,
            "token_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens.reshape(-1))),
        }
    )


def _token_latents(n_latents: int) -> Iterator[pa.Table]:
    for first in range(0, VOCAB, BLOCK):
        tokens = np.arange(first, min(first + BLOCK, VOCAB), dtype=np.int32)
        rng = _rng(7, first)
        n = len(tokens) * RELATED
        yield pa.table(
            {
                "token_id": _repeat(tokens, RELATED),
                "rank": _ranks(tokens, RELATED),
                "latent_id": rng.integers(0, n_latents, n).astype(np.int32),
                "count": rng.integers(1, 1000, n),
                "mean_activation": rng.random(n),
            }
        )


def _density_histogram() -> pa.Table:
    lower = np.arange(-8, 0, 0.25)
    return pa.table({"lower": lower, "upper": lower + 0.25, "n_latents": np.arange(len(lower))})


def _build_row(n_latents: int, n_contexts: int) -> pa.Table:
    config = {"d_in": 576, "n_latents": n_latents, "k": 32, "activation": "topk"}
    row: dict[str, Any] = {
        "build_id": 0,
        "schema_version": s.SCHEMA_VERSION,
        "library_version": "0.1.0",
        "model": "synthetic",
        "layer": 0,
        "hook": "synthetic",
        "sae_path": "synthetic",
        "sae_format": "ours",
        "sae_hash": "0" * 64,
        "sae_config": json.dumps(config),
        "n_latents": n_latents,
        "k": 32,
        "d_model": 576,
        "corpus": "synthetic",
        "activations": "synthetic",
        "context_length": CONTEXT_LENGTH,
        "n_contexts": n_contexts,
        "n_tokens": n_contexts * (CONTEXT_LENGTH - 1),
        "n_sink_tokens": 0,
        "sink_norm_limit": -1.0,
        "token_sample_contexts": n_contexts,
        "settings": json.dumps({"synthetic": True}),
        "versions": json.dumps({}),
        "metrics": json.dumps({"n_latents": n_latents}),
        "report": None,
        "created_at": "2026-01-01T00:00:00+00:00",
        "seconds": 0.0,
    }
    return pa.Table.from_pylist([row])


def _per_latent(n_latents: int, make: Callable[[np.ndarray], pa.Table]) -> Iterator[pa.Table]:
    return (make(ids) for ids in _blocks(n_latents))


def table_blocks(n_latents: int, n_contexts: int) -> Iterator[tuple[str, Iterator[pa.Table]]]:
    """Each table and its blocks, in the order (and row order) `indexer build` writes them."""
    n = n_latents

    def examples() -> Iterator[pa.Table]:
        for kind, per_latent, seed in ((s.TOP, TOP, 8), (s.QUANTILE, BANDS * PER_BAND, 9)):
            for ids in _blocks(n):
                yield _example_rows(ids, per_latent, n_contexts, kind=kind, seed=seed)

    def logits() -> Iterator[pa.Table]:
        for kind, seed in ((s.PROMOTED, 10), (s.SUPPRESSED, 11)):
            for ids in _blocks(n):
                yield _ranked(ids, seed, "token_id", "value", kind=kind)

    yield "vocab", iter([_vocab()])
    yield "contexts", iter([_contexts(n_contexts)])
    yield "latents", _per_latent(n, _latents)
    yield "examples", examples()
    yield "quantile_bands", _per_latent(n, _bands)
    yield "activation_histograms", _per_latent(n, _histograms)
    yield "density_histogram", iter([_density_histogram()])
    yield "logits", logits()
    yield (
        "neighbours",
        _per_latent(n, lambda ids: _ranked(ids, 12, "other_id", "cosine", n_latents=n)),
    )
    yield (
        "coactivations",
        _per_latent(
            n, lambda ids: _ranked(ids, 13, "other_id", "jaccard", n_latents=n, count=True)
        ),
    )
    yield (
        "latent_tokens",
        _per_latent(n, lambda ids: _ranked(ids, 14, "token_id", "mean_activation", count=True)),
    )
    yield "token_latents", _token_latents(n)
    yield "explanation_patterns", _per_latent(n, _patterns)
    yield "build", iter([_build_row(n_latents, n_contexts)])


def _streamed(blocks: Iterator[pa.Table]) -> pa.RecordBatchReader:
    """A table's blocks as one stream, made as DuckDB reads them."""
    first = next(blocks)
    rest = (batch for block in blocks for batch in block.cast(first.schema).to_batches())
    return pa.RecordBatchReader.from_batches(
        first.schema, itertools.chain(first.to_batches(), rest)
    )


def write_wide_index(out: Path, *, n_latents: int, n_contexts: int = 3200) -> None:
    """Write a synthetic index of `n_latents` latents to `out` (which must not exist)."""
    if out.exists():
        raise SystemExit(f"{out} exists: give another --out or remove it")
    tables = {name: _streamed(blocks) for name, blocks in table_blocks(n_latents, n_contexts)}
    write_index(out, tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latents", type=int, required=True, help="the index's width")
    parser.add_argument("--contexts", type=int, default=3200, help="contexts (default 3200)")
    parser.add_argument("--out", type=Path, required=True, help="the .duckdb file to write")
    args = parser.parse_args()
    started = time.perf_counter()
    write_wide_index(args.out, n_latents=args.latents, n_contexts=args.contexts)
    size = os.path.getsize(args.out)
    seconds = time.perf_counter() - started
    print(f"{args.out}: {args.latents:,} latents, {size / 2**20:,.0f} MiB in {seconds:.0f} s")


if __name__ == "__main__":
    main()
