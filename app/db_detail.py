"""The queries behind one latent's page, run on one connection (part of the db layer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app import records as r
from app.db_rows import EXAMPLES_CAP, RELATED_CAP, connection_rows
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
        tokens = [
            r.ExampleToken(token_id=t, text=vocab[t], activation=float(a))
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


def quantile_bands(connection: Connection, latent_id: int) -> list[r.QuantileBand]:
    q = s.quantile_bands
    statement = sa.select(q).where(q.c.latent_id == latent_id).order_by(q.c.band.desc())
    return [
        r.QuantileBand(
            band=row["band"],
            rank_from=row["rank_from"],
            rank_to=row["rank_to"],
            min_activation=row["min_activation"],
            max_activation=row["max_activation"],
        )
        for row in connection_rows(connection, statement.limit(RELATED_CAP))
    ]


def histogram(connection: Connection, latent_id: int) -> list[r.HistogramBin]:
    h = s.activation_histograms
    statement = sa.select(h).where(h.c.latent_id == latent_id).order_by(h.c.lower).limit(1000)
    return [
        r.HistogramBin(row["lower"], row["upper"], row["count"])
        for row in connection_rows(connection, statement)
    ]


def logit_effects(
    connection: Connection, latent_id: int, text: TokenText
) -> dict[str, list[r.LogitEffect]]:
    g = s.logits
    statement = sa.select(g).where(g.c.latent_id == latent_id).order_by(g.c.kind, g.c.rank)
    effects: dict[str, list[r.LogitEffect]] = {"promoted": [], "suppressed": []}
    for row in connection_rows(connection, statement.limit(2 * RELATED_CAP)):
        effects.setdefault(row["kind"], []).append(
            r.LogitEffect(token_id=row["token_id"], text=text(row["token_id"]), value=row["value"])
        )
    return effects


def neighbours(connection: Connection, latent_id: int) -> list[r.RelatedLatent]:
    n, l = s.neighbours, s.latents  # noqa: E741
    statement = (
        sa.select(n.c.other_id, n.c.cosine, l.c.explanation)
        .join(l, l.c.latent_id == n.c.other_id, isouter=True)
        .where(n.c.latent_id == latent_id)
        .order_by(n.c.rank)
        .limit(RELATED_CAP)
    )
    return [
        r.RelatedLatent(row["other_id"], row["cosine"], None, row["explanation"])
        for row in connection_rows(connection, statement)
    ]


def coactive(connection: Connection, latent_id: int) -> list[r.RelatedLatent]:
    c, l = s.coactivations, s.latents  # noqa: E741
    statement = (
        sa.select(c.c.other_id, c.c.jaccard, c.c.count, l.c.explanation)
        .join(l, l.c.latent_id == c.c.other_id, isouter=True)
        .where(c.c.latent_id == latent_id)
        .order_by(c.c.rank)
        .limit(RELATED_CAP)
    )
    return [
        r.RelatedLatent(row["other_id"], row["jaccard"], row["count"], row["explanation"])
        for row in connection_rows(connection, statement)
    ]


def top_tokens(connection: Connection, latent_id: int, text: TokenText) -> list[r.TokenCount]:
    t = s.latent_tokens
    statement = sa.select(t).where(t.c.latent_id == latent_id).order_by(t.c.rank)
    return [
        r.TokenCount(row["token_id"], text(row["token_id"]), row["count"], row["mean_activation"])
        for row in connection_rows(connection, statement.limit(RELATED_CAP))
    ]


def patterns(connection: Connection, latent_id: int) -> list[r.Pattern]:
    p = s.explanation_patterns
    statement = sa.select(p).where(p.c.latent_id == latent_id).order_by(p.c.rank)
    return [
        r.Pattern(row["pattern"], row["precision"], row["recall"], row["n_matches"], row["n_hits"])
        for row in connection_rows(connection, statement.limit(RELATED_CAP))
    ]


def latent_detail(
    connection: Connection, latent: r.LatentSummary, vocab: Sequence[str]
) -> r.LatentDetail:
    latent_id = latent.latent_id
    shown = examples(connection, latent_id, vocab)

    def text(token_id: int) -> str:
        return vocab[token_id] if 0 <= token_id < len(vocab) else f"<token {token_id}>"

    effects = logit_effects(connection, latent_id, text)
    return r.LatentDetail(
        latent=latent,
        top_examples=[x for x in shown if x.kind == "top"],
        quantile_examples=[x for x in shown if x.kind != "top"],
        quantile_bands=quantile_bands(connection, latent_id),
        histogram=histogram(connection, latent_id),
        promoted=effects["promoted"],
        suppressed=effects["suppressed"],
        neighbours=neighbours(connection, latent_id),
        coactive=coactive(connection, latent_id),
        top_tokens=top_tokens(connection, latent_id, text),
        patterns=patterns(connection, latent_id),
    )
