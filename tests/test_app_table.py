"""The latent table: sorting, filtering, pagination by HTMX swaps, shareable URLs, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup


def soup(response: Any) -> BeautifulSoup:
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def shown_ids(html: BeautifulSoup) -> list[int]:
    return [int(row["data-latent"]) for row in html.select("#latent-table tbody tr[data-latent]")]


def ids(app_sql: Any, sql: str) -> list[Any]:
    return [row[0] for row in app_sql(sql)]


@pytest.mark.parametrize(
    "sort",
    [
        "latent_id",
        "density",
        "max_activation",
        "explanation_precision",
        "explanation_recall",
        "n_fires",
    ],
)
def test_sorting_orders_rows_like_the_database(app_client: Any, app_sql: Any, sort: str) -> None:
    # a sort key is the name of the `latents` column it sorts by
    expected = ids(
        app_sql,
        f"SELECT latent_id FROM latents ORDER BY {sort} DESC NULLS LAST, latent_id LIMIT 20",
    )
    html = soup(app_client.get(f"/latents?sort={sort}&order=desc&limit=20"))
    assert shown_ids(html) == expected
    active = html.select_one("th a.sort.active")
    assert active is not None and active["data-sort"] == sort


def test_default_table_is_by_id_and_sort_links_keep_the_filters(app_client: Any) -> None:
    html = soup(app_client.get("/latents?q=the&limit=7"))
    assert shown_ids(html) == sorted(shown_ids(html))
    assert html.select_one("th a.sort.active")["data-sort"] == "latent_id"
    link = html.select_one('th a.sort[data-sort="density"]')
    assert link is not None
    assert link["href"] == link["hx-get"]
    assert "q=the" in link["href"] and "limit=7" in link["href"] and "sort=density" in link["href"]
    assert link["hx-push-url"] == "true"  # the address bar follows the table


def test_pagination_walks_every_latent_once(app_client: Any) -> None:
    seen: list[int] = []
    url: str | None = "/latents?limit=25"
    while url:
        html = soup(app_client.get(url, headers={"HX-Request": "true"}))
        assert html.select_one("html") is None  # a partial, not a page
        seen += shown_ids(html)
        following = html.select_one("#next-page")
        url = following["href"] if following else None
    assert seen == list(range(64))


def test_htmx_history_restore_gets_the_whole_page(app_client: Any) -> None:
    headers = {"HX-Request": "true", "HX-History-Restore-Request": "true"}
    html = soup(app_client.get("/latents?offset=50", headers=headers))
    assert html.select_one("form#latent-filters") is not None
    assert shown_ids(html) == list(range(50, 64))


def test_filters_by_flag_density_and_text(app_client: Any, app_sql: Any) -> None:
    dense = ids(app_sql, "SELECT latent_id FROM latents WHERE dense ORDER BY latent_id")
    assert dense, "the tiny index is expected to have dense latents"
    assert shown_ids(soup(app_client.get("/latents?flag=dense"))) == dense
    others = shown_ids(soup(app_client.get("/latents?not_flag=dense&limit=100")))
    assert set(others) == set(range(64)) - set(dense)
    band = ids(
        app_sql,
        "SELECT latent_id FROM latents WHERE density BETWEEN 0.05 AND 0.07 ORDER BY latent_id",
    )
    url = "/latents?min_density=0.05&max_density=0.07&limit=100"
    assert shown_ids(soup(app_client.get(url))) == band
    expected = ids(
        app_sql,
        "SELECT latent_id FROM latents WHERE explanation ILIKE '%␣is%' "
        "OR top_token_text ILIKE '% is%' ORDER BY latent_id",
    )
    assert expected
    assert shown_ids(soup(app_client.get("/latents?q=+is&limit=100"))) == expected


def test_filter_form_reflects_the_url_state(app_client: Any) -> None:
    url = "/latents?q=of&flag=dense&not_flag=repeat&min_density=0.01&sort=explanation_recall"
    html = soup(app_client.get(url + "&order=asc"))
    assert html.select_one("#filter-q")["value"] == "of"
    assert html.select_one('input[name="flag"][value="dense"]').has_attr("checked")
    assert html.select_one('input[name="not_flag"][value="repeat"]').has_attr("checked")
    assert not html.select_one('input[name="not_flag"][value="dense"]').has_attr("checked")
    assert html.select_one('input[name="min_density"]')["value"] == "0.01"
    sort = html.select_one('input[name="sort"][form="latent-filters"]')["value"]
    assert sort == "explanation_recall"
    count = html.select_one("#latent-count").get_text()
    assert "match" in count


def test_page_links_keep_the_flag_filters(app_client: Any) -> None:
    html = soup(app_client.get("/latents?flag=dense&not_flag=repeat&limit=1"))
    following = html.select_one("#next-page")
    assert following is not None
    assert "flag=dense" in following["href"] and "not_flag=repeat" in following["href"]


def test_empty_form_fields_mean_no_bound(app_client: Any) -> None:
    html = soup(app_client.get("/latents?min_density=&max_density=&q=&limit=100"))
    assert len(shown_ids(html)) == 64


def test_api_latents_pages_and_sorts(app_client: Any) -> None:
    body = app_client.get("/api/latents?sort=n_fires&order=asc&offset=10&limit=5").json()
    assert body["total"] == 64 and body["offset"] == 10 and len(body["latents"]) == 5
    fires = [row["n_fires"] for row in body["latents"]]
    assert fires == sorted(fires)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ("limit=0", "limit"),
        ("limit=101", "at most 100"),
        ("offset=-1", "offset"),
        ("sort=bogus", "sort"),
        ("sort=precision", "sort"),  # the key is the column's name, explanation_precision
        ("not_flag=shiny", "unknown flag"),
        ("order=sideways", "order"),
        ("flag=shiny", "unknown flag"),
        ("min_density=2", "min_density"),
        ("max_density=abc", "max_density"),
        ("offset=99999999999999999999", "offset"),
        ("q=" + "x" * 201, "limit is 200"),
    ],
)
def test_bad_parameters_get_a_422_with_a_clear_message(
    app_client: Any, params: str, needle: str
) -> None:
    api = app_client.get(f"/api/latents?{params}")
    assert api.status_code == 422 and needle in api.json()["detail"]
    html = app_client.get(f"/latents?{params}")
    assert html.status_code == 422
    message = BeautifulSoup(html.text, "html.parser").select_one(".error-message")
    assert message is not None and needle in message.get_text()


def test_an_offset_past_the_end_is_an_empty_page(app_client: Any) -> None:
    html = soup(app_client.get("/latents?offset=1000"))
    assert shown_ids(html) == []
    assert html.select_one("td.empty") is not None
