"""Files written whole or not at all: readers see the old file or the complete new one.

Manifests, metrics, eval records, reports and sweep tables all go through here, so a command
killed while writing never leaves a half file that a rerun or another command would read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())
