"""Search: ranked text over explanations and top tokens, token → latents, hostile queries."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from bs4 import BeautifulSoup


def soup(response: Any) -> BeautifulSoup:
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def result_ids(html: BeautifulSoup) -> list[int]:
    return [int(li["data-latent"]) for li in html.select("#latent-results li")]


def test_a_token_query_ranks_latents_whose_top_token_it_is_first(
    app_client: Any, app_sql: Any
) -> None:
    [(token,)] = app_sql(
        "SELECT top_token_text FROM latents WHERE trim(top_token_text) <> '' "
        "GROUP BY top_token_text ORDER BY count(*) DESC, top_token_text LIMIT 1"
    )
    owners = {
        row[0]
        for row in app_sql(
            f"SELECT latent_id FROM latents WHERE lower(trim(top_token_text)) = "
            f"'{token.strip().lower()}'"
        )
    }
    html = soup(app_client.get("/search?q=" + quote(token.strip())))
    ranked = result_ids(html)
    assert set(ranked[: len(owners)]) == owners


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
    [(pattern,)] = app_sql(
        "SELECT pattern FROM explanation_patterns WHERE pattern LIKE '%␣%' ORDER BY latent_id, "
        "rank LIMIT 1"
    )
    words = pattern.replace("[", "").replace("]", "").replace("␣", " ")
    body = app_client.get("/api/search", params={"q": words}).json()
    assert body["latents"], words
    assert all(
        pattern.replace("[", "").replace("]", "")
        in (hit["explanation"] or "").replace("[", "").replace("]", "")
        or words.lower() in (hit["top_token_text"] or "").lower()
        for hit in body["latents"][:1]
    )


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
    assert body["latents"] == []  # no explanation or token contains these characters
    html = soup(app_client.get("/search", params={"q": q}))
    assert q in html.select_one("#no-latents").get_text()
    assert html.select_one("#search-q")["value"] == q
    assert app_sql("SELECT count(*) FROM latents") == [(64,)]


def test_empty_and_oversize_queries(app_client: Any) -> None:
    assert app_client.get("/api/search?q=").json() == {"query": "", "latents": [], "tokens": []}
    html = soup(app_client.get("/search"))
    assert html.select_one("#search-results").get_text().strip() == ""
    too_long = "x" * 201
    assert app_client.get("/api/search", params={"q": too_long}).status_code == 422
    assert app_client.get("/search", params={"q": too_long}).status_code == 422
    assert app_client.get("/api/search", params={"q": "x" * 5000}).status_code == 422


def test_htmx_search_returns_only_the_results(app_client: Any) -> None:
    response = app_client.get("/search?q=the", headers={"HX-Request": "true"})
    html = soup(response)
    assert html.select_one("html") is None
    assert html.select_one("div#search-results") is not None
