"""A JumpReLU SAE in the browser: its index's overview, latent pages and live text, where the
number of latents firing changes from token to token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bs4 import BeautifulSoup

import sae
from tests.helpers import index_tiny, jumprelu_of

SHOWN = 5  # AppSettings.live_top_latents: the strongest latents a live token lists
TEXT = "The os module provides a portable way of using operating system functionality."


@pytest.fixture(scope="module")
def jump_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_sae: Path, tiny_cache: Path
) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings

    root = tmp_path_factory.mktemp("jumprelu-app")
    index = index_tiny(jumprelu_of(tiny_sae, root / "sae"), tiny_cache, root / "index.duckdb")
    settings = AppSettings(index=index, max_live_chars=300, allowed_hosts=("testserver",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_overview_names_the_architecture_and_its_mean_l0(jump_client: Any) -> None:
    build = jump_client.get("/api/build").json()
    assert build["sae_config"]["activation"] == "jumprelu"
    mean_l0 = build["metrics"]["mean_l0"]
    assert 0 < mean_l0 < 64
    lede = BeautifulSoup(jump_client.get("/").text, "html.parser").select_one("p.lede")
    assert lede is not None and "A JumpReLU SAE (mean L0 = " in lede.get_text()


def test_latent_pages_show_the_examples_of_a_jumprelu_latent(jump_client: Any) -> None:
    rows = jump_client.get("/api/latents?sort=density&order=desc&limit=1").json()["latents"]
    latent = rows[0]["latent_id"]
    page = jump_client.get(f"/latents/{latent}")
    assert page.status_code == 200
    html = BeautifulSoup(page.text, "html.parser")
    firing = html.select("#top-examples li.example span.tok")
    assert firing and all("act-" in " ".join(span["class"]) for span in firing)


def test_live_text_gives_each_token_every_latent_above_its_threshold(jump_client: Any) -> None:
    from sae.activations.hookpoints import residual_stream
    from sae.activations.lm import load_lm

    build = jump_client.get("/api/build").json()
    lm = load_lm(build["model"])
    model = sae.load(build["sae_path"])
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    x = residual_stream(lm, torch.tensor([ids]), build["layer"])[0]
    with torch.no_grad():
        pre = (x * model.cfg.input_scale - model.b_pre) @ model.W_enc.T + model.b_enc
        dense = pre.relu() * (pre > model.threshold)  # (T, n)
    tokens = jump_client.post("/api/activations", json={"text": TEXT}).json()["tokens"]
    counts = set()
    for position, token in enumerate(tokens):
        if token["skipped"]:
            continue
        want = [int(i) for i in dense[position].nonzero().squeeze(1)]
        strongest = sorted(want, key=lambda i: -float(dense[position, i]))[:SHOWN]
        assert [item["latent_id"] for item in token["latents"]] == strongest
        counts.add(len(want))
    assert len(counts) > 1  # the number firing changes with the token
