"""The overview page labels every metric and setting in words; the raw key stays the `title`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup

KV_TABLES = ("#index-metrics", "#sae-eval", "#training", "#sae-config")
RAW_KEY = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")  # n_latents, dead, delta_loss_...


@pytest.fixture(scope="module")
def evaluated_client(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Iterator[Any]:
    """The app over an index of a trained SAE with an eval.json: every overview table shown."""
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings
    from sae.evaluation.evaluate import EvalResult, record_eval
    from tests.helpers import index_tiny, trained_tiny_sae

    root = tmp_path_factory.mktemp("labels")
    sae_folder = trained_tiny_sae(root / "sae", tiny_cache, steps=4)
    numbers = {f.name: 0.5 for f in fields(EvalResult) if f.name != "probe"}
    result = EvalResult(**numbers | {"n_tokens": 2048, "n_contexts": 128})
    record_eval(sae_folder, result, acts=str(tiny_cache))
    index = index_tiny(sae_folder, tiny_cache, root / "index.duckdb")
    with TestClient(create_app(AppSettings(index=index)), base_url="http://localhost") as client:
        yield client


def _labels(client: Any) -> dict[str, dict[str, str]]:
    """For each key-value table of the overview: raw key (the th's title) -> label shown."""
    response = client.get("/")
    assert response.status_code == 200, response.text
    html = BeautifulSoup(response.text, "html.parser")
    return {
        table: {th["title"]: th.get_text() for th in html.select(f"{table} th")}
        for table in KV_TABLES
    }


def test_no_overview_label_is_a_raw_key(evaluated_client: Any) -> None:
    tables = _labels(evaluated_client)
    assert all(tables.values()), tables  # every table is on the page and has rows
    raw = [label for rows in tables.values() for label in rows.values() if RAW_KEY.match(label)]
    assert raw == []


def test_overview_names_the_metrics_in_words(evaluated_client: Any) -> None:
    tables = _labels(evaluated_client)
    assert tables["#sae-eval"]["delta_loss_zero_ablation"] == "Δ LM loss, zero ablation"
    assert tables["#sae-eval"]["nmse"] == "Normalized MSE"
    assert tables["#sae-eval"]["explained_variance"] == "Explained variance"
    assert tables["#index-metrics"]["dead"] == "Dead latents"
    assert tables["#sae-config"]["n_latents"] == "Latents"


def test_the_json_api_keeps_the_raw_keys(evaluated_client: Any) -> None:
    build = evaluated_client.get("/api/build").json()
    assert "delta_loss_zero_ablation" in build["report"]["eval"]
    assert "median_density" in build["metrics"]


def test_the_tiny_index_overview_has_no_raw_key_either(app_client: Any) -> None:
    html = BeautifulSoup(app_client.get("/").text, "html.parser")
    shown = [th.get_text() for th in html.select("table.kv th")]  # provenance included
    assert "Latents" in shown and "Model" in shown
    assert [label for label in shown if RAW_KEY.match(label)] == []
