"""A chunk's sparse codes, and the (latent, context) pairs in it where a latent fires."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from indexer.ranking import grid_is_small, rank_in_runs
from indexer.rows import SparseRows
from sae.codes import fired


@dataclass
class Chunk:
    """The sparse codes of whole contexts, as the accumulators read them."""

    first_context: int
    token_ids: np.ndarray  # (C, T) int64, position 0 included
    activations: np.ndarray  # (C, T-1, k) float32 at positions 1..T-1; 0 = not firing
    indices: np.ndarray  # (C, T-1, k) int64


@dataclass
class ContextPairs:
    """A chunk's (latent, context) pairs where the latent fires, with each pair's maximum, and
    the fires (token, latent) they are made of.

    Pairs (latent, context) are found through a dense (n, C) grid for narrow SAEs (scatters
    into it cost O(fires), its rows give each latent's best pairs of the chunk by top-k), and
    by sorting the fires for wide ones, where that grid would be far larger than the fires.
    """

    n_latents: int
    n_contexts: int  # C, contexts in the chunk
    positions: int  # T-1
    cell: np.ndarray  # (E,) latent * C + local context of every fire
    flat: np.ndarray  # (E,) the fire's local context * (T-1) + position
    activation: np.ndarray  # (E,) float32
    pair_cell: np.ndarray  # (P,) one entry per (latent, context) with a fire, ascending
    pair_latent: np.ndarray  # (P,)
    pair_context: np.ndarray  # (P,) global context id
    pair_max: np.ndarray  # (P,) float32 the latent's largest activation in that context

    @property
    def latent(self) -> np.ndarray:
        return self.cell // self.n_contexts

    @classmethod
    def of(cls, chunk: Chunk, n_latents: int) -> ContextPairs:
        """The pairs of a chunk's codes, from every fire in them (sae.codes.fired)."""
        n_ctx, positions, _ = chunk.activations.shape
        fires = fired(chunk.activations, chunk.indices)
        act = fires.activation  # (E,)
        flat = fires.token  # context * (T-1) + position
        cell = fires.latent * n_ctx + flat // positions  # (E,)
        cells, pair_max = _pair_maxima(cell, act, n_latents * n_ctx)
        return cls(
            n_latents=n_latents,
            n_contexts=n_ctx,
            positions=positions,
            cell=cell,
            flat=flat,
            activation=act,
            pair_cell=cells,
            pair_latent=cells // n_ctx,
            pair_context=chunk.first_context + cells % n_ctx,
            pair_max=pair_max,
        )

    def kth_smallest(self, order: np.ndarray, k: int) -> np.ndarray:
        """(n,) each latent's k-th smallest `order` (P,) among its pairs here, else the max."""
        if order.dtype == np.uint64:  # flip the top bit: signed order = unsigned order
            values = torch.from_numpy((order ^ np.uint64(1 << 63)).view(np.int64))
            fill: float | int = torch.iinfo(torch.int64).max
        else:
            values, fill = torch.from_numpy(order), float("inf")
        k = min(k, self.n_contexts)
        if grid_is_small(self.n_latents * self.n_contexts, len(values)):
            grid = torch.full((self.n_latents * self.n_contexts,), fill, dtype=values.dtype)
            grid[torch.from_numpy(self.pair_cell)] = values
            kth = grid.view(self.n_latents, -1).topk(k, dim=1, largest=False).values[:, -1]
        else:  # pairs are latent-major: sort each latent's by order, take the k-th
            latent = torch.from_numpy(self.pair_latent)
            by_order = torch.sort(values, stable=True).indices
            ranked = by_order[torch.sort(latent[by_order], stable=True).indices]
            rank = torch.from_numpy(rank_in_runs(self.pair_latent[ranked.numpy()]))
            at = ranked[rank == k - 1]
            kth = torch.full((self.n_latents,), fill, dtype=values.dtype)
            kth[latent[at]] = values[at]
        found: np.ndarray = kth.numpy()
        if order.dtype == np.uint64:
            return found.view(np.uint64) ^ np.uint64(1 << 63)
        return found

    def rows(self, pairs: np.ndarray) -> tuple[SparseRows, np.ndarray]:
        """Each pair's latent on every token of its context, as its fires (sparse, float16),
        and the first position (1..T-1) of its largest activation. `pairs` is ascending."""
        wanted = self.pair_cell[pairs]  # (m,) ascending, like pair_cell
        row = np.minimum(np.searchsorted(wanted, self.cell), len(wanted) - 1)  # (E,)
        keep = np.flatnonzero(wanted[row] == self.cell)  # the fires of the wanted pairs
        position = self.flat[keep] % self.positions  # (F,) 0..T-2
        order = np.argsort(row[keep] * self.positions + position, kind="stable")
        row, position, value = row[keep][order], position[order], self.activation[keep][order]
        # the first position of the maximum, as argmax over the dense row finds it
        at_max = np.flatnonzero(
            value == self.pair_max[pairs][row]
        )  # ascending: by row, then position
        first = at_max[np.r_[True, row[at_max][1:] != row[at_max][:-1]]]  # one a row
        peak = np.zeros(len(pairs), np.int64)
        peak[row[first]] = position[first].astype(np.int64) + 1
        rows = SparseRows.of_fires(row, position, value, m=len(pairs), width=self.positions)
        return rows, peak


def _pair_maxima(cell: np.ndarray, value: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct cells (ascending) of fires `cell` (E,) in [0, size), and each one's
    largest value: through a dense grid when it is small, else by sorting."""
    if grid_is_small(size, len(cell)):
        grid = torch.zeros(size).scatter_reduce_(
            0, torch.from_numpy(cell), torch.from_numpy(value), "amax"
        )
        distinct = grid.nonzero().squeeze(1)
        return distinct.numpy(), grid[distinct].numpy()
    order = np.argsort(cell, kind="stable")
    ordered = cell[order]
    starts = np.flatnonzero(np.r_[len(ordered) > 0, ordered[1:] != ordered[:-1]])
    return ordered[starts], np.maximum.reduceat(value[order], starts) if len(starts) else value[:0]
