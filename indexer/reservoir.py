"""For every latent, the `capacity` best (latent, context) pairs seen so far, with their rows.

`order` is ascending: -activation keeps the strongest contexts (ties go to the smaller context
id), a hash of (latent, context) keeps a uniform random sample (bottom-k sampling; for a given
latent the hash is a bijection of the context id, so it never ties).

A chunk's pairs are first cut to those that can still win — no worse than the latent's worst
kept pair, nor than its `capacity`-th best pair of the chunk — and their rows (the latent on every
token of the context) are built while the chunk is in memory. Candidates wait in a buffer and
are merged with the kept pairs (one sort) only when the buffer is as large as the reservoir, so
the cost of sorting does not recur with every chunk. The buffer's size is bounded the same way:
memory does not grow with the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from indexer.fires import ContextPairs
from indexer.ranking import rank_in_runs
from indexer.rows import SparseRows

Kind = Literal["strongest", "hash"]


class Kept(NamedTuple):
    """Pairs, flat, sorted by latent then order (best first) once merged."""

    latent: np.ndarray  # (m,)
    order: np.ndarray  # (m,) float32 (-activation) or uint64 (hash)
    context: np.ndarray  # (m,) global context id
    position: np.ndarray  # (m,) position of the largest activation, 1..T-1
    activation: np.ndarray  # (m,) float32 the largest activation in the context
    rows: SparseRows  # (m, T-1) float16 the latent on every token at positions 1..T-1


def _empty(positions: int, kind: Kind) -> Kept:
    return Kept(
        latent=np.zeros(0, np.int64),
        order=np.zeros(0, np.uint64 if kind == "hash" else np.float32),
        context=np.zeros(0, np.int64),
        position=np.zeros(0, np.int64),
        activation=np.zeros(0, np.float32),
        rows=SparseRows.empty(positions),
    )


def _concat(parts: list[Kept]) -> Kept:
    flat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in Kept._fields[:-1]}
    return Kept(**flat, rows=SparseRows.concat([p.rows for p in parts]))


def _bytes(kept: Kept) -> int:
    flat = sum(getattr(kept, f).nbytes for f in Kept._fields[:-1])
    return flat + kept.rows.offsets.nbytes + kept.rows.positions.nbytes + kept.rows.values.nbytes


def _take(kept: Kept, index: np.ndarray) -> Kept:
    """The pairs `index`, in that order."""
    flat = {f: getattr(kept, f)[index] for f in Kept._fields[:-1]}
    return Kept(**flat, rows=kept.rows.take(index))


@dataclass
class Reservoir:
    n_latents: int
    capacity: int
    positions: int  # T-1
    kind: Kind
    merged: Kept = field(init=False)
    buffer: list[Kept] = field(init=False, default_factory=list)
    buffered: int = field(init=False, default=0)
    bound: np.ndarray = field(init=False)  # (n,) worst kept order of full latents

    def __post_init__(self) -> None:
        self.merged = _empty(self.positions, self.kind)
        self._update_bound()

    def offer(self, fires: ContextPairs, order: np.ndarray) -> None:
        """Let a chunk's pairs, ordered by `order` (P,), compete for the places.

        Candidates are the pairs no worse than the latent's worst kept pair and, when that
        leaves many, than its `capacity`-th best pair of this chunk.
        """
        pairs = np.flatnonzero(order <= self.bound[fires.pair_latent])  # a superset of winners
        if len(pairs) > self.n_latents * self.capacity:
            # Early chunks: most pairs pass the bound. At most `capacity` per latent can win,
            # so cut to each latent's best `capacity` of this chunk before building rows.
            limit = fires.kth_smallest(order, self.capacity)[fires.pair_latent[pairs]]
            pairs = pairs[order[pairs] <= limit]
        if len(pairs) == 0:
            return
        rows, position = fires.rows(pairs)
        self._add(
            Kept(
                latent=fires.pair_latent[pairs],
                order=order[pairs],
                context=fires.pair_context[pairs],
                position=position,  # the first position of the maximum
                activation=fires.pair_max[pairs],
                rows=rows,
            )
        )

    def merge(self, other: Reservoir) -> None:
        """Take in another reservoir (another rank's): as if one had seen both inputs."""
        self._add(other.kept())

    def nbytes(self) -> int:
        """The memory its kept pairs and candidates hold."""
        return sum(_bytes(kept) for kept in [self.merged, *self.buffer])

    def kept(self) -> Kept:
        """Every latent's best pairs, sorted by latent then order."""
        self._flush()
        return self.merged

    def _add(self, candidates: Kept) -> None:
        self.buffer.append(candidates)
        self.buffered += len(candidates.latent)
        if self.buffered >= max(len(self.merged.latent), self.capacity):
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        every = _concat([self.merged, *self.buffer])
        self.buffer, self.buffered = [], 0
        # A hash never ties within a latent; -activation may (repeated text): context decides.
        if self.kind == "hash":
            sort = np.lexsort((every.order, every.latent))
        else:
            sort = np.lexsort((every.context, every.order, every.latent))
        keep = sort[rank_in_runs(every.latent[sort]) < self.capacity]
        self.merged = _take(every, keep)
        self._update_bound()

    def _update_bound(self) -> None:
        """Only a full latent bounds what can enter; candidates in the buffer do not count."""
        unbounded = np.iinfo(np.uint64).max if self.kind == "hash" else np.inf
        dtype = np.uint64 if self.kind == "hash" else np.float32
        self.bound = np.full(self.n_latents, unbounded, dtype)
        latent = self.merged.latent
        if len(latent) == 0:
            return
        last = np.r_[latent[1:] != latent[:-1], True]  # the worst kept pair of each latent
        full = last & (rank_in_runs(latent) == self.capacity - 1)
        self.bound[latent[full]] = self.merged.order[full]
