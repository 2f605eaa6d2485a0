"""Search (part of the db layer): latents ranked by BM25, their snippets, token → latents.

Text search ranks each latent's document (`latent_documents`: explanation, top tokens, the text
of its top examples around the firing token) with DuckDB's full-text index (`match_bm25` of
indexer/fts.py) inside the index file; the query is a bound parameter, tokenized by the index's
own macro. An index built before that table gets the older match instead: the query as a
substring of the explanation or the top token (ILIKE, the user's wildcards escaped), ranked by a
fixed score. A page of results is then one query for its latents, one for their snippets and
the vocabulary lookup; text search also reads the query's words first (to say why a query finds
nothing), all on the thread's DuckDB cursor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app import records as r
from app.db.cursors import Cursor
from app.db.rows import connection_rows, explanation_matches, like_pattern, summary
from indexer import fts
from indexer import schema as s
from indexer.documents import window_sql

MAX_TOKENS = 10  # vocabulary matches shown, each with its latents
RERANKED = 100  # the best latents by BM25 that a query of several words re-ranks as a phrase
LATENT_COLUMNS = ", ".join(f"l.{c.name}" for c in s.latents.columns)
EMPTY = "Type a word to search for: latents are ranked by how well their explanation, top tokens "
EMPTY += "and top examples match it."

# Each word of a query in order, as the text index splits it, with its term (stem) and whether
# the index holds that term (what `match_bm25` looks up).
QUERY_WORDS = (
    f"SELECT word, term, term IN (SELECT term FROM {fts.SCHEMA}.dict) "
    f"FROM ({fts.words_sql('?::VARCHAR')})"
)
# The windows of the documents of `latents` (SQL selecting latent_id), one row each, with
# `covered`: whether $phrase (ignoring case; '' for none) is in the window, its first occurrence
# overlapping the token the latent fires on.
WINDOWS = f"""
SELECT latent_id, rank, text,
    place > 0 AND place - 1 < peak_to AND place - 1 + length($phrase) > peak_from AS covered
