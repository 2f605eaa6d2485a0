"""DuckDB's full-text-search extension: where it comes from, how it is loaded, how the index
is made. One place for the indexer, which writes the text index, and the app, which reads it.

Extensions cannot be downloaded here (nothing may download at run time), so the extension comes
from the PyPI package `duckdb-extension-fts`, one release per DuckDB release: its wheel holds
`duckdb_extension_fts/extensions/v<duckdb version>/fts.duckdb_extension`, which `LOAD` takes by
path. The package and DuckDB must be the same version (pyproject.toml and constraints.txt keep
them together); a missing or mismatched one is an error that names the package to install.

The text index (`PRAGMA create_fts_index`) is made over `latent_documents` (indexer/documents.py)
inside the index file, in the schema `fts_main_latent_documents`: its tables (`docs`, `terms`,
`dict`, `stats`, `fields`, `stopwords`) and the macros `match_bm25` (Okapi BM25) and
`tokenize`. Text is lower-cased, accents stripped, split on anything but letters and digits
(so `␣import` and `KeyError:` give `import` and `keyerror`), and each word reduced to its Porter
stem (`raise`, `raised` and `raises` are one term). No stopword is left out: the English list
DuckDB offers holds `none`, `self`, `try`, `except`, `if`, `value` and `name`, words that latents
of code and its documentation are about, and BM25 already weighs a word found in most documents
near zero.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import duckdb

from indexer import schema
from sae.errors import AtlasError

PACKAGE = "duckdb-extension-fts"  # on PyPI; imported as duckdb_extension_fts
MODULE = "duckdb_extension_fts"
DOCUMENTS = schema.latent_documents.name  # the table the text index is made over
SCHEMA = f"fts_main_{DOCUMENTS}"  # where create_fts_index puts the index and its macros
FIELDS = ("explanation", "top_tokens", "examples")  # the documents' columns that are indexed
STEMMER = "porter"
STOPWORDS = "none"  # see above
# What separates words: anything but a letter or a digit (RE2 classes, any script).
SEPARATORS = r"[^\p{L}\p{N}]+"


def extension_path() -> Path:
    """The FTS extension file for this DuckDB, from the installed `duckdb-extension-fts`."""
    version = duckdb.__version__
    install = f"pip install {PACKAGE}=={version}"
    spec = importlib.util.find_spec(MODULE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise AtlasError(
            f"DuckDB's full-text search extension is missing: text search needs the PyPI "
            f"package {PACKAGE} of DuckDB's version ({install})"
        )
    for folder in folders:
        path = Path(folder) / "extensions" / f"v{version}" / "fts.duckdb_extension"
        if path.is_file():
            return path
    found = sorted(
        p.parent.name.removeprefix("v")
        for folder in folders
        for p in Path(folder).glob("extensions/v*/fts.duckdb_extension")
    )
    has = f"the extension of DuckDB {', '.join(found)}" if found else "no extension file"
    raise AtlasError(
        f"{PACKAGE} holds {has}, but DuckDB here is {version}: the two must be the same "
        f"release ({install})"
    )


def load(connection: Any) -> None:
    """Load the extension into `connection` (a DuckDB connection, or a DB-API wrapper of one)
    and so into its database, for every connection to it; loading twice is a no-op."""
    quoted = str(extension_path()).replace("'", "''")
    connection.execute(f"LOAD '{quoted}'")


def create_index(connection: duckdb.DuckDBPyConnection) -> None:
    """The text index over `latent_documents`, just written on `connection` (writable)."""
    load(connection)
    fields = ", ".join(f"'{field}'" for field in FIELDS)
    connection.execute(
        f"PRAGMA create_fts_index('{DOCUMENTS}', 'latent_id', {fields}, "
        f"stemmer = '{STEMMER}', stopwords = '{STOPWORDS}', ignore = '{SEPARATORS}', "
        "strip_accents = 1, lower = 1, overwrite = 1)"
    )


def words_sql(text: str) -> str:
    """SQL for the words of the SQL string expression `text` as the index splits them, each
    with its term (stem), in order: rows (word, term)."""
    return (
        f"SELECT w AS word, stem(w, '{STEMMER}') AS term "
        f"FROM (SELECT unnest({SCHEMA}.tokenize({text})) AS w) WHERE w <> ''"
    )
