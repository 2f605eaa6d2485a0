"""How much memory a training run needs and how much the machine has, compared up front.

An SAE too wide for the machine should be one line naming both figures before anything is
created, not an allocation traceback minutes in. The estimate counts what grows with the run's
settings; fixed costs (the interpreter, torch itself, a streamed run's language model) are left
out, so a run refused here could not have fitted anyway.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch

from sae.errors import AtlasError

log = logging.getLogger(__name__)

FLOAT32 = 4
GIB = float(1 << 30)


class TrainingMemory(NamedTuple):
    """Bytes one training process needs, by where they live."""

    model: int
    """On the training device: weights, gradients, Adam state and one step's activations."""
    data: int
    """In host memory: the shuffled group of cached tokens that batches are cut from."""

    @property
    def total(self) -> int:
        return self.model + self.data


def training_memory(
    *,
    n_latents: int,
    d_model: int,
    batch_size: int,
    group_tokens: int,
    dense_codes: bool = False,
    value_bytes: int = FLOAT32,
) -> TrainingMemory:
    """Estimate for one process training n latents on (batch_size, d_model) batches.

    Weights W_enc, W_dec (n, d) and biases, their gradients and Adam's two moments: 4 copies,
    plus one (n, d) temporary (the decoder-gradient projection, the scatter of dW). The encoder's
    dense pre-activations (B, n) and a working copy (top-k, the AuxK slice); a ReLU SAE also
    keeps its dense codes and their gradient (4 copies). The data group is held twice, pooled
    and permuted, in the cache's storage dtype (`value_bytes`).
    """
    n, d, b = n_latents, d_model, batch_size
    parameters = 2 * n * d + n + d
    weights = (4 * parameters + n * d) * FLOAT32
    step = ((4 if dense_codes else 2) * b * n + 8 * b * d) * FLOAT32
    data = 2 * group_tokens * d * value_bytes
    return TrainingMemory(model=weights + step, data=data)


def host_available_bytes() -> int:
    """Memory the host can give without swapping: MemAvailable, else free physical pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the figure is in kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_training_fits(
    need: TrainingMemory, *, device: str, processes_here: int, settings: str
) -> None:
    """Refuse a run whose estimate exceeds what the device (and host) has available.

    `processes_here` training processes share this host (torchrun's LOCAL_WORLD_SIZE); on a GPU
    each has its own device memory, on the CPU they share the host's.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        _refuse_beyond(need.model, free, what=f"GPU memory on {device}", settings=settings)
        host_need = need.data * processes_here
    elif kind == "cpu":
        host_need = need.total * processes_here
    else:  # no portable way to ask other devices; the host part is still checked
        host_need = need.data * processes_here
    _refuse_beyond(host_need, host_available_bytes(), what="memory", settings=settings)


def _refuse_beyond(need: int, available: int, *, what: str, settings: str) -> None:
    log.debug(
        "%s: needs about %.2f GiB of %s, %.2f GiB available",
        settings,
        need / GIB,
        what,
        available / GIB,
    )
    if need > available:
        raise AtlasError(
            f"{settings}: training needs about {need / GIB:.1f} GiB of {what}, the machine has "
            f"{available / GIB:.1f} GiB available; lower --latents or --batch-size"
        )
