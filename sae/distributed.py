"""torch.distributed in one place: this process's rank and the world, and joining the group.

Training and indexing both run under torchrun; each asks here which rank it is, and the
command-line entry points join (and leave) the process group through `process_group()`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
        # Leave together: a rank that tears the group down while another still saves or
        # communicates makes gloo abort ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
