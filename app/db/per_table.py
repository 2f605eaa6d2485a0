"""A latent's page lists read table by table (part of the db layer).

What `latent_pages` holds, read from the tables it is made of: the reference the page table is
tested against (tests/test_index_pages.py), and how the app serves an index built before
`indexer build` wrote that table. Every query is `WHERE latent_id = ?` on a table clustered by
latent_id, so memory does not grow with the width; but a page costs about ten queries.
"""

from __future__ import annotations

from typing import Any

from app import records as r
from app.db.cursors import Cursor
from app.db.detail import PageLists, TokenText, number
from app.db.examples import StoredExample
from app.db.rows import EXAMPLES_CAP, HISTOGRAM_CAP, RELATED_CAP, summary
from indexer import schema as s


def _list(table: str, columns: str, order: str, cap: int = RELATED_CAP, where: str = "") -> str:
    return (
        f"SELECT {columns} FROM {table} WHERE latent_id = $1 {where} ORDER BY {order} LIMIT {cap}"
    )


LATENT = "SELECT * FROM latents WHERE latent_id = $1"
LOGITS = {
    kind: _list("logits", "token_id, value", "rank", where=f"AND kind = '{kind}'")
    for kind in s.LOGIT_KINDS
}
NEIGHBOURS = _list("neighbours", "other_id, cosine", "rank")
COACTIVE = _list("coactivations", "other_id, jaccard, count", "rank")
TOKENS = _list("latent_tokens", "token_id, count, mean_activation", "rank")
PATTERNS = _list("explanation_patterns", "pattern, precision, recall, n_matches, n_hits", "rank")
HISTOGRAM = _list("activation_histograms", "lower, upper, count", "lower", HISTOGRAM_CAP)
BANDS = _list(
    "quantile_bands", "band, rank_from, rank_to, min_activation, max_activation", "band DESC"
)
EXAMPLES = _list(
    "examples",
    "kind, rank, band, context_id, position, activation, activations",
    "kind DESC, band DESC NULLS FIRST, rank",  # top first, then the bands from the highest
    EXAMPLES_CAP,
)
NAMES = "SELECT latent_id, explanation FROM latents WHERE latent_id IN (SELECT unnest($1))"


def _rows(cursor: Cursor, sql: str, latent_id: int) -> list[tuple[Any, ...]]:
    return list(cursor.execute(sql, [latent_id]).fetchall())


def table_lists(cursor: Cursor, latent_id: int, text: TokenText) -> PageLists | None:
    """The lists of latent `latent_id`'s page, None when the index has no such latent."""
    result = cursor.execute(LATENT, [latent_id])
    found = result.fetchall()
    if not found:
        return None
    latent = summary(dict(zip([d[0] for d in result.description], found[0], strict=True)))
    near, together = _rows(cursor, NEIGHBOURS, latent_id), _rows(cursor, COACTIVE, latent_id)
    listed = sorted({row[0] for row in near + together})
    named = dict(cursor.execute(NAMES, [listed]).fetchall()) if listed else {}
    effects = {
        kind: [r.LogitEffect(t, text(t), v) for t, v in _rows(cursor, sql, latent_id)]
        for kind, sql in LOGITS.items()
    }
    return PageLists(
        latent=latent,
        examples=[StoredExample(*row) for row in _rows(cursor, EXAMPLES, latent_id)],
        quantile_bands=[r.QuantileBand(*row) for row in _rows(cursor, BANDS, latent_id)],
        histogram=[r.HistogramBin(*row) for row in _rows(cursor, HISTOGRAM, latent_id)],
        promoted=effects[s.PROMOTED],
        suppressed=effects[s.SUPPRESSED],
        neighbours=[r.RelatedLatent(o, c, None, named.get(o)) for o, c in near],
        coactive=[r.RelatedLatent(o, j, n, named.get(o)) for o, j, n in together],
        top_tokens=[r.TokenCount(t, text(t), n, m) for t, n, m in _rows(cursor, TOKENS, latent_id)],
        patterns=[
            r.PatternRow(p, number(pr), number(re), m, h)
            for p, pr, re, m, h in _rows(cursor, PATTERNS, latent_id)
        ],
    )
