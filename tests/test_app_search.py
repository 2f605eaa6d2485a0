"""Search: ranked text over explanations, top tokens and examples, token → latents, hostile
queries (tests/test_search_text.py holds the ranking's own tests)."""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup


def soup(response: Any) -> BeautifulSoup:
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def result_ids(html: BeautifulSoup) -> list[int]:
    return [int(li["data-latent"]) for li in html.select("#latent-results li")]


def test_a_word_that_is_a_top_token_finds_every_latent_it_is_the_top_token_of(
    app_client: Any, app_sql: Any
) -> None:
    [(token,)] = app_sql(
        "SELECT trim(top_token_text) FROM latents WHERE regexp_full_match(trim(top_token_text), "
        "'[A-Za-z]{2,}') GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    owners = {
        row[0]
        for row in app_sql(
            f"SELECT latent_id FROM latents WHERE lower(trim(top_token_text)) = '{token.lower()}'"
        )
    }
    html = soup(app_client.get("/search", params={"q": token, "limit": 100}))
    assert owners <= set(result_ids(html))


def test_token_query_lists_the_latents_that_fire_on_it(app_client: Any, app_sql: Any) -> None:
    [(token_id, text)] = app_sql(
        "SELECT v.token_id, v.text FROM token_latents t JOIN vocab v USING (token_id) "
        "WHERE t.rank = 0 ORDER BY t.count DESC, v.token_id LIMIT 1"
    )
    expected = [
        row[0]
        for row in app_sql(
            f"SELECT latent_id FROM token_latents WHERE token_id = {token_id} ORDER BY rank"
        )
    ]
    body = app_client.get("/api/search", params={"q": text.strip()}).json()
    match = next(m for m in body["tokens"] if m["token_id"] == token_id)
    assert [item["latent_id"] for item in match["latents"]] == expected[:10]
    html = soup(app_client.get("/search", params={"q": text.strip()}))
    heading = html.select_one(f'#token-results h3[data-token="{token_id}"]')
    assert heading is not None


def test_explanations_match_with_plain_spaces(app_client: Any, app_sql: Any) -> None:
    [(latent, pattern)] = app_sql(
        "SELECT latent_id, pattern FROM explanation_patterns WHERE pattern LIKE '%␣%␣%' "
        "ORDER BY latent_id, rank LIMIT 1"
    )
    words = pattern.replace("[", "").replace("]", "").replace("␣", " ")
    body = app_client.get("/api/search", params={"q": words, "limit": 10}).json()
    assert latent in [hit["latent_id"] for hit in body["latents"]], words


@pytest.mark.parametrize(
    "q",
    [
        "' OR 1=1 --",
        "'; DROP TABLE latents; --",
        '" OR ""="',
        "%",
        "_",
        "\\",
        "%' UNION SELECT * FROM build --",
    ],
)
def test_sql_syntax_and_wildcards_are_plain_text(app_client: Any, app_sql: Any, q: str) -> None:
    body = app_client.get("/api/search", params={"q": q}).json()
    assert body["query"] == q
    assert all(isinstance(hit["score"], float) for hit in body["latents"])
    if not any(c.isalnum() for c in q):  # nothing but punctuation: no word to search for
        assert body["latents"] == [] and "no word" in body["reason"]
    html = soup(app_client.get("/search", params={"q": q}))
    if body["latents"]:  # the words of the string, searched as words
        assert result_ids(html) == [hit["latent_id"] for hit in body["latents"]]
    else:
        assert q in html.select_one("#no-latents").get_text()
    assert html.select_one("#search-q")["value"] == q
    assert app_sql("SELECT count(*) FROM latents") == [(64,)]


def test_empty_and_oversize_queries(app_client: Any) -> None:
    body = app_client.get("/api/search?q=").json()
    assert (body["query"], body["latents"], body["tokens"], body["total"]) == ("", [], [], 0)
    assert "Type a word" in body["reason"]
    html = soup(app_client.get("/search"))  # nothing asked yet: the form alone
    assert html.select_one("#search-results").get_text().strip() == ""
    html = soup(app_client.get("/search?q="))  # asked for nothing: told why nothing is listed
    assert "Type a word" in html.select_one("#no-latents").get_text()
    too_long = "x" * 201
    assert app_client.get("/api/search", params={"q": too_long}).status_code == 422
    assert app_client.get("/search", params={"q": too_long}).status_code == 422
    assert app_client.get("/api/search", params={"q": "x" * 5000}).status_code == 422


def test_htmx_search_returns_only_the_results(app_client: Any) -> None:
    response = app_client.get("/search?q=the", headers={"HX-Request": "true"})
    html = soup(response)
    assert html.select_one("html") is None
    assert html.select_one("div#search-results") is not None
