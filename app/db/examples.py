"""A latent's examples with the contexts they show (part of the db layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from app import records as r
from app.db.contexts import Context


class StoredExample(NamedTuple):
    """An `examples` row as the page uses it."""

    kind: str
    rank: int
    band: int | None
    context_id: int
    position: int
    activation: float
    activations: list[float]  # the latent on every token of the context


def with_tokens(example: r.Example, vocab: Sequence[str]) -> r.Example:
    """The example with a record per token (text, activation), as the JSON API gives it."""
    token = r.ExampleToken
    pairs = zip(example.token_ids, example.activations, strict=True)
    return replace(example, tokens=[token(t, vocab[t], a) for t, a in pairs])


def shown_examples(
    stored: list[StoredExample],
    contexts: dict[int, Context],
    vocab: Sequence[str],
    *,
    tokens: bool,
) -> list[r.Example]:
    """The examples with their contexts; `tokens` adds the per-token records the JSON API
    returns (pages render from the id and value lists)."""
    examples = []
    for x in stored:
        doc_id, token_ids = contexts[x.context_id]
        example = r.Example(
            kind=x.kind,
            rank=x.rank,
            band=x.band,
            context_id=x.context_id,
            doc_id=doc_id,
            position=x.position,
            activation=x.activation,
            tokens=[],
            token_ids=token_ids,
            activations=x.activations,
        )
        examples.append(with_tokens(example, vocab) if tokens else example)
    return examples
