"""A latent's page and /api/latents/{id}: examples with highlights, histogram, links, 404s."""

from __future__ import annotations

import re
from typing import Any

import pytest
from bs4 import BeautifulSoup


def soup(response: Any) -> BeautifulSoup:
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def busiest_latent(app_sql: Any) -> int:
    [(latent_id,)] = app_sql(
        "SELECT latent_id FROM latents WHERE NOT dead ORDER BY n_fires DESC, latent_id LIMIT 1"
    )
    return int(latent_id)


def test_top_examples_show_every_token_with_its_activation(app_client: Any, app_sql: Any) -> None:
    latent = busiest_latent(app_sql)
    stored = app_sql(
        f"SELECT context_id, activation, activations FROM examples "
        f"WHERE latent_id = {latent} AND kind = 'top' ORDER BY rank"
    )
    html = soup(app_client.get(f"/latents/{latent}"))
    shown = html.select("#top-examples li.example")
    assert [int(li["data-context"]) for li in shown] == [row[0] for row in stored]
    spans = shown[0].select("span.tok")
    firing = [value for value in stored[0][2] if value > 0]
    assert len(spans) == len(firing) > 0  # one tinted span per token where the latent fires
    for span, value in zip(spans, firing, strict=True):
        assert span["title"] == f"{span.get_text()}: {value:.4g}"  # the hover title
        assert span["class"][1].startswith("act-") and span["class"][1] != "act-0"
    [(context_tokens,)] = app_sql(
        f"SELECT token_ids FROM contexts WHERE context_id = {stored[0][0]}"
    )
    vocab = dict(app_sql("SELECT token_id, text FROM vocab"))
    shown_text = shown[0].select_one("span.context").get_text()
    assert shown_text == "".join(vocab[t] for t in context_tokens).replace("\n", "⏎")
    peak = shown[0].select_one("span.tok.peak")
    assert peak is not None and "act-10" in peak["class"]  # the strongest token of the latent


def test_quantile_examples_are_grouped_by_band(app_client: Any, app_sql: Any) -> None:
    latent = busiest_latent(app_sql)
    bands = {
        row[0]
        for row in app_sql(
            f"SELECT DISTINCT band FROM examples WHERE latent_id = {latent} AND kind = 'quantile'"
        )
    }
    html = soup(app_client.get(f"/latents/{latent}"))
    assert {int(ol["id"].removeprefix("band-")) for ol in html.select("ol[id^=band-]")} == bands


def test_latent_page_shows_histogram_explanation_and_related_latents(
    app_client: Any, app_sql: Any
) -> None:
    latent = busiest_latent(app_sql)
    [(explanation,)] = app_sql(f"SELECT explanation FROM latents WHERE latent_id = {latent}")
    neighbours = [
        row[0]
        for row in app_sql(
            f"SELECT other_id FROM neighbours WHERE latent_id = {latent} ORDER BY rank"
        )
    ]
    html = soup(app_client.get(f"/latents/{latent}"))
    assert html.select_one("#explanation").get_text() == explanation
    assert html.select("#patterns tbody tr")
    bars = html.select("#activation-histogram svg rect.bar")
    [(n_bins,)] = app_sql(f"SELECT count(*) FROM activation_histograms WHERE latent_id = {latent}")
    assert len(bars) == n_bins
    assert all(
        re.fullmatch(r"activation \S+ to \S+: [\d,]+ tokens", b.title.get_text()) for b in bars
    )
    widths = [float(bar["width"]) for bar in bars]  # log-spaced bins on a log axis: one width
    assert max(widths) - min(widths) <= 0.1
    links = [a["href"] for a in html.select("#neighbours a.latent-link")]
    assert links == [f"/latents/{other}" for other in neighbours]
    assert html.select("#coactive a.latent-link")
    assert html.select("#promoted tbody tr") and html.select("#suppressed tbody tr")
    assert html.select("#top-tokens tbody tr a.token")


def test_latent_nav_links_its_neighbours_and_stops_at_either_end(
    app_client: Any, app_sql: Any
) -> None:
    [(n_latents,)] = app_sql("SELECT n_latents FROM build")
    assert n_latents == 64
    for latent in (0, busiest_latent(app_sql), 1, n_latents - 2, n_latents - 1):
        nav = soup(app_client.get(f"/latents/{latent}")).select_one("nav.latent-nav")
        previous, following = nav.select_one("#prev-latent"), nav.select_one("#next-latent")
        if latent == 0:  # the first latent has no previous one: no link to /latents/-1
            assert previous is None
        else:
            assert previous["href"] == f"/latents/{latent - 1}"
            assert previous.get_text() == f"← #{latent - 1}"
        if latent == n_latents - 1:  # the last has no next one: no link to a 404
            assert following is None
        else:
            assert following["href"] == f"/latents/{latent + 1}"
            assert following.get_text() == f"#{latent + 1} →"
        assert [a["href"] for a in nav.select("a:not([id])")] == ["/latents"]


def test_api_detail_holds_everything_on_the_page(app_client: Any, app_sql: Any) -> None:
    latent = busiest_latent(app_sql)
    body = app_client.get(f"/api/latents/{latent}").json()
    assert body["latent"]["latent_id"] == latent
    for key in (
        "top_examples",
        "quantile_examples",
        "quantile_bands",
        "histogram",
        "promoted",
        "suppressed",
        "neighbours",
        "coactive",
        "top_tokens",
        "patterns",
    ):
        assert body[key], key
    example = body["top_examples"][0]
    assert example["tokens"][example["position"]]["activation"] == pytest.approx(
        example["activation"], rel=1e-2
    )


@pytest.mark.parametrize("latent", ["64", "-1", "100000", "99999999999999999999999"])
def test_unknown_latents_are_404_or_422_never_500(app_client: Any, latent: str) -> None:
    api = app_client.get(f"/api/latents/{latent}")
    page = app_client.get(f"/latents/{latent}")
    assert api.status_code in (404, 422) and "detail" in api.json()
    assert page.status_code in (404, 422)
    if latent == "64":
        assert api.status_code == 404 and "latent 64 does not exist" in api.json()["detail"]
        message = BeautifulSoup(page.text, "html.parser").select_one(".error-message")
        assert message is not None and "latent 64 does not exist" in message.get_text()


def test_htmx_requests_get_an_error_fragment(app_client: Any) -> None:
    response = app_client.get("/latents/64", headers={"HX-Request": "true"})
    assert response.status_code == 404
    assert response.headers["HX-Retarget"] == "#messages"
    html = BeautifulSoup(response.text, "html.parser")
    assert html.select_one("html") is None and html.select_one(".error") is not None
