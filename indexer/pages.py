"""`latent_pages`: one row per latent holding everything its page shows but the contexts' tokens.

A latent's page draws on nine per-latent tables (examples, logits, neighbours, co-activations,
top tokens, explanation patterns, activation histogram, quantile bands) and the `latents` rows of
itself and of the latents it lists. Read table by table that is about ten queries a page; held in
memory it is a server whose memory grows with the width. This table is the page in one
primary-key read: DuckDB fetches the rows of an index scan one by one, so the 70 rows of a
latent's examples cost about four times its one page row (bench/RESULTS.md), and the examples
are in the row too, their activations as the few positions where the latent fires.

It is built inside the index file from the tables already written (SQL, a block of latents at a
time, so memory does not grow with the width), in latent_id order. Each row is one JSON value
(the layout is in `indexer/schema.py`), zlib-compressed: decoding it costs the app a third of
what the same lists as DuckDB LIST or STRUCT columns cost (bench/RESULTS.md, "Wide indexes,
server side").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from indexer import schema as s

BLOCK = 1024  # latents whose pages are made and written at a time (DuckDB: ~0.3 GB)
LEVEL = 3  # zlib's compression level

# Each list of the page: its table, the values of one entry (in the order the JSON arrays hold
# them), the order of the entries, and a filter. `o.explanation` is the listed latent's own.
LISTS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "promoted": ("logits", ("t.token_id", "t.value"), "t.rank", f"t.kind = '{s.PROMOTED}'"),
    "suppressed": ("logits", ("t.token_id", "t.value"), "t.rank", f"t.kind = '{s.SUPPRESSED}'"),
    "neighbours": ("neighbours", ("t.other_id", "t.cosine", "o.explanation"), "t.rank", ""),
    "coactive": (
        "coactivations",
        ("t.other_id", "t.jaccard", "t.count", "o.explanation"),
        "t.rank",
        "",
    ),
    "top_tokens": ("latent_tokens", ("t.token_id", "t.count", "t.mean_activation"), "t.rank", ""),
    "patterns": (
        "explanation_patterns",
        ("t.pattern", "t.precision", "t.recall", "t.n_matches", "t.n_hits"),
        "t.rank",
        "",
    ),
    "histogram": ("activation_histograms", ("t.lower", "t.upper", "t.count"), "t.lower", ""),
    "bands": (
        "quantile_bands",
        ("t.band", "t.rank_from", "t.rank_to", "t.min_activation", "t.max_activation"),
        "t.band DESC",
        "",
    ),
    # an example's activations as their length and the positions and values where not 0
    "examples": (
        "examples",
        (
            "t.kind",
            "t.rank",
            "t.band",
            "t.context_id",
            "t.position",
            "t.activation",
            "len(t.activations)",
            "[i - 1 FOR x, i IN t.activations IF x <> 0]",
            "[x FOR x IN t.activations IF x <> 0]",
        ),
        "t.kind DESC, t.band DESC NULLS FIRST, t.rank",  # top first, then bands from the highest
        "",
    ),
}
# The `latents` columns of the page's own latent (`latent` in the JSON), as the app shows them.
SUMMARY = (
    "latent_id",
    "n_fires",
    "n_contexts",
    "density",
    "log10_density",
    "mean_activation",
    "max_activation",
    "flags",
    "top_token_text",
    "explanation",
    "explanation_precision",
    "explanation_recall",
)


def _list_sql(name: str, first: int, last: int) -> str:
    """One list of every latent in [first, last] (the CTE `p_<name>`): a JSON array per entry."""
    table, values, order, where = LISTS[name]
    named = any(v.startswith("o.") for v in values)
    joined = "LEFT JOIN latents o ON o.latent_id = t.other_id" if named else ""
    conditions = " AND ".join([f"t.latent_id BETWEEN {first} AND {last}", *([where] * bool(where))])
    return (
        f"p_{name} AS (SELECT t.latent_id, list(json_array({', '.join(values)}) ORDER BY {order}) "
        f"AS v FROM {table} t {joined} WHERE {conditions} GROUP BY t.latent_id)"
    )


def block_sql(first: int, last: int) -> str:
    """The `latent_pages` rows of latents first..last (inclusive), in latent_id order."""
    ctes = ", ".join(_list_sql(name, first, last) for name in LISTS)
    summary = ", ".join(f"'{c}', l.{c}" for c in SUMMARY)
    lists = ", ".join(f"'{name}', coalesce(p_{name}.v, []::JSON[])" for name in LISTS)
    joins = " ".join(f"LEFT JOIN p_{name} ON p_{name}.latent_id = l.latent_id" for name in LISTS)
    return (
        f"WITH {ctes} SELECT l.latent_id, json_object('latent', json_object({summary}), {lists}) "
        f"AS page FROM latents l {joins} WHERE l.latent_id BETWEEN {first} AND {last} "
        "ORDER BY l.latent_id"
    )


def compressed(pages: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each page's JSON text zlib-compressed on its own: DuckDB compresses a column of long
    strings with zstd a vector (2,048 rows) at a time, so reading one row would decompress
    2,048 pages (tens of ms); the compressed bytes it stores as they are. Level 3: half the
    time of the default 6 per page at the build, for pages ~5% larger."""
    packed = [zlib.compress(page.encode(), LEVEL) for page in pages.to_pylist()]
    return pa.array(packed, pa.binary())


def page_blocks(connection: Any) -> Iterator[pa.Table]:
    """The `latent_pages` rows, a block of latents at a time, from the tables in `connection`
    (a DuckDB connection to the index being written)."""
    connection.execute("SET enable_progress_bar = false")  # a build prints its own progress
    [(found,)] = connection.execute("SELECT max(latent_id) FROM latents").fetchall()
    last = -1 if found is None else int(found)
    for first in range(0, last + 1, BLOCK):
        rows = connection.sql(block_sql(first, min(first + BLOCK - 1, last))).to_arrow_table()
        ids = rows.column("latent_id").cast(pa.int32())
        yield pa.table({"latent_id": ids, "page": compressed(rows.column("page"))})
