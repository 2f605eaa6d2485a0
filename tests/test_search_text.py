"""Text search: BM25 over each latent's document (explanation, top tokens, the windows of its top
examples), built by `indexer build` into the tiny index and served by /search and /api/search."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from bs4 import BeautifulSoup
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import AppSettings
from indexer import documents, fts
from sae.errors import AtlasError

PHRASE_BEFORE, PHRASE_AFTER = 3, 1  # a phrase: tokens around the firing token of a top example


def soup(response: Any) -> BeautifulSoup:
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def api_ids(client: Any, **params: Any) -> list[int]:
    body = client.get("/api/search", params=params).json()
    return [hit["latent_id"] for hit in body["latents"]]


def page_hits(client: Any, **params: Any) -> list[tuple[int, str]]:
    html = soup(client.get("/search", params=params))
    return [(int(li["data-latent"]), li["data-score"]) for li in html.select("#latent-results li")]


# --- the documents `indexer build` writes ---------------------------------------------------


def test_every_latent_has_a_document_of_its_examples_windows(app_sql: Any) -> None:
    [(n_latents, n_documents)] = app_sql(
        "SELECT (SELECT count(*) FROM latents), (SELECT count(*) FROM latent_documents)"
    )
    assert n_documents == n_latents == 64
    vocab = dict(app_sql("SELECT token_id, text FROM vocab"))
    rows = app_sql(
        "SELECT e.latent_id, e.rank, e.position, c.token_ids, d.examples[e.rank + 1], "
        "d.peak_from[e.rank + 1], d.peak_to[e.rank + 1] FROM examples e "
        "JOIN contexts c USING (context_id) JOIN latent_documents d USING (latent_id) "
        "WHERE e.kind = 'top' ORDER BY e.latent_id, e.rank"
    )
    assert rows
    for _, _, position, token_ids, window, peak_from, peak_to in rows:
        first = max(position - documents.WINDOW_BEFORE, 0)
        last = min(position + documents.WINDOW_AFTER, len(token_ids) - 1)
        assert window == "".join(vocab[t] for t in token_ids[first : last + 1])
        assert window[peak_from:peak_to] == vocab[token_ids[position]]
    [(explained,)] = app_sql(
        "SELECT count(*) FROM latent_documents d JOIN latents l USING (latent_id) "
        "WHERE d.explanation IS NOT DISTINCT FROM l.explanation"
    )
    assert explained == 64


def test_the_text_index_is_built_over_the_documents(app_sql: Any) -> None:
    [(n_docs,)] = app_sql(f"SELECT count(*) FROM {fts.SCHEMA}.docs")
    assert n_docs == 64
    fields = {name for (name,) in app_sql(f"SELECT field FROM {fts.SCHEMA}.fields")}
    assert fields == set(fts.FIELDS)


def test_a_missing_or_mismatched_extension_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = duckdb.__version__
    monkeypatch.setattr(duckdb, "__version__", "0.0.1")
    with pytest.raises(AtlasError, match=rf"{fts.PACKAGE}.*{version}.*0\.0\.1.*{fts.PACKAGE}"):
        fts.extension_path()
    monkeypatch.setattr(fts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AtlasError, match=rf"missing.*pip install {fts.PACKAGE}==0\.0\.1"):
        fts.extension_path()


# --- ranking --------------------------------------------------------------------------------


def top_phrases(app_sql: Any) -> list[tuple[int, int, str, set[int]]]:
    """Each top example (latent, rank) as a phrase of tokens around its firing token, with the
    latents that fire inside that phrase (at the peak of one of their top examples)."""
    vocab = dict(app_sql("SELECT token_id, text FROM vocab"))
    examples = app_sql(
        "SELECT e.latent_id, e.rank, e.position, c.token_ids FROM examples e "
        "JOIN contexts c USING (context_id) WHERE e.kind = 'top' ORDER BY e.latent_id, e.rank"
    )
    found = []
    for latent, rank, position, token_ids in examples:
        first = max(position - PHRASE_BEFORE, 0)
        phrase = token_ids[first : position + PHRASE_AFTER + 1]
        fire_inside = {
            other
            for other, _, at, ids in examples
            for start in range(at - len(phrase) + 1, at + 1)
            if start >= 0 and ids[start : start + len(phrase)] == phrase
        }
        text = "".join(vocab[t] for t in phrase)
        if len(re.findall(r"[^\W_]+", text)) > 1:  # a phrase: more than one word
            found.append((latent, rank, text, fire_inside))
    return found


def test_an_exact_phrase_from_a_top_example_ranks_its_latent_first(
    app_client: Any, app_sql: Any
) -> None:
    phrases = top_phrases(app_sql)
    own = {phrase: latent for latent, _, phrase, inside in phrases if inside == {latent}}
    assert len(own) >= 3, "too few latents fire alone inside a phrase of the tiny corpus"
    for phrase, latent in own.items():
        assert api_ids(app_client, q=phrase)[:1] == [latent], phrase
    # Where several latents fire inside the phrase (the tiny corpus repeats its documents), a
    # latent's strongest example still puts it among the first.
    for latent, rank, phrase, _ in phrases:
        if rank == 0:
            assert latent in api_ids(app_client, q=phrase, limit=10), phrase


def test_words_match_by_their_stem(app_client: Any, app_sql: Any) -> None:
    texts = app_sql(
        "SELECT latent_id, lower(concat_ws(' ', explanation, top_tokens, "
        "array_to_string(examples, ' '))) FROM latent_documents"
    )
    assert not any(re.search(r"\braise\b", text) for _, text in texts)  # only "raised"
    raised = {latent for latent, text in texts if re.search(r"\braised\b", text)}
    body = app_client.get("/api/search", params={"q": "raise", "limit": 100}).json()
    assert {hit["latent_id"] for hit in body["latents"]} == raised
    assert body["total"] == len(raised) and body["ranking"] == "bm25"
    scores = [hit["score"] for hit in body["latents"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    snippet = body["latents"][0]["snippet"]
    assert "raised" in "".join(t["text"] for t in snippet["tokens"])  # the example that matches
    assert api_ids(app_client, q="RAISES!", limit=100) == api_ids(app_client, q="raise", limit=100)


def test_page_and_api_agree(app_client: Any) -> None:
    for q in ("raise", "print greet", "The os module", "list"):
        body = app_client.get("/api/search", params={"q": q}).json()
        expected = [(hit["latent_id"], str(hit["score"])) for hit in body["latents"]]
        assert expected and page_hits(app_client, q=q) == expected, q


def test_results_paginate(app_client: Any) -> None:
    q = "the list"
    whole = app_client.get("/api/search", params={"q": q, "limit": 100}).json()
    total = whole["total"]
    assert total > 7 and len(whole["latents"]) == min(total, 100)
    pages = [
        app_client.get("/api/search", params={"q": q, "limit": 3, "offset": offset}).json()
        for offset in range(0, total, 3)
    ]
    assert all(page["total"] == total for page in pages)
    assert [hit["latent_id"] for page in pages for hit in page["latents"]] == api_ids(
        app_client, q=q, limit=100
    )
    html = soup(app_client.get("/search", params={"q": q, "limit": 3, "offset": 3}))
    assert html.select_one("#latent-results")["start"] == "4"
    assert "showing 4–6" in html.select_one("#search-count").get_text()
    assert "offset=6" in html.select_one("#next-page")["href"]
    assert "offset" not in html.select_one("#prev-page")["href"]
    past = app_client.get("/api/search", params={"q": q, "offset": 1000}).json()
    assert past["latents"] == [] and past["total"] == total
    html = soup(app_client.get("/search", params={"q": q, "offset": 1000}))
    assert html.select_one("#first-page") is not None
    assert app_client.get("/api/search", params={"q": q, "limit": 101}).status_code == 422


def test_each_result_shows_its_snippet_explanation_scores_and_density(
    app_client: Any, app_sql: Any
) -> None:
    html = soup(app_client.get("/search", params={"q": "Exceptions are raised"}))
    first = html.select_one("#latent-results li")
    latent = int(first["data-latent"])
    [(explanation, max_activation)] = app_sql(
        f"SELECT explanation, max_activation FROM latents WHERE latent_id = {latent}"
    )
    assert first.select_one("a.latent-link")["href"] == f"/latents/{latent}"
    assert first.select_one(".explanation").get_text() == explanation
    assert "score" in first.select_one(".score").get_text()
    assert "density" in first.select_one(".meta").get_text()
    snippet = first.select_one(".snippet")
    assert "Exceptions are raised" in snippet.get_text()
    assert snippet.select("span.tok.peak")  # tinted as on the latent page
    assert all(
        re.fullmatch(r"tok act-\d+( peak)?", " ".join(s["class"])) for s in snippet.select("span")
    )
    hit = app_client.get("/api/search", params={"q": "Exceptions are raised"}).json()["latents"][0]
    assert hit["phrase_examples"] >= 1
    peak = hit["snippet"]["tokens"][hit["snippet"]["position"]]
    assert peak["activation"] == pytest.approx(hit["snippet"]["activation"], rel=1e-2)
    assert hit["snippet"]["activation"] <= max_activation


@pytest.mark.parametrize(
    ("q", "why"),
    [
        ("", "Type a word"),
        ("   ", "Type a word"),
        ("%_\\", "has no word to search for"),
        ("... -- ;", "has no word to search for"),
        ("zqxjv", "No latent's explanation, top tokens or top examples hold a word of"),
    ],
)
def test_an_empty_or_useless_query_says_why(app_client: Any, q: str, why: str) -> None:
    body = app_client.get("/api/search", params={"q": q}).json()
    assert body["latents"] == [] and body["total"] == 0 and why in body["reason"]
    html = soup(app_client.get("/search", params={"q": q}))
    assert why in html.select_one("#no-latents").get_text()


def test_a_query_is_only_ever_a_value(app_client: Any, app_sql: Any) -> None:
    for q in ("x') OR 1=1; --", "raise$query", "?", "$1 $2", "'; DROP TABLE latent_documents; --"):
        body = app_client.get("/api/search", params={"q": q}).json()
        assert body["query"] == q
        html = soup(app_client.get("/search", params={"q": q}))
        assert html.select_one("#search-q")["value"] == q
    assert app_sql("SELECT count(*) FROM latent_documents") == [(64,)]


# --- an index built before the text index ---------------------------------------------------


@pytest.fixture(scope="module")
def old_client(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tiny index as `indexer build` wrote it before `latent_documents` and its index."""
    old = tmp_path_factory.mktemp("old-index") / "old.duckdb"
    shutil.copy(app_index, old)
    with duckdb.connect(str(old)) as connection:
        connection.execute(f"DROP SCHEMA {fts.SCHEMA} CASCADE")
        connection.execute("DROP TABLE latent_documents")
    settings = AppSettings(index=old, allowed_hosts=("testserver",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_an_old_index_says_to_rebuild_and_matches_substrings(
    old_client: Any, app_client: Any, app_sql: Any
) -> None:
    html = soup(old_client.get("/search", params={"q": "raised"}))
    notice = html.select_one("#search-notice").get_text()
    assert "indexer build" in notice and "rebuild" in notice.lower()
    body = old_client.get("/api/search", params={"q": "raised"}).json()
    assert body["ranking"] == "substring" and "indexer build" in body["notice"]
    expected = {
        latent
        for (latent,) in app_sql(
            "SELECT latent_id FROM latents WHERE explanation ILIKE '%raised%' "
            "OR top_token_text ILIKE '%raised%'"
        )
    }
    assert expected and {hit["latent_id"] for hit in body["latents"]} == expected
    assert all(hit["snippet"]["rank"] == 0 for hit in body["latents"])
    assert [(hit["latent_id"], str(hit["score"])) for hit in body["latents"]] == [
        (latent, score) for latent, score in page_hits(old_client, q="raised")
    ]
    assert "%" not in str(old_client.get("/api/search", params={"q": "%"}).json()["latents"])
    fresh = soup(app_client.get("/search", params={"q": "raised"}))
    assert fresh.select_one("#search-notice") is None


def test_without_the_extension_search_falls_back_and_names_the_package(
    app_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Path:
        raise AtlasError(f"the extension is missing: pip install {fts.PACKAGE}==x")

    monkeypatch.setattr(fts, "extension_path", missing)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(app_index, copy)
    settings = AppSettings(index=copy, allowed_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        body = client.get("/api/search", params={"q": "raised"}).json()
        html = soup(client.get("/search", params={"q": "raised"}))
    assert body["ranking"] == "substring" and fts.PACKAGE in body["notice"]
    assert body["latents"]
    assert fts.PACKAGE in html.select_one("#search-notice").get_text()


def test_on_an_old_index_a_token_ranks_the_latents_whose_top_token_it_is_first(
    old_client: Any, app_sql: Any
) -> None:
    [(token,)] = app_sql(
        "SELECT top_token_text FROM latents WHERE trim(top_token_text) <> '' "
        "GROUP BY top_token_text ORDER BY count(*) DESC, top_token_text LIMIT 1"
    )
    owners = {
        latent
        for (latent,) in app_sql(
            "SELECT latent_id FROM latents WHERE lower(trim(top_token_text)) = "
            f"'{token.strip().lower()}'"
        )
    }
    ranked = [latent for latent, _ in page_hits(old_client, q=token.strip())]
    assert set(ranked[: len(owners)]) == owners


def test_the_api_documents_search_results_with_latent_id_and_score(app_client: Any) -> None:
    spec = app_client.get("/openapi.json").json()
    parameters = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert parameters == {"q", "mode", "offset", "limit"}
    hit = spec["components"]["schemas"]["SearchHit"]
    assert {"latent_id", "score", "phrase_examples", "snippet", "density"} <= set(hit["properties"])
