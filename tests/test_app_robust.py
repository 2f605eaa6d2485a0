"""A damaged index file: refused at start with one line, or a clear 5xx page while serving.

DuckDB keeps a checksum in the first 8 bytes of every 256 KiB block and checks it when the
block is read, so damage shows only when a query touches that block; the app reads every
table once at start so that a damaged file is named before the first request.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from bs4 import BeautifulSoup

from app.cli import main
from app.errors import AtlasAppError
from app.main import create_app
from app.settings import AppSettings

FILE_HEADER = 3 * 4096  # DuckDB's main header and its two database headers come first
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "referrer-policy")
# every table but `build`, the text index's (in a schema of its own) too
TABLES = "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE table_name <> 'build'"
BLOCKS = "SELECT DISTINCT block_id FROM pragma_storage_info(?) WHERE block_id >= 0"


def data_blocks(path: Path, *, table: str | None = None) -> tuple[int, list[int]]:
    """The block size and the blocks of `table`'s columns (all tables but `build` if None)."""
    with duckdb.connect(str(path), read_only=True) as connection:
        row = connection.execute("SELECT block_size FROM pragma_database_size()").fetchone()
        assert row is not None
        tables = [table] if table else [t for (t,) in connection.execute(TABLES).fetchall()]
        blocks = {
            block for name in tables for (block,) in connection.execute(BLOCKS, [name]).fetchall()
        }
    return int(row[0]), sorted(blocks)


def truncated(index: Path, out: Path) -> Path:
    data = index.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def flipped(index: Path, out: Path, *, table: str = "examples", every: bool = False) -> Path:
    """16 bytes inverted inside the first block of `table` (`every`: of each of its blocks):
    only reading it shows the damage."""
    shutil.copy(index, out)  # read from the copy: the app under test holds `index` open
    block_size, blocks = data_blocks(out, table=table)
    data = bytearray(out.read_bytes())
    for block in blocks if every else blocks[:1]:
        at = FILE_HEADER + block * block_size + 1000
        data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    out.write_bytes(bytes(data))
    return out


def overwritten(index: Path, out: Path, *, pages: int = 64, seed: int = 0) -> Path:
    """`pages` random 4 KiB pages of random bytes in the blocks of the tables (not `build`)."""
    shutil.copy(index, out)
    block_size, blocks = data_blocks(out)
    rng = random.Random(seed)
    data = bytearray(out.read_bytes())
    for _ in range(pages):
        block = rng.choice(blocks)
        at = FILE_HEADER + block * block_size + rng.randrange(block_size // 4096) * 4096
        data[at : at + 4096] = rng.randbytes(4096)
    out.write_bytes(bytes(data))
    return out


DAMAGES: dict[str, Callable[[Path, Path], Path]] = {
    "truncated": truncated,
    "flipped": flipped,
    "overwritten": overwritten,
}


@pytest.fixture(params=sorted(DAMAGES))
def damaged_index(request: pytest.FixtureRequest, app_index: Path, tmp_path: Path) -> Path:
    return DAMAGES[request.param](app_index, tmp_path / f"{request.param}.duckdb")


def test_the_damage_is_not_seen_by_opening_the_file(damaged_index: Path) -> None:
    # The cases are worth testing only if DuckDB opens the file and reads the build row.
    with duckdb.connect(str(damaged_index), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM build").fetchone() == (1,)


def test_create_app_refuses_a_damaged_index(damaged_index: Path) -> None:
    with pytest.raises(AtlasAppError) as caught:
        create_app(AppSettings(index=damaged_index))
    message = str(caught.value)
    assert str(damaged_index) in message and "damaged" in message
    assert "indexer build" in message


def test_atlas_serve_names_a_damaged_index_in_one_line(
    damaged_index: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.append(app))
    assert main(["serve", "--index", str(damaged_index)]) == 2
    assert served == []
    err = capsys.readouterr().err
    assert err.startswith("atlas: error: ") and err.count("\n") == 1, err
    assert str(damaged_index) in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["empty", "folder", "text", "missing", "zeros"])
def test_atlas_serve_names_a_file_that_is_no_index(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.duckdb"
    if kind == "empty":
        path.touch()
    elif kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a database\n")
    elif kind == "zeros":
        path.write_bytes(bytes(1 << 20))
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: pytest.fail("served a bad index"))
    assert main(["serve", "--index", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atlas: error: ") and err.count("\n") == 1, err
    assert str(path) in err


def test_a_good_index_passes_the_start_check(app_index: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(app_index, copy)
    app = create_app(AppSettings(index=copy))
    app.state.db.close()


# --- storage errors while serving -------------------------------------------------------------


def test_a_file_damaged_after_start_gives_a_clear_500(app_index: Path, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    copy = tmp_path / "copy.duckdb"
    shutil.copy(app_index, copy)
    settings = AppSettings(index=copy, allowed_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        # the table a latent page reads
        damaged = flipped(copy, tmp_path / "flipped.duckdb", table="latent_pages", every=True)
        copy.write_bytes(damaged.read_bytes())  # in place, under the running app
        page = client.get("/latents/1")
        api = client.get("/api/latents/1")
    assert page.status_code == api.status_code == 500
    assert str(copy) in api.json()["detail"] and "damaged" in api.json()["detail"]
    assert "Corrupt database file" in api.json()["detail"]
    for name in SECURITY_HEADERS:
        assert page.headers.get(name), name


def _io_error(*_: Any, **__: Any) -> None:
    cause = duckdb.IOException('IO Error: Could not read enough bytes from file "i.duckdb"')
    raise sa.exc.OperationalError("SELECT 1", {}, cause)


def _checksum_error(*_: Any, **__: Any) -> None:
    raise duckdb.Error("Corrupt database file: computed checksum 1 does not match stored 2")


@pytest.mark.parametrize("failure", [_io_error, _checksum_error])
@pytest.mark.parametrize(
    ("url", "method"),
    [
        ("/latents/1", "latent_detail"),
        ("/api/latents/1", "latent_detail"),
        ("/latents", "latent_page"),
    ],
)
def test_a_storage_error_while_serving_is_a_clear_500(
    app_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[..., None],
    url: str,
    method: str,
) -> None:
    db = app_client.app.state.db
    monkeypatch.setattr(db, method, failure)
    response = app_client.get(url)
    assert response.status_code == 500
    for name in SECURITY_HEADERS:
        assert response.headers.get(name), name
    if url.startswith("/api/"):
        message = response.json()["detail"]
    else:
        assert response.headers["content-type"].startswith("text/html")
        found = BeautifulSoup(response.text, "html.parser").select_one(".error-message")
        assert found is not None
        message = found.get_text()
    assert str(db.path) in message and "damaged" in message and "indexer build" in message


def test_an_unexpected_error_is_a_500_with_the_security_headers(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_client.app.state.db, "latent_page", broken)
    for url in ("/latents", "/api/latents"):
        response = app_client.get(url)
        assert response.status_code == 500, url
        for name in SECURITY_HEADERS:
            assert response.headers.get(name), (url, name)
        assert "a bug" not in response.text  # internals stay in the server's log


def test_an_unknown_page_carries_the_security_headers(app_client: Any) -> None:
    for url in ("/nope", "/api/nope", "/latents/999999"):
        response = app_client.get(url)
        assert response.status_code == 404, url
        for name in SECURITY_HEADERS:
            assert response.headers.get(name), (url, name)
