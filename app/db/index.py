"""Read-only access to an index: every query the app makes lives here.

Queries are SQLAlchemy Core statements over the tables of `indexer/schema.py`, executed
through duckdb-engine on a read-only DuckDB connection; values always travel as bound
parameters, and every list query carries a row cap. Each call takes its own pooled
connection (DuckDB connections are not shared between threads), but for a latent's page: its
`latent_pages` row (one primary-key read) and the contexts of its examples (kept once read, a
bounded number: `app/db/contexts.py`) on this thread's DuckDB cursor (`app/db/cursors.py`), as
text search's queries (`app/db/search.py`, which need the FTS extension each connection loads).
Nothing per latent is held in memory, so neither the start, the first page nor the memory
grows with the number of latents. Results are the dataclasses of
`app/records.py`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from app import records as r
from app.db import detail as db_detail
from app.db import search as db_search
from app.db.check import read_tables, split_tables, stored_tables, table_names
from app.db.contexts import Contexts
from app.db.cursors import Cursors
from app.db.detail import ListsReader
from app.db.page import page_lists
from app.db.per_table import table_lists
from app.db.rows import SORT_COLUMNS, latent_filters, summary
from app.errors import STORAGE_ERRORS, AtlasAppError, damaged_index
from app.filters import EscapedTokens
from indexer import fts
from indexer import schema as s
from indexer.shards import ShardMark, not_servable
from sae.errors import AtlasError
from sae.report.results import current_metric_keys

log = logging.getLogger("atlas")
# DuckDB keeps the blocks it has read until this much memory is in use (its default, 80% of
# RAM, would let the background read of every block, or pages over a wide index, keep the file).
MEMORY_LIMIT = "256MB"
# One thread per query: a page's reads are too small to split, and requests already run side by
# side, each on its own thread's cursor.
DUCKDB_THREADS = 1


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def open_engine(path: Path) -> tuple[sa.Engine, list[str]]:
    """A read-only engine on `path`, checked to be an index; a clear error otherwise.

    Every block of a small file is read here; a large one has the tables read here that do not
    grow with the width, and the others are returned, for `IndexDB` to read in the background."""
    if path.is_dir():
        raise AtlasAppError(f"{path} is a folder; give the index's .duckdb file", status=500)
    if not path.is_file():
        raise AtlasAppError(f"index file {path} does not exist", status=500)
    url = sa.engine.URL.create("duckdb", database=str(path))  # any character in the name
    # Nothing is downloaded: the text index's extension comes from its package (indexer/fts.py)
    config = {
        "memory_limit": MEMORY_LIMIT,
        "threads": DUCKDB_THREADS,
        "autoinstall_known_extensions": False,
    }
    engine = sa.create_engine(url, connect_args={"read_only": True, "config": config})
    sa.event.listen(engine, "connect", _load_text_search)
    try:
        with engine.connect() as connection:
            connection.execute(sa.select(s.build.c.schema_version).limit(1)).all()
    except Exception as exc:
        engine.dispose()
        cause = getattr(exc, "orig", None) or exc  # the driver's own message, not SQLAlchemy's
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(exc).__name__
        newer = (
            " (an index written with DuckDB 2.0 must be built again)"
            if ("version number" in first)
            else ""
        )
        raise AtlasAppError(
            f"{path} is not a readable Latent Atlas index (built by `indexer build`): "
            f"{first}{newer}",
            status=500,
        ) from None
    with engine.connect() as connection:  # a shard of a latent-sharded build is not an index
        names = table_names(connection)
        mark = connection.execute(sa.select(s.shard)).first() if s.shard.name in names else None
    if mark is not None:
        engine.dispose()
        raise AtlasAppError(not_servable(path, ShardMark(*mark)), status=500)
    try:
        with engine.connect() as connection:
            tables = stored_tables(connection)
            now, later = split_tables(tables, file_size=path.stat().st_size)
            read_tables(connection, now)
    except STORAGE_ERRORS as exc:
        engine.dispose()
        raise damaged_index(path, exc) from None
    engine.dispose()  # frees the blocks the check left in DuckDB's cache; reopens on use
    return engine, later


def _load_text_search(dbapi_connection: Any, _record: Any) -> None:
    """Each new connection gets the text index's extension, when it is installed (else
    `IndexDB.search_notice` says why search falls back to substrings)."""
    with suppress(AtlasError):
        fts.load(dbapi_connection)


class IndexDB:
    """The index behind the app: build row and vocabulary cached, everything else queried."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine, unchecked = open_engine(path)
        self.damage: AtlasAppError | None = None  # set when the background read finds damage
        self._closed = False
        self.build = self._read_build()
        self._vocab: list[str] | None = None
        self._vocab_html: EscapedTokens | None = None
        self._vocab_lock = threading.Lock()
        self.cursors = Cursors(self.engine)
        self.contexts = Contexts()
        self._lists_of = self._lists_reader()
        self.search_notice = self._search_notice()  # None: ranked text search is served
        self.checked = threading.Event()  # set once every block has been read
        if unchecked:
            threading.Thread(target=self._check, args=(unchecked,), daemon=True).start()
        else:
            self.checked.set()

    def close(self) -> None:
        """Release every connection; like SQLAlchemy's `dispose`, a later query opens anew."""
        self._closed = True  # what the background read meets from now on is not damage
        self.cursors.close()
        self.engine.dispose()

    def _lists_reader(self) -> ListsReader:
        """Pages from `latent_pages`, or table by table from an index built before it."""
        with self.engine.connect() as connection:
            if s.latent_pages.name in table_names(connection):
                return page_lists
        log.warning(
            "%s has no latent_pages table (built by an older `indexer build`): each latent page "
            "reads ten tables; rebuild the index for pages in two reads",
            self.path,
        )
        return table_lists

    def _search_notice(self) -> str | None:
        """Why text search falls back to substrings (None: it does not), for the search page."""
        fallback = "latents are matched by their explanation or top token containing the text"
        with self.engine.connect() as connection:
            tables = table_names(connection)
            indexed = connection.exec_driver_sql(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = ?",
                (fts.SCHEMA,),
            ).scalar_one()
        if s.latent_documents.name not in tables or not indexed:
            notice = (
                "This index was built before ranked text search, so "
                f"{fallback}. Rebuild it with `indexer build` (or `indexer merge` for a "
                "sharded build) to rank latents by BM25 over their explanations, top tokens "
                "and top examples."
            )
        else:
            try:
                fts.extension_path()
                return None
            except AtlasError as exc:
                notice = f"Ranked text search is off ({exc}), so {fallback}."
        log.warning("%s: %s", self.path, notice)
        return notice

    def _check(self, tables: list[str]) -> None:
        """Every block of the tables that grow with the width read once, right after start."""
        try:
            with self.engine.connect() as connection:
                read_tables(connection, tables)
        except STORAGE_ERRORS as exc:
            cause = getattr(exc, "orig", None) or exc
            if not self._closed and not isinstance(cause, duckdb.InterruptException):
                self.damage = damaged_index(self.path, exc)
                log.error("%s", self.damage.message)
        except Exception:  # closed while reading: nothing is served any more
            pass
        finally:
            self.checked.set()

    def _served(self) -> None:
        if self.damage is not None:
            raise self.damage

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        self._served()
        with self.engine.connect() as connection:
            yield connection

    def _rows(self, statement: sa.Executable) -> Sequence[RowMapping]:
        with self._connect() as connection:
            return connection.execute(statement).mappings().all()

    def _read_build(self) -> r.BuildInfo:
        versions = self._rows(sa.select(s.build.c.schema_version).limit(1))
        if not versions:
            raise AtlasAppError(f"{self.path} has an empty build table", status=500)
        if versions[0]["schema_version"] != s.SCHEMA_VERSION:  # before reading its columns
            raise AtlasAppError(
                f"{self.path} is an index of schema version {versions[0]['schema_version']}; "
                f"this app reads version {s.SCHEMA_VERSION}: rebuild it with `indexer build`",
                status=500,
            )
        row = dict(self._rows(sa.select(s.build).limit(1))[0])
        fields = r.BuildInfo.__dataclass_fields__
        for name in ("sae_config", "settings", "versions", "metrics", "report"):
            row[name] = _json(row[name])
        report = row["report"] or {}  # the SAE's eval and training record come with its report
        if report.get("training"):  # an index built before a metric's rename has its old key
            report["training"] = [current_metric_keys(step) for step in report["training"]]
        row["sae_eval"] = report.get("eval")
        row["training"] = (report.get("training") or [None])[-1]
        return r.BuildInfo(**{k: v for k, v in row.items() if k in fields})

    # --- vocabulary -------------------------------------------------------------------------

    def vocab(self) -> list[str]:
        """Every token's text by id, read once: the index never changes under the app."""
        with self._vocab_lock:
            if self._vocab is None:
                with self.cursors.cursor() as cursor:  # V rows: no SQLAlchemy row per token
                    rows = cursor.execute("SELECT token_id, text FROM vocab").fetchall()
                texts = [""] * (max((token_id for token_id, _ in rows), default=-1) + 1)
                for token_id, text in rows:
                    texts[token_id] = text
                self._vocab = texts
            return self._vocab

    # --- the latent table ---------------------------------------------------------------------

    def density_histogram(self) -> list[r.HistogramBin]:
        h = s.density_histogram
        rows = self._rows(sa.select(h).order_by(h.c.lower).limit(1000))
        return [r.HistogramBin(row["lower"], row["upper"], row["n_latents"]) for row in rows]

    def latent_page(self, query: r.LatentQuery) -> r.LatentTablePage:
        where = latent_filters(query)
        column = SORT_COLUMNS[query.sort]
        ordered = column.asc() if query.order == "asc" else column.desc()
        statement = (
            sa.select(s.latents)
            .where(*where)
            .order_by(ordered.nulls_last(), s.latents.c.latent_id)
            .offset(query.offset)
            .limit(query.limit)
        )
        count = sa.select(sa.func.count()).select_from(s.latents).where(*where)
        with self._connect() as connection:
            total = int(connection.execute(count).scalar_one())
            rows = connection.execute(statement).mappings().all()
        latents = [summary(row) for row in rows]
        return r.LatentTablePage(
            total=total, offset=query.offset, limit=query.limit, latents=latents
        )

    def explanations(self, latent_ids: Iterable[int]) -> dict[int, str | None]:
        ids = sorted(set(latent_ids))[:1000]
        if not ids:
            return {}
        l = s.latents  # noqa: E741
        rows = self._rows(sa.select(l.c.latent_id, l.c.explanation).where(l.c.latent_id.in_(ids)))
        return {row["latent_id"]: row["explanation"] for row in rows}

    # --- one latent, search ---------------------------------------------------------------

    def vocab_html(self) -> EscapedTokens:
        """Every token's text as shown and escaped, each once, when a page first shows it."""
        texts = self.vocab()
        with self._vocab_lock:
            if self._vocab_html is None:
                self._vocab_html = EscapedTokens(texts)
            return self._vocab_html

    def latent_detail(self, latent_id: int, *, tokens: bool = False) -> r.LatentDetail:
        vocab = self.vocab()
        self._served()
        with self.cursors.cursor() as cursor:
            detail = db_detail.latent_detail(
                cursor,
                latent_id,
                vocab,
                lists_of=self._lists_of,
                contexts=self.contexts,
                tokens=tokens,
            )
        if detail is None:
            raise AtlasAppError(
                f"latent {latent_id} does not exist (this index has latents 0 to "
                f"{self.build.n_latents - 1})",
                status=404,
            )
        return detail

    def search(self, query: r.SearchQuery) -> r.SearchResults:
        """A page of the latents matching `query` with their snippets, and the latents firing
        most on a vocabulary token equal to it; `reason` says why there are none."""
        notice = self.search_notice
        if not query.q.strip():
            found = db_search.Found(0, [], None, "", db_search.EMPTY)
            return db_search.results(query, found, {}, [], notice=notice)
        vocab = self.vocab()
        self._served()
        if notice is None:
            with self.cursors.cursor() as cursor:
                found = db_search.ranked(cursor, query)
        else:
            with self._connect() as connection:
                found = db_search.substring(connection, query)
        with self.cursors.cursor() as cursor:
            snippets = db_search.snippets(cursor, found, vocab=vocab)
        with self._connect() as connection:
            tokens = db_search.search_tokens(connection, query.q, per_token=10)
        return db_search.results(query, found, snippets, tokens, notice=notice)
