"""Ranked lists as flat arrays: the row layout that logits, neighbours, coactivations and the
token tables share, and the rank of each row within its run of equal keys."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Ranked(NamedTuple):
    """Per-latent ranked lists, flattened: row i is (latent[i], rank[i], other[i], value[i])."""

    latent: np.ndarray
    rank: np.ndarray
    other: np.ndarray
    value: np.ndarray

    def take(self, rows: np.ndarray) -> Ranked:
        """The rows `rows` (an index or a mask), in that order."""
        return Ranked(*(column[rows] for column in self))


def concat(parts: list[Ranked]) -> Ranked:
    """The rows of every part, in order (parts computed a block of latents at a time)."""
    return Ranked(*(np.concatenate([getattr(p, f) for p in parts]) for f in Ranked._fields))


def block_starts(latents: range, block: int) -> range:
    """Where each block of `block` latents starts, on the grid from latent 0, for the blocks
    that overlap `latents`: a latent shard computes the very blocks a whole build does (so its
    rows are the same to the bit) and keeps its own rows of them (`within`)."""
    return range(latents.start - latents.start % block, latents.stop, block)


def within(latent: np.ndarray, latents: range) -> np.ndarray:
    """(m,) whether each row's latent lies in `latents`."""
    return (latent >= latents.start) & (latent < latents.stop)


def rank_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal keys of a sorted array."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n) - first
