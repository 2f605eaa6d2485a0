"""Row helpers shared by the db layer's modules: caps, LIKE escaping, row → dataclass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from app import records as r
from indexer import schema as s
from sae.visible import visible

SORT_COLUMNS: dict[str, sa.ColumnElement[Any]] = {
    key: s.latents.c[key] for key in get_args(r.SortKey)
}  # a sort key is the name of its column
RELATED_CAP = 50  # rows of any per-latent list (neighbours, tokens, logits, patterns)
HISTOGRAM_CAP = 1000  # bins of a latent's activation histogram
EXAMPLES_CAP = 200


def like_pattern(text: str) -> str:
    """`%text%` for ILIKE with the user's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def explanation_matches(query: str) -> sa.ColumnElement[bool]:
    """The explanation contains `query`, typed with plain spaces or as shown (␣, ⏎)."""
    column = s.latents.c.explanation
    shown = visible(query)
    return sa.or_(
        column.ilike(like_pattern(query), escape="\\"),
        column.ilike(like_pattern(shown), escape="\\"),
    )


def latent_filters(query: r.LatentQuery) -> list[sa.ColumnElement[bool]]:
    l = s.latents  # noqa: E741
    padded_flags = sa.literal(" ") + l.c.flags + sa.literal(" ")
    where: list[sa.ColumnElement[bool]] = []
    for flag in query.flags:
        where.append(padded_flags.contains(f" {flag} ", autoescape=True))
    for flag in query.not_flags:
        where.append(~padded_flags.contains(f" {flag} ", autoescape=True))
    if query.min_density is not None:
        where.append(l.c.density >= query.min_density)
    if query.max_density is not None:
        where.append(l.c.density <= query.max_density)
    if query.q:
        in_token = l.c.top_token_text.ilike(like_pattern(query.q), escape="\\")
        where.append(sa.or_(explanation_matches(query.q), in_token))
    return where


def summary(row: RowMapping | Mapping[str, Any]) -> r.LatentSummary:
    return r.LatentSummary(
        latent_id=row["latent_id"],
        n_fires=row["n_fires"],
        n_contexts=row["n_contexts"],
        density=row["density"],
        log10_density=row["log10_density"],
        mean_activation=row["mean_activation"],
        max_activation=row["max_activation"],
        flags=row["flags"].split(),
        top_token_text=row["top_token_text"],
        explanation=row["explanation"],
        explanation_precision=row["explanation_precision"],
        explanation_recall=row["explanation_recall"],
    )


def connection_rows(connection: Connection, statement: sa.Executable) -> Sequence[RowMapping]:
    return connection.execute(statement).mappings().all()
