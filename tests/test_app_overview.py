"""The overview page and /api/build: SAE config, metrics, density histogram, provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bs4 import BeautifulSoup


def page(client: Any, url: str) -> BeautifulSoup:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return BeautifulSoup(response.text, "html.parser")


def test_overview_shows_the_sae_metrics_and_provenance(app_client: Any, app_sql: Any) -> None:
    [(model, n_latents, sae_hash)] = app_sql("SELECT model, n_latents, sae_hash FROM build")
    html = page(app_client, "/")
    assert html.h1 is not None and f"{n_latents} latents of {model}" in html.h1.get_text()
    metrics = {row.th["title"]: row.td.get_text() for row in html.select("#index-metrics tr")}
    assert metrics["n_latents"] == str(n_latents)
    config = {row.th["title"]: row.td.get_text() for row in html.select("#sae-config tr")}
    assert config["k"] == "4" and config["d_in"] == "32"
    assert sae_hash in html.select_one("#provenance").get_text()


def test_density_histogram_is_inline_svg_with_a_bar_per_populated_bin(
    app_client: Any, app_sql: Any
) -> None:
    [(populated,)] = app_sql("SELECT count(*) FROM density_histogram WHERE n_latents > 0")
    svg = page(app_client, "/").select_one("#density-histogram svg")
    assert svg is not None
    bars = svg.select("rect.bar")
    assert len(bars) == populated
    assert all(bar.title and "latents" in bar.title.get_text() for bar in bars)


def test_density_histogram_leaves_out_empty_bins_unless_all_are_empty() -> None:
    from app.records import HistogramBin
    from app.routes.pages import density_histogram_svg

    bins = [HistogramBin(-3.0, -2.75, 12), HistogramBin(-2.75, -2.5, 0)]
    bars = BeautifulSoup(density_histogram_svg(bins), "html.parser").select("svg rect.bar")
    assert [bar.title.get_text() for bar in bars] == ["density 1e-3.00 to 1e-2.75: 12 latents"]
    empty = [HistogramBin(-3.0, -2.75, 0), HistogramBin(-2.75, -2.5, 0)]
    assert len(BeautifulSoup(density_histogram_svg(empty), "html.parser").select("rect.bar")) == 2


def test_api_build_returns_the_provenance_row(app_client: Any) -> None:
    body = app_client.get("/api/build").json()
    assert body["n_latents"] == 64 and body["k"] == 4
    assert body["metrics"]["n_latents"] == 64
    assert isinstance(body["sae_config"], dict)


def test_pages_link_to_each_other_and_carry_a_content_security_policy(app_client: Any) -> None:
    response = app_client.get("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    links = {a["href"] for a in BeautifulSoup(response.text, "html.parser").select("nav a")}
    assert {"/", "/latents", "/search", "/live"} <= links


def test_overview_shows_the_report_figures_of_a_trained_sae(
    tmp_path: Path, tiny_cache: Path
) -> None:
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import AppSettings
    from tests.helpers import index_tiny, trained_tiny_sae

    sae_folder = trained_tiny_sae(tmp_path / "sae", tiny_cache, steps=8)
    index = index_tiny(sae_folder, tiny_cache, tmp_path / "index.duckdb")
    with TestClient(create_app(AppSettings(index=index)), base_url="http://localhost") as client:
        html = page(client, "/")
        report = client.get("/api/build").json()["report"]
    figures = html.select("#sae-report figure.report-figure")
    assert [f["id"] for f in figures] == ["training-nmse", "training-dead"]
    desc = figures[0].select_one("svg desc")
    assert desc is not None and str(report["training"][-1]["tokens"]) in desc.get_text()
    assert len(report["training"]) == 8 and report["cfg"]["n_latents"] == 32
    assert "nmse" in report["training"][-1] and "multi_topk_nmse" in report["training"][-1]
    # An index built before the rename fvu -> nmse reads as one built now.
    old_index = with_training_keys_before_nmse(index, tmp_path / "old.duckdb")
    with TestClient(create_app(AppSettings(index=old_index)), base_url="http://localhost") as old:
        old_html = page(old, "/")
        assert old.get("/api/build").json()["report"]["training"] == report["training"]
    old_figures = old_html.select("#sae-report figure.report-figure")
    assert [str(f) for f in old_figures] == [str(f) for f in figures]
    assert old_html.select_one('#training th[title="nmse"]').get_text() == "Normalized MSE"


def with_training_keys_before_nmse(index: Path, copy: Path) -> Path:
    """A copy of `index` whose stored report names the training nmse as it was before: fvu."""
    import duckdb

    shutil.copy(index, copy)
    connection = duckdb.connect(str(copy))
    [(stored,)] = connection.execute("SELECT report FROM build").fetchall()
    report = json.loads(stored)
    old = {"nmse": "fvu", "multi_topk_nmse": "multi_topk_fvu"}
    report["training"] = [{old.get(k, k): v for k, v in s.items()} for s in report["training"]]
    connection.execute("UPDATE build SET report = ?", [json.dumps(report)])
    connection.close()
    return copy


def test_overview_of_an_sae_without_a_training_record_has_no_report(app_client: Any) -> None:
    html = page(app_client, "/")
    assert html.select_one("#sae-report") is None
