"""Reading an index for the pages: `IndexDB` and the queries behind it."""

from app.db.index import IndexDB

__all__ = ["IndexDB"]
