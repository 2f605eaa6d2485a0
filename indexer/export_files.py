"""Where an export writes, and how: a new or empty folder, each file whole or not at all.

An export writes many files into `--out`, so it follows the project's rule (sae/outputs.py)
strictly: `--out` must not exist yet or be an empty folder. A folder holding anything, an
earlier export included, is refused: an earlier export cut into other batches would leave
latents twice. Each file is written under a temporary name beside its own and linked into
place only when complete, and a link never replaces a file: one that appeared meanwhile is
left as it is. (`sae.files.write_atomic` holds a file's bytes in memory and replaces; these
files are streamed and replace nothing.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sae.errors import AtlasError
from sae.outputs import check_output_folder


def check_new_folder(out: Path, *, flag: str = "--out") -> None:
    """`out` may take an export: it does not exist yet (and can be made) or is an empty folder."""
    named = f"{flag} {out}".strip()
    if out.is_dir() and any(out.iterdir()):
        raise AtlasError(
            f"{named} is not empty; an export writes only into a new or empty folder and "
            "replaces nothing (choose another folder, or empty this one yourself)"
        )
    check_output_folder(out, kind="an empty folder", is_ours=lambda _: False, flag=flag)


@contextmanager
def made_folder(out: Path) -> Iterator[Path]:
    """`out`, made if it is not there; removed again if the export fails before writing to it."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()
        raise


@contextmanager
def new_file(path: Path) -> Iterator[IO[str]]:
    """A text file written under a temporary name and linked to `path` once complete: readers
    never see part of it, an interruption leaves nothing, and an existing `path` is an error."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "x", encoding="ascii") as handle:  # "x": never a file already there
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link(tmp: Path, path: Path) -> None:
    """`tmp` under the name `path`, which must not exist (a hard link fails if it does)."""
    appeared = f"{path} appeared while the export was writing it; it is left as it is"
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise AtlasError(appeared) from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists() or path.is_symlink():
            raise AtlasError(appeared) from None
        os.replace(tmp, path)
