"""Ranked lists as flat arrays: the row layout that logits, neighbours, coactivations and the
token tables share, the rank of each row within its run of equal keys, and when to count into
a dense grid rather than sort."""

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


def rank_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal keys of a sorted array."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n) - first


def grid_is_small(cells: int, events: int) -> bool:
    """Whether counting `events` into a dense grid of `cells` beats sorting them: the grid
    costs O(cells), the sort O(events log events). Either way gives the same result, so the
    choice only moves time and memory: narrow SAEs get grids, wide ones sorts, and neither
    grows with n x (the chunk or the sample)."""
    return cells <= 4 * events + (1 << 16)
