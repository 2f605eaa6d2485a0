"""What a training run keeps in its `--out` folder: `metrics.jsonl` and the checkpoint.

Both are written so that a run killed at any point resumes exactly: a checkpoint is put in
place by renames (the previous one stays whole until the new one is), and the metrics a
killed run wrote after its last checkpoint are dropped when it resumes, so each step is
recorded once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sae.files import write_atomic
from sae.model import SparseAutoencoder
from sae.report.results import METRICS

CHECKPOINT = "checkpoint"


def is_training_run(folder: Path) -> bool:
    """Whether `folder` holds a run of `sae train`: its metrics or a checkpoint (or a save's
    temporary), which only a run writes."""
    names = (METRICS, CHECKPOINT, f".{CHECKPOINT}.tmp", f".{CHECKPOINT}.old")
    return any((folder / name).exists() for name in names)


def remove_unfinished(out: Path) -> None:
    """After a failed fresh run: remove what it wrote to the `out` it created, unless a
    checkpoint makes it worth resuming; an empty folder is removed too."""
    if last_checkpoint(out) is not None or not out.is_dir():
        return
    (out / METRICS).unlink(missing_ok=True)
    shutil.rmtree(out / f".{CHECKPOINT}.tmp", ignore_errors=True)
    if not any(out.iterdir()):
        out.rmdir()


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records after `step` (and a line cut short): a killed run wrote them after its
    last checkpoint, and the resumed run records those steps again, each once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        try:
            if json.loads(line)["step"] > step:
                break
        except (json.JSONDecodeError, KeyError, TypeError):
            break
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_atomic(path, "".join(kept).encode())


def save_checkpoint(
    out: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, state: Any
) -> None:
    """Write the checkpoint folder atomically: a killed save leaves the previous one intact."""
    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "state": state.__dict__,
            "rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    final, old = out / CHECKPOINT, _moved_aside(out)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # what a save killed before its cleanup left
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _moved_aside(out: Path) -> Path:
    """Where a save keeps the previous checkpoint while it puts the new one in place."""
    return out / f".{CHECKPOINT}.old"


def last_checkpoint(out: Path) -> Path | None:
    """The newest whole checkpoint in `out`: a save killed between its two renames left only
    the previous one, moved aside."""
    for folder in (out / CHECKPOINT, _moved_aside(out)):
        if (folder / "state.pt").is_file():
            return folder
    return None
