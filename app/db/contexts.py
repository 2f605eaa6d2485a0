"""The contexts the pages show, read by id and a bounded number kept (part of the db layer).

A page shows about 70 contexts, spread over the whole `contexts` table. DuckDB fetches the rows
of an index scan one by one (about 0.1 ms each), so they are kept once read: up to `KEPT`, the
least recently used dropped first, so memory stays bounded whatever the corpus or the width.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from app.db.cursors import Cursor

KEPT = 8192  # contexts kept, about 2 kB each as Python values
Context = tuple[str, list[int]]  # (doc_id, token ids, position 0 included)
CONTEXTS = "SELECT context_id, doc_id, token_ids FROM contexts WHERE context_id IN"


class Contexts:
    """Contexts by id: from memory when kept, else read in one query and kept."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._contexts: OrderedDict[int, Context] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, cursor: Cursor, context_ids: Iterable[int]) -> dict[int, Context]:
        """The contexts `context_ids` (those the index has)."""
        wanted = set(context_ids)
        with self._lock:
            found = {i: self._contexts[i] for i in wanted if i in self._contexts}
            for i in found:
                self._contexts.move_to_end(i)
        missing = sorted(wanted - found.keys())
        if missing:
            # ids as constants: DuckDB looks constants up in the primary key's index
            listed = ", ".join(str(int(i)) for i in missing)
            rows = cursor.execute(f"{CONTEXTS} ({listed})").fetchall()
            read = {c: (doc, tokens) for c, doc, tokens in rows}
            found |= read
            with self._lock:
                self._contexts.update(read)
                while len(self._contexts) > self.kept:
                    self._contexts.popitem(last=False)
        return found
