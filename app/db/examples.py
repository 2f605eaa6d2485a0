"""A latent's examples and the contexts they show, in one indexed read (part of the db layer).

`examples` is written clustered by latent_id (top examples, then quantile examples, each in
latent order), so DuckDB answers `WHERE latent_id = ?` from its index on latent_id or the one or
two row groups whose zone maps hold the latent, whatever the width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from app import records as r
from app.db.cursors import Cursor
from app.db.rows import EXAMPLES_CAP

# Top examples first (strongest first), then the quantile bands from the highest.
EXAMPLES = (
    "SELECT e.kind, e.rank, e.band, e.context_id, c.doc_id, e.position, e.activation, "
    "c.token_ids, e.activations FROM examples e JOIN contexts c ON c.context_id = e.context_id "
    "WHERE e.latent_id = $1 ORDER BY e.kind DESC, e.band DESC NULLS FIRST, e.rank "
    f"LIMIT {EXAMPLES_CAP}"
)


def with_tokens(example: r.Example, vocab: Sequence[str]) -> r.Example:
    """The example with a record per token (text, activation), as the JSON API gives it."""
    token = r.ExampleToken
    pairs = zip(example.token_ids, example.activations, strict=True)
    return replace(example, tokens=[token(t, vocab[t], a) for t, a in pairs])


def read_examples(
    cursor: Cursor, latent_id: int, vocab: Sequence[str], *, tokens: bool
) -> list[r.Example]:
    """The examples on a latent's page; `tokens` adds the per-token records the JSON API
    returns (pages render from the id and value lists)."""
    rows = cursor.execute(EXAMPLES, [latent_id]).fetchall()
    examples = [
        r.Example(
            kind=kind,
            rank=rank,
            band=band,
            context_id=context_id,
            doc_id=doc_id,
            position=position,
            activation=activation,
            tokens=[],
            token_ids=token_ids,
            activations=activations,
        )
        for kind, rank, band, context_id, doc_id, position, activation, token_ids, activations in (
            rows
        )
    ]
    if tokens:
        examples = [with_tokens(example, vocab) for example in examples]
    return examples
