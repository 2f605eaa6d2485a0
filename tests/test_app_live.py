"""Live text: the index's model and SAE run on the user's text; caps and bad bodies."""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup

TEXT = "The os module provides a portable way of using operating system functionality."


def test_api_activations_gives_each_token_its_top_latents(app_client: Any) -> None:
    response = app_client.post("/api/activations", json={"text": TEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    tokens = body["tokens"]
    assert body["n_tokens"] == len(tokens) > 5
    assert "".join(t["text"] for t in tokens) == TEXT
    assert tokens[0]["skipped"] and "attention sink" in tokens[0]["skipped"]
    assert tokens[0]["latents"] == []
    encoded = [t for t in tokens if not t["skipped"]]
    assert encoded and all(t["latents"] for t in encoded)
    for token in encoded:
        values = [item["activation"] for item in token["latents"]]
        assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
        assert len(values) <= 4  # k = 4
        assert all(0 <= item["latent_id"] < 64 for item in token["latents"])


def test_live_codes_match_the_sae_on_the_same_tokens(app_client: Any) -> None:
    import torch

    import sae
    from sae.activations.hookpoints import residual_stream
    from sae.activations.lm import load_lm

    build = app_client.get("/api/build").json()
    lm = load_lm(build["model"])
    model = sae.load(build["sae_path"])
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    x = residual_stream(lm, torch.tensor([ids]), build["layer"])[0]
    with torch.no_grad():
        acts, idx = model.encode(x)
    body = app_client.post("/api/activations", json={"text": TEXT}).json()
    token = body["tokens"][3]
    expected = sorted(
        ((int(i), float(a)) for a, i in zip(acts[3], idx[3], strict=True) if a > 0),
        key=lambda p: -p[1],
    )
    got = [(item["latent_id"], item["activation"]) for item in token["latents"]]
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [a for _, a in got] == pytest.approx([a for _, a in expected], rel=1e-5)


def test_live_page_form_and_result_with_click_through(app_client: Any) -> None:
    form = BeautifulSoup(app_client.get("/live").text, "html.parser")
    assert form.select_one("form#live-form textarea[name=text]") is not None
    response = app_client.post("/live", data={"text": TEXT})
    assert response.status_code == 200
    html = BeautifulSoup(response.text, "html.parser")
    assert html.select_one("#live-text").get_text() == TEXT  # the text stays in the form
    tokens = html.select("#live-result li.live-token")
    assert tokens[0].has_attr("class") and "skipped" in tokens[0]["class"]
    links = html.select("#live-result a.latent-link")
    assert links and all(a["href"].startswith("/latents/") for a in links)
    assert app_client.get(links[0]["href"]).status_code == 200


def test_htmx_live_returns_the_result_fragment(app_client: Any) -> None:
    response = app_client.post("/live", data={"text": TEXT}, headers={"HX-Request": "true"})
    html = BeautifulSoup(response.text, "html.parser")
    assert html.select_one("html") is None and html.select_one("div#live-result") is not None


def test_text_past_the_cap_gets_a_clear_413(app_client: Any) -> None:
    long_text = "word " * 100  # 500 characters; the test app allows 300
    api = app_client.post("/api/activations", json={"text": long_text})
    assert api.status_code == 413
    assert api.json()["detail"] == ("the text is 500 characters long; live text takes at most 300")
    page = app_client.post("/live", data={"text": long_text})
    assert page.status_code == 413
    message = BeautifulSoup(page.text, "html.parser").select_one(".error-message")
    assert message is not None and "at most 300" in message.get_text()


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"text": ""}}, 422),
        ({"json": {"text": "   "}}, 422),
        ({"json": {}}, 422),
        ({"json": {"text": 5}}, 422),
        ({"json": ["text"]}, 422),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ({"json": {"text": "x" * 200_000}}, 422),
    ],
)
def test_malformed_bodies_are_4xx(app_client: Any, kwargs: dict[str, Any], status: int) -> None:
    response = app_client.post("/api/activations", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_empty_live_form_is_a_422(app_client: Any) -> None:
    assert app_client.post("/live", data={"text": ""}).status_code == 422
    assert app_client.post("/live").status_code == 422
