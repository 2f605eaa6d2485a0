"""A latent's activation on every token of a context, stored as its fires only.

A kept example needs the latent on every token of its context (the dashboard shades them), but
a latent fires on a few tokens of a context: a dense (m, T-1) row per example made the
reservoirs grow with the width. `SparseRows` keeps m such rows as one ragged array (CSR: the
fires of row i are positions[offsets[i]:offsets[i+1]], ascending), float16 as the rows were, and
rebuilds dense rows only for the examples being written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SparseRows:
    """m rows of `width` values, zero but at their fires."""

    offsets: np.ndarray  # (m+1,) int64: row i's fires are [offsets[i], offsets[i+1])
    positions: np.ndarray  # (F,) the fire's index in the row, 0..width-1, ascending per row
    values: np.ndarray  # (F,) float16 the activation there
    width: int  # T-1

    @classmethod
    def empty(cls, width: int) -> SparseRows:
        return cls(np.zeros(1, np.int64), np.zeros(0, _position_type(width)), _halves([]), width)

    @classmethod
    def of_fires(
        cls, row: np.ndarray, position: np.ndarray, value: np.ndarray, *, m: int, width: int
    ) -> SparseRows:
        """From fires (row (F,), position (F,), float32 value (F,)) sorted by row, then position."""
        offsets = np.zeros(m + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=m), out=offsets[1:])
        return cls(offsets, position.astype(_position_type(width)), _halves(value), width)

    @classmethod
    def concat(cls, parts: list[SparseRows]) -> SparseRows:
        """The rows of every part, in order."""
        shift = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [
            p.offsets[1:] + s for p, s in zip(parts, shift, strict=True)
        ]
        return cls(
            np.concatenate(offsets),
            np.concatenate([p.positions for p in parts]),
            np.concatenate([p.values for p in parts]),
            parts[0].width,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, index: np.ndarray) -> SparseRows:
        """The rows `index` (r,), in that order."""
        starts = self.offsets[index]  # (r,)
        lengths = self.offsets[np.asarray(index) + 1] - starts  # (r,)
        offsets = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        fire = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])  # (F',)
        return SparseRows(offsets, self.positions[fire], self.values[fire], self.width)

    def dense(self) -> np.ndarray:
        """(m, width) float16, 0 where the latent does not fire."""
        out = np.zeros((len(self), self.width), np.float16)
        row = np.repeat(np.arange(len(self)), np.diff(self.offsets))  # (F,)
        out[row, self.positions] = self.values
        return out


def _position_type(width: int) -> type[np.integer]:
    return np.uint16 if width <= np.iinfo(np.uint16).max else np.int32


def _halves(values: np.ndarray | list[float]) -> np.ndarray:
    """float32 → float16 as torch rounds it (the dense rows were converted this way)."""
    return torch.from_numpy(np.asarray(values, np.float32)).half().numpy()
