"""Bad index files, the `atlas` command, htmx vendoring, and the error handler."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.cli import main
from app.errors import AtlasAppError
from app.main import create_app
from app.settings import AppSettings

BIN = Path(sys.executable).parent


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(AtlasAppError, match=re.escape(f"index file {missing} does not exist")):
        create_app(AppSettings(index=missing))


def test_a_file_that_is_not_duckdb_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.duckdb"
    bogus.write_text("this is not a database")
    with pytest.raises(AtlasAppError, match=r"bogus\.duckdb is not a readable Latent Atlas index"):
        create_app(AppSettings(index=bogus))


def test_a_duckdb_file_without_the_index_tables_is_named(tmp_path: Path) -> None:
    import duckdb

    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(AtlasAppError, match=r"other\.duckdb is not a readable Latent Atlas index"):
        create_app(AppSettings(index=other))


def test_cli_reports_a_bad_index_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--index", str(tmp_path / "missing.duckdb")]) == 2
    assert "missing.duckdb does not exist" in capsys.readouterr().err


def test_atlas_version_and_help() -> None:
    atlas = shutil.which("atlas", path=str(BIN))
    assert atlas is not None
    done = subprocess.run([atlas, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("latent-atlas ")
    done = subprocess.run([atlas, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert "--index" in done.stdout and "--port" in done.stdout and "--host" in done.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", 0), ("page_size", 0), ("max_live_chars", -1), ("page_size", 10_000)],
)
def test_settings_name_the_bad_field(tmp_path: Path, field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        AppSettings(index=tmp_path / "i.duckdb", **{field: value})


def test_every_setting_is_documented() -> None:
    import dataclasses

    for spec in dataclasses.fields(AppSettings):
        assert spec.metadata.get("help"), f"AppSettings.{spec.name} has no help text"


def test_without_htmx_pages_still_work_and_the_server_warns(
    app_index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    static = tmp_path / "static"
    shutil.copytree(
        AppSettings(index=app_index).static_dir, static, ignore=shutil.ignore_patterns("vendor")
    )
    with caplog.at_level(logging.WARNING, logger="atlas"):
        app = create_app(AppSettings(index=app_index, static_dir=static))
    assert "htmx is missing" in caplog.text
    with TestClient(app, base_url="http://localhost") as client:
        page = client.get("/latents")
    assert page.status_code == 200 and "htmx.min.js" not in page.text


def test_vendored_htmx_is_served_from_our_own_route(app_client: Any) -> None:
    vendored = AppSettings(index=Path("x")).static_dir / "vendor" / "htmx.min.js"
    if not vendored.is_file():
        pytest.fail(f"{vendored} is missing: run `make setup` to vendor htmx")
    response = app_client.get("/static/vendor/htmx.min.js")
    assert response.status_code == 200 and "htmx" in response.text[:2000]
    assert '<script src="/static/vendor/htmx.min.js"' in app_client.get("/").text
    assert "https://" not in app_client.get("/").text.split("<main>")[0]  # no CDN


@pytest.mark.parametrize("url", ["/nope", "/latents/abc", "/static/../app/db.py"])
def test_unknown_pages_are_html_errors(app_client: Any, url: str) -> None:
    response = app_client.get(url)
    assert response.status_code in (404, 422)
    assert response.headers["content-type"].startswith("text/html")


def test_wrong_methods_are_405_not_500(app_client: Any) -> None:
    assert app_client.delete("/api/latents/1").status_code == 405
    assert app_client.get("/api/activations").status_code == 405
    assert app_client.put("/live").status_code == 405


def test_no_page_loads_anything_from_another_host(app_client: Any) -> None:
    assert app_client.get("/docs").status_code == 404  # FastAPI's docs page needs a CDN
    for url in ("/", "/latents", "/latents/1", "/search?q=a", "/live"):
        html = app_client.get(url).text
        assert 'src="http' not in html and 'href="http' not in html, url


def test_a_folder_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(AtlasAppError, match="is a folder"):
        create_app(AppSettings(index=tmp_path))
