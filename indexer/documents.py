"""`latent_documents`: one text document per latent, what text search ranks latents by.

A latent's document is what a reader would search it by, in three fields: its explanation
(the n-gram patterns as `latents.explanation` reads them), its top tokens (the tokens it fires
on most, `latent_tokens`, in rank order) and the text of each of its top examples in a window
around the token where it fires most: WINDOW_BEFORE tokens before it, the token, WINDOW_AFTER
after. Beside each window, where in it the firing token is (its characters), so that a query of
several words can be matched as a phrase around the token the latent fires on.

A latent reads the context before a token (a causal LM), so the window leans left. A dozen
tokens is about a line of code or half a sentence: enough for "raise KeyError" or "import os"
to land in it, short enough that what the latent responds to dominates its document. Measured
on a 4,608-latent index of the Python docs (a phrase of 9 tokens around the firing token of a
top example, 150 of them): its latent is in the first 10 results for 59% with a window of 5
before and 2 after, 63% with 8 and 3, 55% with 12 and 4, whose longer windows bring in more
of every context's text (811k indexed words against 599k for 8 and 3).

The rows are made inside the index file from the tables already written (SQL, a block of
latents at a time, like the pages), so memory does not grow with the width; the text index over
them is indexer/fts.py. The app shows the same window, the snippet of a search result, so a
window is defined here once (`window_sql`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from indexer import schema as s

WINDOW_BEFORE = 8  # tokens before the firing token in a document's example text
WINDOW_AFTER = 3  # and after it
BLOCK = 4096  # latents whose documents are made at a time


def window_sql(position: str, token_ids: str) -> tuple[str, str]:
    """SQL for the first and last position (0-based, inclusive) of the window around
    `position` in the context `token_ids` (SQL expressions of an example and its context)."""
    first = f"greatest({position} - {WINDOW_BEFORE}, 0)"
    last = f"least({position} + {WINDOW_AFTER}, len({token_ids}) - 1)"
    return first, last


def block_sql(first: int, last: int) -> str:
    """The `latent_documents` rows of latents first..last (inclusive), in latent_id order."""
    lo, hi = window_sql("e.position", "c.token_ids")
    return f"""
WITH windowed AS (
    SELECT e.latent_id, e.rank, e.position - {lo} + 1 AS peak,
        unnest(c.token_ids[{lo} + 1 : {hi} + 1]) AS token_id,
        generate_subscripts(c.token_ids[{lo} + 1 : {hi} + 1], 1) AS i
    FROM examples e JOIN contexts c ON c.context_id = e.context_id
    WHERE e.kind = '{s.TOP}' AND e.latent_id BETWEEN {first} AND {last}
), windows AS (
    SELECT w.latent_id, w.rank, string_agg(v.text, '' ORDER BY w.i) AS text,
        coalesce(sum(length(v.text)) FILTER (WHERE w.i < w.peak), 0)::INTEGER AS peak_from,
        coalesce(sum(length(v.text)) FILTER (WHERE w.i <= w.peak), 0)::INTEGER AS peak_to
    FROM windowed w JOIN vocab v ON v.token_id = w.token_id
    GROUP BY w.latent_id, w.rank
), examples_text AS (
    SELECT latent_id, list(text ORDER BY rank) AS examples,
        list(peak_from ORDER BY rank) AS peak_from, list(peak_to ORDER BY rank) AS peak_to
    FROM windows GROUP BY latent_id
), tokens_text AS (
    SELECT t.latent_id, string_agg(trim(v.text), ' ' ORDER BY t.rank) AS top_tokens
    FROM latent_tokens t JOIN vocab v ON v.token_id = t.token_id
    WHERE t.latent_id BETWEEN {first} AND {last}
    GROUP BY t.latent_id
)
SELECT l.latent_id, l.explanation, k.top_tokens, x.examples, x.peak_from, x.peak_to
FROM latents l
LEFT JOIN tokens_text k ON k.latent_id = l.latent_id
LEFT JOIN examples_text x ON x.latent_id = l.latent_id
WHERE l.latent_id BETWEEN {first} AND {last}
ORDER BY l.latent_id
"""


def document_blocks(connection: Any) -> Iterator[pa.Table]:
    """The `latent_documents` rows, a block of latents at a time, from the tables in
    `connection` (a DuckDB connection to the index being written)."""
    [(found,)] = connection.execute("SELECT max(latent_id) FROM latents").fetchall()
    last = -1 if found is None else int(found)
    for first in range(0, last + 1, BLOCK):
        yield connection.sql(block_sql(first, min(first + BLOCK - 1, last))).to_arrow_table()
