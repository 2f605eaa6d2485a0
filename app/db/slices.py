"""The small per-latent tables, held in memory as columns sliced by latent (part of the db layer).

An index never changes under the app, and a latent page needs rows from seven small tables
(logits, neighbours, co-activations, top tokens, patterns, histogram, quantile bands). A query
costs DuckDB a millisecond or more each; reading each table once, sorted by latent, and keeping
its columns as numpy arrays with per-latent offsets makes each of those lists a slice. Memory is
about the tables' size on disk (the large `examples` table stays in DuckDB).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app import records as r
from app.db.rows import RELATED_CAP, summary
from indexer import schema as s

TokenText = Callable[[int], str]


@dataclass(frozen=True)
class Sliced:
    """A table's columns sorted by latent, and where each latent's rows start."""

    columns: dict[str, np.ndarray]
    starts: np.ndarray  # (n_latents + 1,)

    @classmethod
    def read(cls, connection: Connection, statement: sa.Select, n_latents: int) -> Sliced:
        result = connection.execute(statement)
        names = list(result.keys())
        rows = result.all()
        columns = {
            name: np.array([row[i] for row in rows], dtype=object if _text(name) else None)
            for i, name in enumerate(names)
        }
        latent = columns["latent_id"].astype(np.int64) if rows else np.zeros(0, np.int64)
        starts = np.searchsorted(latent, np.arange(n_latents + 1))
        return cls(columns, starts)

    def rows(self, latent_id: int, names: Sequence[str], cap: int) -> list[tuple[Any, ...]]:
        """This latent's rows (in the statement's order), as Python values, at most `cap`."""
        first = int(self.starts[latent_id])
        last = min(int(self.starts[latent_id + 1]), first + cap)
        picked = [self.columns[name][first:last].tolist() for name in names]
        return list(zip(*picked, strict=True))


def _text(name: str) -> bool:
    return name in ("kind", "pattern", "explanation")


class LatentSlices:
    """Every small per-latent table of an index, read once."""

    def __init__(self, connection: Connection, n_latents: int) -> None:
        self.n_latents = n_latents

        def read(table: sa.Table, names: Sequence[str], *order: Any) -> Sliced:
            columns = [table.c.latent_id, *(table.c[name] for name in names)]
            statement = sa.select(*columns).order_by(table.c.latent_id, *order)
            return Sliced.read(connection, statement, n_latents)

        g, nb, co, tk = s.logits, s.neighbours, s.coactivations, s.latent_tokens
        p, h, q = s.explanation_patterns, s.activation_histograms, s.quantile_bands
        self.logits = read(g, ("kind", "token_id", "value"), g.c.kind, g.c.rank)
        self.neighbours = read(nb, ("other_id", "cosine"), nb.c.rank)
        self.coactive = read(co, ("other_id", "jaccard", "count"), co.c.rank)
        self.tokens = read(tk, ("token_id", "count", "mean_activation"), tk.c.rank)
        self.patterns = read(p, ("pattern", "precision", "recall", "n_matches", "n_hits"), p.c.rank)
        self.histogram = read(h, ("lower", "upper", "count"), h.c.lower)
        self.bands = read(
            q, ("band", "rank_from", "rank_to", "min_activation", "max_activation"), q.c.band.desc()
        )
        rows = connection.execute(sa.select(s.latents)).mappings().all()
        self.summary: list[r.LatentSummary | None] = [None] * n_latents
        for row in rows:
            if 0 <= row["latent_id"] < n_latents:
                self.summary[row["latent_id"]] = summary(row)
        self.explanation = [None if x is None else x.explanation for x in self.summary]

    def _named(self, latent_id: int) -> str | None:
        return self.explanation[latent_id] if 0 <= latent_id < self.n_latents else None

    def logit_effects_of(self, latent_id: int, text: TokenText) -> dict[str, list[r.LogitEffect]]:
        effects: dict[str, list[r.LogitEffect]] = {kind: [] for kind in s.LOGIT_KINDS}
        for kind, token, value in self.logits.rows(
            latent_id, ("kind", "token_id", "value"), 2 * RELATED_CAP
        ):
            effects.setdefault(kind, []).append(r.LogitEffect(token, text(token), value))
        return effects

    def neighbours_of(self, latent_id: int) -> list[r.RelatedLatent]:
        rows = self.neighbours.rows(latent_id, ("other_id", "cosine"), RELATED_CAP)
        return [r.RelatedLatent(o, c, None, self._named(o)) for o, c in rows]

    def coactive_of(self, latent_id: int) -> list[r.RelatedLatent]:
        rows = self.coactive.rows(latent_id, ("other_id", "jaccard", "count"), RELATED_CAP)
        return [r.RelatedLatent(o, j, n, self._named(o)) for o, j, n in rows]

    def top_tokens_of(self, latent_id: int, text: TokenText) -> list[r.TokenCount]:
        rows = self.tokens.rows(latent_id, ("token_id", "count", "mean_activation"), RELATED_CAP)
        return [r.TokenCount(t, text(t), n, m) for t, n, m in rows]

    def patterns_of(self, latent_id: int) -> list[r.PatternRow]:
        names = ("pattern", "precision", "recall", "n_matches", "n_hits")
        return [
            r.PatternRow(p, _number(pr), _number(re), m, h)
            for p, pr, re, m, h in self.patterns.rows(latent_id, names, RELATED_CAP)
        ]

    def histogram_of(self, latent_id: int) -> list[r.HistogramBin]:
        rows = self.histogram.rows(latent_id, ("lower", "upper", "count"), 1000)
        return [r.HistogramBin(lower, upper, count) for lower, upper, count in rows]

    def bands_of(self, latent_id: int) -> list[r.QuantileBand]:
        names = ("band", "rank_from", "rank_to", "min_activation", "max_activation")
        return [r.QuantileBand(*row) for row in self.bands.rows(latent_id, names, RELATED_CAP)]


def _number(value: Any) -> float | None:
    """SQL NULL arrives as None or, through numpy, as NaN: both mean 'no value'."""
    if value is None or value != value:
        return None
    return float(value)


class ExampleColumns:
    """Every stored example as columns sliced by latent, and the contexts they show.

    The largest table of an index, read once through Arrow (activations as float16, which is how
    the indexer keeps them): a page's examples are then array slices, not a query with a join.
    """

    def __init__(self, connection: Connection, n_latents: int) -> None:
        e, c = s.examples, s.contexts
        table = _arrow(
            connection,
            sa.select(
                e.c.latent_id,
                e.c.kind,
                e.c.rank,
                e.c.band,
                e.c.context_id,
                e.c.position,
                e.c.activation,
                e.c.activations,
            ).order_by(e.c.latent_id, e.c.kind.desc(), e.c.band.desc().nulls_first(), e.c.rank),
        )
        self.latent = table.column("latent_id").to_numpy()
        self.top = np.asarray(table.column("kind").to_pylist()) == s.TOP
        self.rank = table.column("rank").to_numpy()
        self.band = table.column("band").fill_null(-1).to_numpy()
        self.context = table.column("context_id").to_numpy()
        self.position = table.column("position").to_numpy()
        self.activation = table.column("activation").to_numpy()
        self.activations = _matrix(table.column("activations"), np.float16)  # (m, T)
        self.starts = np.searchsorted(self.latent, np.arange(n_latents + 1))
        contexts = _arrow(
            connection,
            sa.select(c.c.context_id, c.c.doc_id, c.c.token_ids).order_by(c.c.context_id),
        )
        self.context_ids = contexts.column("context_id").to_numpy()
        self.doc_ids = contexts.column("doc_id").to_pylist()
        self.token_ids = _matrix(contexts.column("token_ids"), np.int32)  # (contexts, T)

    def of(self, latent_id: int, *, cap: int) -> list[r.Example]:
        first = int(self.starts[latent_id])
        last = min(int(self.starts[latent_id + 1]), first + cap)
        rows = np.searchsorted(self.context_ids, self.context[first:last])  # (m,)
        return [
            r.Example(
                kind=s.TOP if self.top[i] else s.QUANTILE,
                rank=int(self.rank[i]),
                band=None if self.band[i] < 0 else int(self.band[i]),
                context_id=int(self.context[i]),
                doc_id=self.doc_ids[row],
                position=int(self.position[i]),
                activation=float(self.activation[i]),
                tokens=[],
                token_ids=self.token_ids[row].tolist(),
                activations=self.activations[i].astype(np.float32).tolist(),
            )
            for i, row in zip(range(first, last), rows.tolist(), strict=True)
        ]


def _arrow(connection: Connection, statement: sa.Select) -> pa.Table:
    """Run a statement without parameters straight through DuckDB into an Arrow table."""
    sql = str(statement.compile(dialect=connection.dialect))
    raw: Any = connection.connection.driver_connection
    return raw.sql(sql).to_arrow_table()


def _matrix(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A list column whose lists all have one length, as an (m, length) array."""
    lists = column.combine_chunks()
    if len(lists) == 0:
        return np.zeros((0, 0), dtype)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    return values.reshape(len(lists), -1)
