"""Hostile strings in the index (markup, quotes) render as text on every page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import AppSettings


@pytest.fixture(scope="module")
def hostile_client(hostile_index: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(AppSettings(index=hostile_index)),
        base_url="http://localhost",
        raise_server_exceptions=False,
    ) as c:
        yield c


def hostile_sql(client: TestClient, sql: str) -> list[tuple[Any, ...]]:
    with client.app.state.db.engine.connect() as connection:  # type: ignore[attr-defined]
        return [tuple(row) for row in connection.exec_driver_sql(sql).fetchall()]


def assert_no_injected_markup(html: BeautifulSoup) -> None:
    scripts = [s.get("src") for s in html.select("script")]
    assert all(src == "/static/vendor/htmx.min.js" for src in scripts), scripts
    assert html.select("img") == []
    assert html.select("main b") == []
    assert not any(attr.startswith("on") for tag in html.find_all(True) for attr in tag.attrs)


def test_the_hostile_corpus_reached_the_index(hostile_client: TestClient) -> None:
    rows = hostile_sql(
        hostile_client,
        "SELECT count(*) FROM examples e JOIN contexts c USING (context_id), "
        "unnest(c.token_ids) AS t(token_id) JOIN vocab v ON v.token_id = t.token_id "
        "WHERE v.text LIKE '%<%' OR v.text LIKE '%\"%'",
    )
    assert rows[0][0] > 0


def test_latent_pages_show_markup_tokens_as_text(hostile_client: TestClient) -> None:
    seen_tokens: set[str] = set()
    for latent in range(16):
        response = hostile_client.get(f"/latents/{latent}")
        assert response.status_code == 200
        html = BeautifulSoup(response.text, "html.parser")
        assert_no_injected_markup(html)
        seen_tokens |= {span.get_text() for span in html.select("span.context")}
        for span in html.select("span.tok"):
            assert span["title"].startswith(span.get_text())  # the hover title, also escaped
    joined = "".join(sorted(seen_tokens))
    assert "<" in joined and '"' in joined and "script" in joined


def test_table_search_and_live_escape_hostile_strings(hostile_client: TestClient) -> None:
    for url in ("/", "/latents?limit=16", "/search?q=script", '/search?q=<script>alert("x")'):
        response = hostile_client.get(url)
        assert response.status_code == 200, url
        assert_no_injected_markup(BeautifulSoup(response.text, "html.parser"))
    html = BeautifulSoup(hostile_client.get('/search?q="><script>').text, "html.parser")
    assert html.select_one("#search-q")["value"] == '"><script>'
    text = '<script>alert("x")</script> "quoted" \'single\' </textarea>'
    response = hostile_client.post("/live", data={"text": text})
    assert response.status_code == 200
    html = BeautifulSoup(response.text, "html.parser")
    assert_no_injected_markup(html)
    assert html.select_one("#live-text").get_text() == text
    assert "".join(s.get_text() for s in html.select("li.live-token > span.token")) == text


def test_json_api_returns_hostile_strings_verbatim(hostile_client: TestClient) -> None:
    body = hostile_client.post("/api/activations", json={"text": '<script>"x"</script>'}).json()
    assert "".join(t["text"] for t in body["tokens"]) == '<script>"x"</script>'
    response = hostile_client.get("/api/latents/0")
    assert response.headers["content-type"].startswith("application/json")
