"""A latent's page from its `latent_pages` row: one primary-key read (part of the db layer).

The row is one zlib-compressed JSON object (its layout in `indexer/schema.py`), decoded by the
standard library's C parser; its lists are arrays of arrays, unpacked here into the records the
page shows, an example's activations made whole from the positions where they are not 0.
"""

from __future__ import annotations

import json
import zlib

from app import records as r
from app.db.cursors import Cursor
from app.db.detail import PageLists, TokenText, number
from app.db.examples import StoredExample
from app.db.rows import EXAMPLES_CAP, HISTOGRAM_CAP, RELATED_CAP, summary

PAGE = "SELECT page FROM latent_pages WHERE latent_id = $1"


def _example(
    kind: str,
    rank: int,
    band: int | None,
    context_id: int,
    position: int,
    activation: float,
    length: int,
    where: list[int],
    values: list[float],
) -> StoredExample:
    """An example of the page row: its activations stored as the positions where not 0."""
    activations = [0.0] * length
    for i, value in zip(where, values, strict=True):
        activations[i] = value
    return StoredExample(kind, rank, band, context_id, position, activation, activations)


def page_lists(cursor: Cursor, latent_id: int, text: TokenText) -> PageLists | None:
    """The lists of latent `latent_id`'s page, None when the index has no such latent."""
    rows = cursor.execute(PAGE, [latent_id]).fetchall()
    if not rows:
        return None
    page = json.loads(zlib.decompress(rows[0][0]))
    cap = RELATED_CAP

    def effects(kind: str) -> list[r.LogitEffect]:
        return [r.LogitEffect(t, text(t), v) for t, v in page[kind][:cap]]

    return PageLists(
        latent=summary(page["latent"]),
        examples=[_example(*x) for x in page["examples"][:EXAMPLES_CAP]],
        quantile_bands=[r.QuantileBand(*band) for band in page["bands"][:cap]],
        histogram=[r.HistogramBin(*b) for b in page["histogram"][:HISTOGRAM_CAP]],
        promoted=effects("promoted"),
        suppressed=effects("suppressed"),
        neighbours=[r.RelatedLatent(o, c, None, e) for o, c, e in page["neighbours"][:cap]],
        coactive=[r.RelatedLatent(o, j, n, e) for o, j, n, e in page["coactive"][:cap]],
        top_tokens=[r.TokenCount(t, text(t), n, m) for t, n, m in page["top_tokens"][:cap]],
        patterns=[
            r.PatternRow(p, number(pr), number(re), m, h)
            for p, pr, re, m, h in page["patterns"][:cap]
        ],
    )
