"""The build's memory budget (`--memory-budget`): what it needs before the pass, and what the
accumulators hold as it goes, each checked against the budget with a clear error.

What does not depend on the data is known before a token is read: the SAE's weights, the
per-latent counts and histograms, the token sample, and the fixed-size working blocks of the
encoder and the finalisation. What does (the examples the reservoirs keep) is counted after each
chunk: the reservoirs fill up to `--top-examples` + `--quantile-sample` contexts per latent, so a
build that outgrows the budget stops early with the figures, never by the system's OOM killer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

from indexer.encode import ENCODE_CELLS
from indexer.geometry import CELLS
from sae.errors import AtlasError

GIB = 2**30
DEFAULT_SHARE = 0.5  # of the machine's RAM, when no budget is given
# encoder pre-activations and their top-k's copy, a block of logit effects (float32)
WORKING_BLOCKS = 4 * (2 * ENCODE_CELLS + CELLS)
HISTOGRAM_BINS = 160  # log-spaced bins per latent (see accumulate.py)


def machine_bytes() -> int:
    """The machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(gib: float) -> int:
    """`--memory-budget` in bytes: the value in GiB, or 0 for a share of the machine's RAM."""
    return int(gib * GIB) if gib > 0 else int(DEFAULT_SHARE * machine_bytes())


@dataclass(frozen=True)
class Needs:
    """What a build holds regardless of the data, in bytes, by part."""

    weights: int
    per_latent: int
    token_sample: int
    working: int

    @classmethod
    def of(
        cls,
        *,
        n_latents: int,
        d_model: int,
        k: int,
        token_sample: int,
        context_length: int,
        kept_latents: int | None = None,
    ) -> Needs:
        """`kept_latents`: those whose counts this process keeps (a latent shard's), else all."""
        n = n_latents if kept_latents is None else kept_latents
        counts = n * (6 * 8 + HISTOGRAM_BINS * 8)  # LatentStats
        bounds = 2 * n * 8  # the two reservoirs' bounds
        # Codes (indices and activations, 8 B a slot), their fires found once at the end
        # (token, latent, activation: 20 B), the contexts' token ids (4 B a position).
        tokens = token_sample * (k * 28 + 4 * context_length / max(1, context_length - 1))
        return cls(
            weights=2 * n_latents * d_model * 4 + 2 * n_latents * 4,
            per_latent=counts + bounds,
            token_sample=int(tokens),
            working=WORKING_BLOCKS,
        )

    @property
    def total(self) -> int:
        return self.weights + self.per_latent + self.token_sample + self.working

    def describe(self) -> str:
        return (
            f"SAE weights {_gib(self.weights)}, per-latent counts {_gib(self.per_latent)}, "
            f"token sample {_gib(self.token_sample)}, working blocks {_gib(self.working)}"
        )


@dataclass(frozen=True)
class Budget:
    """The budget of one build, and what it needs before reading a token."""

    limit: int  # bytes
    needs: Needs
    n_latents: int

    def check_start(self) -> None:
        """Stop before any work when the data-independent part alone is over the budget."""
        if self.needs.total > self.limit:
            raise AtlasError(
                f"indexer build: {self.n_latents:,} latents need about {_gib(self.needs.total)} "
                f"before the first token ({self.needs.describe()}), over --memory-budget "
                f"{_gib(self.limit)}: raise --memory-budget, lower --token-sample, or split the "
                "latents over processes with --latent-shard i/N"
            )

    def check(self, examples: int, *, n_tokens: int) -> None:
        """Stop when the examples the reservoirs keep (`examples` bytes, counted twice: a merge
        copies them) take the build over the budget."""
        held = 2 * examples
        if self.needs.total + held > self.limit:
            raise AtlasError(
                f"indexer build: after {n_tokens:,} tokens the examples kept for "
                f"{self.n_latents:,} latents hold {_gib(held)} (with the merge's copy), on top "
                f"of {_gib(self.needs.total)} ({self.needs.describe()}): over --memory-budget "
                f"{_gib(self.limit)}. Raise --memory-budget, lower --top-examples or "
                "--quantile-sample, or split the latents over processes with --latent-shard i/N"
            )


def _gib(count: float) -> str:
    return f"{count / GIB:.2f} GiB"


def release() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim), where the C library
    has it. Between the build's steps: glibc keeps what a step freed for itself, so without this
    the next step's arrays are counted on top of the last one's in the process's RSS."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