FROM (
    SELECT *, CASE WHEN $phrase = '' THEN 0 ELSE instr(lower(text), lower($phrase)) END AS place
    FROM (
        SELECT latent_id, unnest(examples) AS text, generate_subscripts(examples, 1) - 1 AS rank,
            unnest(peak_from) AS peak_from, unnest(peak_to) AS peak_to
        FROM {s.latent_documents.name} WHERE latent_id IN ({{latents}})
    )
)"""
# A page of latents by BM25 over their documents, each with the number matching in all. The best
# RERANKED are ranked first by how many of their top examples have the query as typed around the
# token they fire on (for a query of several words): a snippet pasted from an example finds the
# latents that fire inside it, where BM25 alone finds every latent whose examples show the same
# text. The score is rounded so that the order of a sum's terms cannot reorder ties.
RANKED = f"""
WITH scored AS (
    SELECT latent_id, round({fts.SCHEMA}.match_bm25(latent_id, $query), 9) AS score
    FROM {s.latent_documents.name}
), hits AS (
    SELECT latent_id, score, row_number() OVER (ORDER BY score DESC, latent_id) AS place,
        count(*) OVER () AS total
    FROM scored WHERE score IS NOT NULL
), phrased AS (
    SELECT latent_id, count(*) FILTER (WHERE covered) AS phrase_examples
    FROM ({WINDOWS.format(latents=f"SELECT latent_id FROM hits WHERE place <= {RERANKED}")})
    WHERE $phrase <> '' GROUP BY latent_id
)
SELECT {LATENT_COLUMNS}, h.score, coalesce(p.phrase_examples, 0) AS phrase_examples, h.total
FROM hits h JOIN latents l ON l.latent_id = h.latent_id
LEFT JOIN phrased p ON p.latent_id = h.latent_id
ORDER BY phrase_examples DESC, h.score DESC, l.latent_id
LIMIT $limit OFFSET $offset
"""
RANKED_TOTAL = (
    f"SELECT count(*) FROM {s.latent_documents.name} "
    f"WHERE {fts.SCHEMA}.match_bm25(latent_id, ?::VARCHAR) IS NOT NULL"
)


class Word(NamedTuple):
    word: str
    term: str  # its stem
    indexed: bool  # some latent's document holds the term


class Latent(NamedTuple):
    """A latent found, before its snippet."""

    summary: r.LatentSummary
    score: float
    phrase_examples: int


class Found(NamedTuple):
    """A page of latents found, best first, before their snippets."""

    total: int
    latents: list[Latent]
    terms: list[str] | None  # the query's indexed terms; None: the index has no documents
    phrase: str  # the query as a phrase, '' for none
    reason: str | None  # why none is listed


def query_words(cursor: Cursor, query: str) -> list[Word]:
    return [Word(*row) for row in cursor.execute(QUERY_WORDS, [query]).fetchall()]


def ranked(cursor: Cursor, query: r.SearchQuery) -> Found:
    """The latents whose documents hold a word of the query, by BM25 (and phrase)."""
    words = query_words(cursor, query.q)
    terms = list(dict.fromkeys(w.term for w in words if w.indexed))
    phrase = query.q.strip() if len(words) > 1 else ""
    if not words:
        reason = (
            f"“{query.q}” has no word to search for: only letters and digits are indexed, "
            "not punctuation or symbols."
        )
        return Found(0, [], [], "", reason)
    if not terms:
        reason = f"No latent's explanation, top tokens or top examples hold a word of “{query.q}”."
        return Found(0, [], [], "", reason)
    page = {"query": query.q, "phrase": phrase, "limit": query.limit, "offset": query.offset}
    rows = cursor.execute(RANKED, page).fetchall()
    names = [*(c.name for c in s.latents.columns), "score", "phrase_examples", "total"]
    found = [dict(zip(names, row, strict=True)) for row in rows]
    if found:
        total = int(found[0]["total"])
    else:  # past the last page: the count on its own
        total = int(cursor.execute(RANKED_TOTAL, [query.q]).fetchall()[0][0])
    latents = [Latent(summary(x), float(x["score"]), int(x["phrase_examples"])) for x in found]
    return Found(total, latents, terms, phrase, None)


def substring(connection: Connection, query: r.SearchQuery) -> Found:
    """For an index without documents: latents whose explanation or top token contains the
    query. Score: 4 for the top token equal to the query, 2 for the explanation containing it,
    1 for the top token containing it, summed; ties by explanation precision, then id."""
    l = s.latents  # noqa: E741
    text = query.q
    token = sa.func.lower(sa.func.trim(l.c.top_token_text))
    in_explanation = explanation_matches(text)
    in_token = l.c.top_token_text.ilike(like_pattern(text), escape="\\")
    score = (
        sa.case((token == text.strip().lower(), 4), else_=0)
        + sa.case((in_explanation, 2), else_=0)
        + sa.case((in_token, 1), else_=0)
    ).label("score")
    where = sa.or_(in_explanation, in_token)
    statement = (
        sa.select(l, score)
        .where(where)
        .order_by(score.desc(), l.c.explanation_precision.desc().nulls_last(), l.c.latent_id)
        .offset(query.offset)
        .limit(query.limit)
    )
    total = int(connection.execute(sa.select(sa.func.count()).where(where)).scalar_one())
    rows = connection_rows(connection, statement)
    reason = None if total else f"No explanation or top token contains “{text}”."
    latents = [Latent(summary(row), float(row["score"]), 0) for row in rows]
    return Found(total, latents, None, "", reason)


def snippets(cursor: Cursor, found: Found, *, vocab: Sequence[str]) -> dict[int, r.Snippet]:
    """Each latent's best top example, cut to its document's window: the first of its top
    examples with the phrase around its firing token, else with the most of the query's terms
    (a term counts where a word starts with it), the strongest among equals; the strongest
    where the index has no documents."""
    if not found.latents:
        return {}
    ids = ", ".join(str(int(x.summary.latent_id)) for x in found.latents)  # looked up by index
    if found.terms is None:
        best = f"SELECT latent_id, 0 AS rank FROM latents WHERE latent_id IN ({ids})"
        params: dict[str, Any] = {}
    else:
        held = "len(list_filter($terms::VARCHAR[], t -> contains(strip_accents(lower(text)), t)))"
        best = (
            f"SELECT latent_id, rank FROM ({WINDOWS.format(latents=ids)}) QUALIFY row_number() "
            f"OVER (PARTITION BY latent_id ORDER BY covered DESC, {held} DESC, rank) = 1"
        )
        params = {"terms": found.terms, "phrase": found.phrase}
    first, last = window_sql("e.position", "c.token_ids")
    rows = cursor.execute(
        f"WITH best AS ({best}) SELECT e.latent_id, e.rank, e.context_id, c.doc_id, "
        f"e.position - {first}, e.activation, c.token_ids[{first} + 1 : {last} + 1], "
        f"e.activations[{first} + 1 : {last} + 1] "
        "FROM best b JOIN examples e ON e.latent_id = b.latent_id AND e.rank = b.rank "
        "JOIN contexts c ON c.context_id = e.context_id "
        f"WHERE e.kind = '{s.TOP}' AND e.latent_id IN ({ids})",
        params,
    ).fetchall()
    return {row[0]: _snippet(row, vocab) for row in rows}


def _snippet(row: Sequence[Any], vocab: Sequence[str]) -> r.Snippet:
    _, rank, context_id, doc_id, position, activation, token_ids, activations = row
    tokens = [
        r.ExampleToken(t, vocab[t] if 0 <= t < len(vocab) else "�", a)
        for t, a in zip(token_ids, activations, strict=True)
    ]
    return r.Snippet(rank, context_id, doc_id, position, activation, tokens)


def results(
    query: r.SearchQuery,
    found: Found,
    snippets_of: Mapping[int, r.Snippet],
    tokens: list[r.TokenMatch],
    *,
    notice: str | None,
) -> r.SearchResults:
    """The page of results: `notice` None when ranked by BM25, else why by substring."""
    hits = [
        r.SearchHit(
            **vars(x.summary),
            score=x.score,
            phrase_examples=x.phrase_examples,
            snippet=snippets_of.get(x.summary.latent_id),
        )
        for x in found.latents
    ]
    return r.SearchResults(
        query=query.q,
        mode=query.mode,
        ranking="bm25" if notice is None else "substring",
        total=found.total,
        offset=query.offset,
        limit=query.limit,
        latents=hits,
        tokens=tokens,
        reason=found.reason,
        notice=notice,
    )


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
