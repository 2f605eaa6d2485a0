"""One latent's page, sliced from columns held in memory (part of the db layer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from app import records as r
from app.db.rows import EXAMPLES_CAP
from app.db.slices import ExampleColumns, LatentSlices
from indexer import schema as s

TokenText = Callable[[int], str]


def with_tokens(example: r.Example, vocab: Sequence[str]) -> r.Example:
    """The example with a record per token (text, activation), as the JSON API gives it."""
    token = r.ExampleToken
    pairs = zip(example.token_ids, example.activations, strict=True)
    return replace(example, tokens=[token(t, vocab[t], a) for t, a in pairs])


def latent_detail(
    latent: r.LatentSummary,
    vocab: Sequence[str],
    slices: LatentSlices,
    stored: ExampleColumns,
    *,
    tokens: bool,
) -> r.LatentDetail:
    """Everything on a latent's page, sliced from columns in memory; `tokens` adds the
    per-token records the JSON API returns (pages render from the id and value lists)."""
    latent_id = latent.latent_id
    shown = stored.of(latent_id, cap=EXAMPLES_CAP)
    if tokens:
        shown = [with_tokens(example, vocab) for example in shown]

    def text(token_id: int) -> str:
        return vocab[token_id] if 0 <= token_id < len(vocab) else f"<token {token_id}>"

    effects = slices.logit_effects_of(latent_id, text)
    return r.LatentDetail(
        latent=latent,
        top_examples=[x for x in shown if x.kind == s.TOP],
        quantile_examples=[x for x in shown if x.kind != s.TOP],
        quantile_bands=slices.bands_of(latent_id),
        histogram=slices.histogram_of(latent_id),
        promoted=effects[s.PROMOTED],
        suppressed=effects[s.SUPPRESSED],
        neighbours=slices.neighbours_of(latent_id),
        coactive=slices.coactive_of(latent_id),
        top_tokens=slices.top_tokens_of(latent_id, text),
        patterns=slices.patterns_of(latent_id),
    )
