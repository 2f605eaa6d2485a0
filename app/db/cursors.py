"""DuckDB cursors for the page reads: one per thread, reused from request to request.

A latent's page is two small reads. Through SQLAlchemy each would check a connection out of the
pool and back, about as costly as the read itself, so pages run on raw DuckDB cursors instead:
children of one read-only connection of the app's engine, one per thread (a DuckDB connection is
not shared between threads), made on a thread's first page and kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

Cursor = Any  # a duckdb.DuckDBPyConnection: a cursor of the app's read-only connection


class Cursors:
    """Per-thread cursors of one connection of `engine`; `close` ends them all, and the next
    use opens a new connection (an ASGI client that runs the app's lifespan on an app still in
    use closes it)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        # SQLAlchemy's handle and the driver's connection: a detached handle closes its
        # connection when garbage-collected, so it is kept as long as the connection is used.
        self._parent: tuple[Any, Cursor] | None = None
        self._generation = 0  # which parent a thread's cursor came from
        self._local = threading.local()

    def _new(self) -> Cursor:
        with self._lock:
            if self._parent is None:
                # detached from SQLAlchemy's pool, which may close or invalidate its
                # connections after an error
                handle = self.engine.raw_connection()
                driver = handle.driver_connection
                handle.detach()
                self._parent = (handle, driver)
            self._local.generation = self._generation
            # DuckDB's own cursor(): duckdb-engine's wrapper answers cursor() with a DB-API one
            return self._parent[1].duplicate()

    @contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """This thread's cursor; one that raised is closed and replaced on the next use."""
        local = self._local
        if getattr(local, "generation", None) != self._generation or local.cursor is None:
            local.cursor = self._new()
        try:
            yield local.cursor
        except BaseException:
            local.cursor.close()
            local.cursor = None
            raise

    def close(self) -> None:
        """Close the connection and every cursor of it."""
        with self._lock:
            parent, self._parent = self._parent, None
            self._generation += 1
        if parent is not None:
            parent[0].close()  # the handle closes the driver's connection and its cursors
