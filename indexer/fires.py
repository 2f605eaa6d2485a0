"""A chunk's sparse codes, and the (latent, context) pairs in it where a latent fires."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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

    Pairs (latent, context) are found through a dense (n, C) grid rather than a sort: scatters
    into it cost O(fires), and its rows give each latent's best pairs of the chunk by top-k.
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
        grid = torch.zeros(n_latents * n_ctx).scatter_reduce_(
            0, torch.from_numpy(cell), torch.from_numpy(act), "amax"
        )  # (n * C,)
        pair_cell = grid.nonzero().squeeze(1)  # (P,) ascending: by latent, then context
        cells = pair_cell.numpy()
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
            pair_max=grid[pair_cell].numpy(),
        )

    def kth_smallest(self, order: np.ndarray, k: int) -> np.ndarray:
        """(n,) each latent's k-th smallest `order` (P,) among its pairs here, else the max."""
        if order.dtype == np.uint64:  # flip the top bit: signed order = unsigned order
            values = torch.from_numpy((order ^ np.uint64(1 << 63)).view(np.int64))
            fill: float | int = torch.iinfo(torch.int64).max
        else:
            values, fill = torch.from_numpy(order), float("inf")
        grid = torch.full((self.n_latents * self.n_contexts,), fill, dtype=values.dtype)
        grid[torch.from_numpy(self.pair_cell)] = values
        k = min(k, self.n_contexts)
        kth = grid.view(self.n_latents, -1).topk(k, dim=1, largest=False).values[:, -1].numpy()
        if order.dtype == np.uint64:
            return kth.view(np.uint64) ^ np.uint64(1 << 63)
        return kth

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
