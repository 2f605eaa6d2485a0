"""Text search over explanations and top tokens, and token → latents (part of the db layer).

Plain ILIKE with the user's wildcards escaped: DuckDB's FTS extension would need the network
to install, and a few thousand latents scan in milliseconds.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app import records as r
from app.db.rows import connection_rows, explanation_matches, like_pattern, summary
from indexer import schema as s

MAX_TOKENS = 10  # vocabulary matches shown, each with its latents


def search_latents(connection: Connection, query: str, *, limit: int) -> list[r.LatentSummary]:
    """Latents whose explanation or top token contains `query`, best matches first.

    Rank: the top token equal to the query, then the explanation containing it, then the top
    token containing it; ties by explanation precision, then id.
    """
    l = s.latents  # noqa: E741
    pattern = like_pattern(query)
    token = sa.func.lower(sa.func.trim(l.c.top_token_text))
    in_explanation = explanation_matches(query)
    in_token = l.c.top_token_text.ilike(pattern, escape="\\")
    score = (
        sa.case((token == query.strip().lower(), 4), else_=0)
        + sa.case((in_explanation, 2), else_=0)
        + sa.case((in_token, 1), else_=0)
    )
    statement = (
        sa.select(l)
        .where(sa.or_(in_explanation, in_token))
        .order_by(score.desc(), l.c.explanation_precision.desc().nulls_last(), l.c.latent_id)
        .limit(limit)
    )
    return [summary(row) for row in connection_rows(connection, statement)]


def search_tokens(connection: Connection, query: str, *, per_token: int) -> list[r.TokenMatch]:
    """Vocabulary tokens equal to the query (ignoring case and surrounding spaces) and the
    latents that fire on them most, as counted in the index's token sample."""
    v, t, l = s.vocab, s.token_latents, s.latents  # noqa: E741
    needle = query.strip().lower()
    if not needle:
        return []
    found = sa.select(v.c.token_id, v.c.text).where(sa.func.lower(sa.func.trim(v.c.text)) == needle)
    tokens = connection_rows(connection, found.order_by(v.c.token_id).limit(MAX_TOKENS))
    if not tokens:
        return []
    statement = (
        sa.select(t.c.token_id, t.c.latent_id, t.c.count, t.c.mean_activation, l.c.explanation)
        .join(l, l.c.latent_id == t.c.latent_id, isouter=True)
        .where(t.c.token_id.in_([row["token_id"] for row in tokens]), t.c.rank < per_token)
        .order_by(t.c.token_id, t.c.rank)
        .limit(MAX_TOKENS * per_token)
    )
    by_token: dict[int, list[r.TokenLatent]] = {}
    for row in connection_rows(connection, statement):
        by_token.setdefault(row["token_id"], []).append(
            r.TokenLatent(
                row["latent_id"], row["count"], row["mean_activation"], row["explanation"]
            )
        )
    return [
        r.TokenMatch(row["token_id"], row["text"], by_token.get(row["token_id"], []))
        for row in tokens
        if row["token_id"] in by_token
    ]
