"""The feature browser: FastAPI + Jinja2 + HTMX over an index built by `indexer build`."""
