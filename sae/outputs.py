"""Where a command may write: the one rule every `--out` (and `sae report`'s files) follows.

A command writes only where nothing of the user's can be lost: a path that does not exist yet,
an empty folder, or something this project wrote there before (the caller's `is_ours` says what
counts). It never writes inside the inputs it reads (the SAE, the activation cache). Each check
runs before any work, and its AtlasError names the path at fault, so a mistyped `--out` costs
nothing and replaces nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sae.errors import AtlasError

IsOurs = Callable[[Path], bool]


def check_output_file(
    path: Path,
    *,
    kind: str,
    is_ours: IsOurs,
    flag: str = "--out",
    hint: str = "choose another path, or remove the file yourself",
) -> None:
    """`path` may be written as a file: it does not exist yet, or it is a `kind` we wrote.

    `kind` reads after an article, e.g. "a Latent Atlas index". `flag` names the option the
    path came from ("" when it came from none).
    """
    named = f"{flag} {path}".strip()
    if path.is_dir():
        raise AtlasError(f"{named} is a folder, not {kind}; give the path of a file")
    if path.exists() or path.is_symlink():
        if not is_ours(path):
            raise AtlasError(f"{named} exists and is not {kind}; refusing to replace it ({hint})")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise AtlasError(f"cannot replace {named}: {path.parent} is not writable")
        return
    check_creatable(path, flag=flag)


def check_output_folder(path: Path, *, kind: str, is_ours: IsOurs, flag: str = "--out") -> bool:
    """`path` may be written into as a folder: it does not exist, is empty, or is a `kind` we
    wrote (`is_ours`). Returns whether it already holds something of ours."""
    named = f"{flag} {path}".strip()
    if path.exists() and not path.is_dir():
        raise AtlasError(f"{named} exists and is not a folder; give a folder to write into")
    if not path.exists():
        check_creatable(path, flag=flag)
        return False
    empty = not any(path.iterdir())
    ours = not empty and is_ours(path)
    if not empty and not ours:
        raise AtlasError(
            f"{named} is a non-empty folder that is not {kind}; refusing to write into it"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise AtlasError(f"{named} is not writable")
    return ours


def check_creatable(path: Path, *, flag: str = "--out") -> None:
    """`path` does not exist and can be created: its nearest existing ancestor is a writable
    folder (not a file, as in `notes.txt/index.duckdb`)."""
    named = f"{flag} {path}".strip()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise AtlasError(f"cannot create {named}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AtlasError(f"cannot create {named}: {parent} is not writable")


def check_not_inside(
    path: Path, *inputs: tuple[str, str | Path | None], flag: str = "--out"
) -> None:
    """`path` is none of the `(what, folder)` inputs and lies inside none of them.

    Paths are compared resolved, so `runs/x/../x/sae/i.duckdb` is inside `runs/x/sae` and a
    symlink leads where it points. An input that is None or "" (not given) is skipped.
    """
    resolved = path.expanduser().resolve()
    for what, folder in inputs:
        if not folder:
            continue
        root = Path(folder).expanduser().resolve()
        if resolved == root:
            raise AtlasError(f"{flag} {path} is {what} itself ({folder}); write somewhere else")
        if root in resolved.parents:
            raise AtlasError(f"{flag} {path} is inside {what} {folder}; write somewhere else")


def holds_only(folder: Path, names: set[str]) -> bool:
    """Whether every entry of `folder` is one of `names` (what a writer of ours leaves)."""
    return all(entry.name in names for entry in folder.iterdir())
