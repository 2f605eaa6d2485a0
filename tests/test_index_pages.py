"""`latent_pages` (indexer/pages.py): every latent's page from its one row equals the page read
table by table, and an index built before the table is still served, table by table."""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import duckdb
import pytest

from app.db import IndexDB
from app.db.detail import PageLists, latent_detail, token_text
from app.db.page import page_lists
from app.db.per_table import table_lists
from indexer.pages import LISTS


@pytest.fixture(scope="module")
def index_db(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    copy = tmp_path_factory.mktemp("pages") / "i.duckdb"  # its own file: its own DuckDB config
    shutil.copy(app_index, copy)
    db = IndexDB(copy)
    yield db
    db.close()


def test_the_table_holds_one_row_per_latent_in_latent_order(index_db: IndexDB) -> None:
    with index_db.cursors.cursor() as cursor:  # the app's own connection to the file
        ids = [i for (i,) in cursor.execute("SELECT latent_id FROM latent_pages").fetchall()]
        [(page,)] = cursor.execute("SELECT page FROM latent_pages LIMIT 1").fetchall()
    assert ids == list(range(index_db.build.n_latents))  # storage order is latent order
    layout = set(json.loads(zlib.decompress(page)))
    assert layout == {"latent", *LISTS}  # the layout indexer/schema.py documents


def test_every_page_from_the_table_equals_the_page_from_the_tables(index_db: IndexDB) -> None:
    text = token_text(index_db.vocab())
    filled = {name: 0 for name in PageLists._fields}
    with index_db.cursors.cursor() as cursor:
        for latent_id in range(-1, index_db.build.n_latents + 1):
            from_page = page_lists(cursor, latent_id, text)
            from_tables = table_lists(cursor, latent_id, text)
            assert from_page == from_tables, latent_id
            if from_page is None:
                assert latent_id in (-1, index_db.build.n_latents)  # only the ids out of range
                continue
            for name, value in from_page._asdict().items():
                filled[name] += bool(value)
    assert all(filled.values()), filled  # every list is compared on some latent, not only []


def test_the_lists_name_the_latents_they_list(index_db: IndexDB) -> None:
    text = token_text(index_db.vocab())
    with index_db.cursors.cursor() as cursor:
        lists = page_lists(cursor, 3, text)
        assert lists is not None
        for other in lists.neighbours + lists.coactive:
            named = page_lists(cursor, other.latent_id, text)
            assert named is not None and other.explanation == named.latent.explanation


@pytest.fixture(scope="module")
def older_index(app_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny index as `indexer build` wrote it before `latent_pages`."""
    out = tmp_path_factory.mktemp("older") / "older.duckdb"
    shutil.copy(app_index, out)
    with duckdb.connect(str(out)) as connection:
        connection.execute("DROP TABLE latent_pages")
    return out


def test_an_index_without_the_table_is_served_table_by_table(
    older_index: Path, index_db: IndexDB, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="atlas"):
        older = IndexDB(older_index)
    try:
        [warning] = [r.getMessage() for r in caplog.records if "latent_pages" in r.getMessage()]
        assert str(older_index) in warning and "rebuild" in warning
        for latent_id in range(older.build.n_latents):
            assert older.latent_detail(latent_id, tokens=True) == index_db.latent_detail(
                latent_id, tokens=True
            )
    finally:
        older.close()


def test_the_detail_has_the_examples_of_the_examples_table(index_db: IndexDB) -> None:
    vocab = index_db.vocab()
    with index_db.cursors.cursor() as cursor:
        detail = latent_detail(
            cursor, 3, vocab, lists_of=page_lists, contexts=index_db.contexts, tokens=False
        )
        stored = cursor.execute(
            "SELECT kind, band, rank FROM examples WHERE latent_id = 3 "
            "ORDER BY kind DESC, band DESC NULLS FIRST, rank"
        ).fetchall()
    assert detail is not None and stored
    shown = detail.top_examples + detail.quantile_examples
    assert [(x.kind, x.band, x.rank) for x in shown] == stored
