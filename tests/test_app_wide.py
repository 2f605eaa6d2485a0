"""A wide index's start and first page: nothing read whole that grows with the width.

The tiny index stands in for a wide one by lowering the size above which a file counts as large
(`app.db.check.SMALL_FILE`): its per-latent tables are then read in the background, not before
serving, and the first page reads only its own rows. Every statement the app runs is recorded
through the engine's events and the page cursors, on the thread serving the requests.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from app.db import cursors as db_cursors
from app.main import create_app
from app.settings import AppSettings
from indexer import schema as s
from tests.test_app_robust import flipped

# The tables with a row (or rows) per latent: what must not be read whole before serving.
PER_LATENT = sorted(
    {name for name, table in s.metadata.tables.items() if "latent_id" in table.c} - {"build"}
)


class Recorded:
    """The SQL of every statement run, with the thread that ran it."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str]] = []

    def add(self, sql: str) -> None:
        self.statements.append((threading.current_thread().name, " ".join(sql.split())))

    def by_thread(self, name: str) -> list[str]:
        return [sql for thread, sql in self.statements if thread == name]


class RecordingCursor:
    """A DuckDB cursor whose statements are recorded."""

    def __init__(self, cursor: Any, recorded: Recorded) -> None:
        self._cursor, self._recorded = cursor, recorded

    def execute(self, sql: str, *args: Any) -> Any:
        self._recorded.add(sql)
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    found = Recorded()
    new = db_cursors.Cursors._new
    monkeypatch.setattr(db_cursors.Cursors, "_new", lambda self: RecordingCursor(new(self), found))

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        found.add(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", on_execute)
    try:
        yield found
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", on_execute)


def _reads_whole(sql: str, table: str) -> bool:
    """Whether `sql` reads `table` without picking its rows by latent (or token) id."""
    if not re.search(rf'\b(FROM|JOIN)\s+"?{table}\b', sql, flags=re.IGNORECASE):
        return False
    picked = re.search(r"latent_id\s*(=|IN)", sql, flags=re.IGNORECASE)
    return picked is None


@pytest.fixture
def wide_copy(app_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("app.db.check.SMALL_FILE", 0)  # every file counts as large
    copy = tmp_path / "wide.duckdb"
    shutil.copy(app_index, copy)
    return copy


def test_start_and_first_page_read_no_per_latent_table_whole(
    wide_copy: Path, recorded: Recorded
) -> None:
    main = threading.current_thread().name
    app = create_app(AppSettings(index=wide_copy, allowed_hosts=("testserver",)))
    db = app.state.db
    try:
        at_start = recorded.by_thread(main)
        detail = db.latent_detail(5)  # in this thread, as the route calls it
        first_page = recorded.by_thread(main)[len(at_start) :]
        assert detail.top_examples and detail.neighbours  # a real page was read
        assert db.checked.wait(60) and db.damage is None  # the background read, meanwhile
    finally:
        db.close()
    assert at_start and first_page
    for sql in at_start + first_page:
        whole = [table for table in PER_LATENT if _reads_whole(sql, table)]
        assert not whole, (whole, sql)
    # the page row and its examples' contexts (and the vocabulary, read once: it grows with V)
    assert len([sql for sql in first_page if "FROM vocab" not in sql]) <= 2, first_page
    # the per-latent tables were read whole, but by the background check only
    background = [sql for thread, sql in recorded.statements if thread != main]
    assert any(_reads_whole(sql, "examples") for sql in background)


def test_damage_found_after_start_is_served_as_a_clear_500(wide_copy: Path, tmp_path: Path) -> None:
    damaged = flipped(wide_copy, tmp_path / "flipped.duckdb", table="examples")
    app = create_app(AppSettings(index=damaged, allowed_hosts=("testserver",)))  # opens
    db = app.state.db
    assert db.checked.wait(60)
    assert db.damage is not None and "damaged" in db.damage.message
    with TestClient(app) as client:
        for url in ("/latents/1", "/api/latents/1", "/latents", "/search?q=the"):
            response = client.get(url)
            assert response.status_code == 500, url
            assert str(damaged) in response.text and "indexer build" in response.text, url
