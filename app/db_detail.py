"""One latent's page: its examples queried, its short lists sliced from memory (db layer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app import records as r
from app.db_rows import EXAMPLES_CAP, connection_rows
from app.db_slices import LatentSlices
from indexer import schema as s

TokenText = Callable[[int], str]


def examples(connection: Connection, latent_id: int, vocab: Sequence[str]) -> list[r.Example]:
    e, c = s.examples, s.contexts
    statement = (
        sa.select(e, c.c.doc_id, c.c.token_ids)
        .join(c, c.c.context_id == e.c.context_id)
        .where(e.c.latent_id == latent_id)
        .order_by(e.c.kind.desc(), e.c.band.desc().nulls_first(), e.c.rank)
        .limit(EXAMPLES_CAP)
    )
    result = []
    for row in connection_rows(connection, statement):
        token = r.ExampleToken
        tokens = [
            token(t, vocab[t], a)
            for t, a in zip(row["token_ids"], row["activations"], strict=False)
        ]
        result.append(
            r.Example(
                kind=row["kind"],
                rank=row["rank"],
                band=row["band"],
                context_id=row["context_id"],
                doc_id=row["doc_id"],
                position=row["position"],
                activation=row["activation"],
                tokens=tokens,
            )
        )
    return result


def latent_detail(
    connection: Connection, latent: r.LatentSummary, vocab: Sequence[str], slices: LatentSlices
) -> r.LatentDetail:
    """Examples from DuckDB (the one large table); every short list from memory."""
    latent_id = latent.latent_id
    shown = examples(connection, latent_id, vocab)

    def text(token_id: int) -> str:
        return vocab[token_id] if 0 <= token_id < len(vocab) else f"<token {token_id}>"

    effects = slices.logit_effects_of(latent_id, text)
    return r.LatentDetail(
        latent=latent,
        top_examples=[x for x in shown if x.kind == "top"],
        quantile_examples=[x for x in shown if x.kind != "top"],
        quantile_bands=slices.bands_of(latent_id),
        histogram=slices.histogram_of(latent_id),
        promoted=effects["promoted"],
        suppressed=effects["suppressed"],
        neighbours=slices.neighbours_of(latent_id),
        coactive=slices.coactive_of(latent_id),
        top_tokens=slices.top_tokens_of(latent_id, text),
        patterns=slices.patterns_of(latent_id),
    )
