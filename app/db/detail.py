"""One latent's page: its lists and examples (from `latent_pages`, or table by table), and the
contexts its examples show.

Both readers return `PageLists`, capped the same way, so the page is the same whichever the
index has; `tests/test_index_pages.py` holds them to that for every latent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from app import records as r
from app.db.contexts import Contexts
from app.db.cursors import Cursor
from app.db.examples import StoredExample, shown_examples
from indexer import schema as s

TokenText = Callable[[int], str]  # a token's text by id
ListsReader = Callable[[Cursor, int, TokenText], "PageLists | None"]


class PageLists(NamedTuple):
    """Everything on a latent's page but the contexts of its examples."""

    latent: r.LatentSummary
    examples: list[StoredExample]  # top examples, then the bands from the highest
    quantile_bands: list[r.QuantileBand]
    histogram: list[r.HistogramBin]
    promoted: list[r.LogitEffect]
    suppressed: list[r.LogitEffect]
    neighbours: list[r.RelatedLatent]
    coactive: list[r.RelatedLatent]
    top_tokens: list[r.TokenCount]
    patterns: list[r.PatternRow]


def number(value: Any) -> float | None:
    """SQL NULL (or a NaN an older index may hold) both mean 'no value'."""
    if value is None or value != value:
        return None
    return float(value)


def token_text(vocab: Sequence[str]) -> TokenText:
    def text(token_id: int) -> str:
        return vocab[token_id] if 0 <= token_id < len(vocab) else f"<token {token_id}>"

    return text


def latent_detail(
    cursor: Cursor,
    latent_id: int,
    vocab: Sequence[str],
    *,
    lists_of: ListsReader,
    contexts: Contexts,
    tokens: bool,
) -> r.LatentDetail | None:
    """Everything on a latent's page (None: no such latent); `tokens` adds the per-token
    records the JSON API returns."""
    lists = lists_of(cursor, latent_id, token_text(vocab))
    if lists is None:
        return None
    shown_contexts = contexts.of(cursor, (x.context_id for x in lists.examples))
    shown = shown_examples(lists.examples, shown_contexts, vocab, tokens=tokens)
    return r.LatentDetail(
        latent=lists.latent,
        top_examples=[x for x in shown if x.kind == s.TOP],
        quantile_examples=[x for x in shown if x.kind != s.TOP],
        quantile_bands=lists.quantile_bands,
        histogram=lists.histogram,
        promoted=lists.promoted,
        suppressed=lists.suppressed,
        neighbours=lists.neighbours,
        coactive=lists.coactive,
        top_tokens=lists.top_tokens,
        patterns=lists.patterns,
    )
