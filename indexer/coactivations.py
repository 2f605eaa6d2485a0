"""What fires together, and on which tokens: computed from the token sample.

The token sample holds every token's code in a fixed share of the contexts (all of them for
small corpora), so these counts are exact on the sample and memory does not grow with the corpus.
Co-activation is counted a block of latents at a time: never an n x n matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from indexer.ranking import Ranked, concat, grid_is_small, rank_in_runs
from sae.codes import Fired, is_firing
from sae.explain import TokenSample, count_distinct


class Coactivation(NamedTuple):
    ranked: Ranked  # value = Jaccard index
    together: np.ndarray  # tokens where both fire


PAIRS_PER_BLOCK = 1 << 19  # (owner, partner) pairs counted at once: ~40 MB of working arrays
LOW = (1 << 32) - 1


@torch.no_grad()
def coactivations(
    sample: TokenSample,
    *,
    n_latents: int,
    top: int,
    max_pairs: int = PAIRS_PER_BLOCK,
    latents: range | None = None,
) -> Coactivation:
    """Each latent's most co-active latents by Jaccard index over the sample's tokens (of the
    latents `latents` only, when given: a latent shard's, against every partner).

    Ranked by Jaccard (the float32 value stored), ties by the smaller latent id. A token's k
    slots are its co-members, so each fire's partners are a gather from the codes (M, k). The
    pairs of a block of owners are counted exactly: into a (block, n) grid where that grid is
    no bigger than the pairs (narrow SAEs), else by sorting the pairs (wide ones), so time and
    memory follow the number of pairs, never n^2.
    """
    activations, indices, every = sample.activations, sample.indices, sample.fires
    k = activations.shape[-1]
    token, owner_all = torch.from_numpy(every.token), torch.from_numpy(every.latent)  # (F,)
    fires = torch.bincount(owner_all, minlength=n_latents)[:n_latents]  # (n,)
    idx = torch.from_numpy(indices.reshape(-1, k)).long()  # (M, k)
    firing = torch.from_numpy(is_firing(activations.reshape(-1, k)))
    idx = torch.where(firing, idx, n_latents)  # silent slots point at a spare column
    # Fires grouped by latent once, so each block's are a slice (counts ignore their order).
    by_owner = torch.argsort(owner_all, stable=True)  # (F,)
    starts = torch.searchsorted(owner_all[by_owner], torch.arange(n_latents + 1))  # (n + 1,)
    partners = firing.sum(dim=1)[token] - 1  # (F,) the other latents on each fire's token
    per_owner = torch.bincount(owner_all, weights=partners.double(), minlength=n_latents)
    parts = []
    wanted = range(n_latents) if latents is None else latents
    for first, last in _owner_blocks(per_owner[:n_latents].long(), wanted, max_pairs=max_pairs):
        mine = by_owner[starts[first] : starts[last]]
        owner = owner_all[mine] - first  # (f,) within the block
        partner = idx[token[mine]]  # (f, k): every latent on the same token, itself included
        cells = owner.unsqueeze(1) * (n_latents + 1) + partner  # (f, k) into a (b, n + 1) grid
        pairs = Pairs(first, last - first, n_latents, fires)
        if grid_is_small((last - first) * (n_latents + 1), cells.numel()):
            parts.append(pairs.from_grid(cells.reshape(-1), top=top))
        else:
            real = (partner != n_latents) & (partner != owner.unsqueeze(1) + first)
            parts.append(pairs.from_sorted(cells[real], top=top))
    if not parts:
        empty = np.zeros(0, np.int64)
        return Coactivation(Ranked(empty, empty, empty, np.zeros(0, np.float32)), empty)
    ranked = concat([ranked for ranked, _ in parts])
    return Coactivation(ranked, np.concatenate([together for _, together in parts]))


def _owner_blocks(
    per_owner: torch.Tensor, wanted: range, *, max_pairs: int
) -> list[tuple[int, int]]:
    """Consecutive ranges of the `wanted` latents whose fires have at most `max_pairs` partners
    in all (a latent with more is a block of its own). Each pair's count and key do not depend
    on its block, so any split gives the same rows."""
    ends = torch.cumsum(per_owner, 0)  # (n,)
    blocks, first, n = [], wanted.start, wanted.stop
    while first < n:
        done = int(ends[first - 1]) if first else 0
        last = int(torch.searchsorted(ends, done + max_pairs, right=True))
        last = min(n, max(last, first + 1))
        blocks.append((first, last))
        first = last
    return blocks


class Pairs(NamedTuple):
    """A block of owners [first, first + size): its pairs counted, then ranked the same way
    either way, by one integer key: Jaccard's float32 bits (order-preserving for values >= 0)
    above the partner's id, so equal Jaccard indexes rank the smaller id first."""

    first: int
    size: int
    n_latents: int
    fires: torch.Tensor  # (n,)

    def from_grid(self, cells: torch.Tensor, *, top: int) -> tuple[Ranked, np.ndarray]:
        n = self.n_latents
        both = torch.bincount(cells, minlength=self.size * (n + 1)).view(self.size, n + 1)
        both = both[:, :n]  # (b, n): the spare column of silent slots dropped
        rows = torch.arange(self.size)
        both[rows, rows + self.first] = 0  # a latent with itself
        union = self.fires[self.first : self.first + self.size, None] + self.fires[None, :] - both
        jaccard = both / union.clamp(min=1)  # (b, n) float32, 0 where never together
        key = (jaccard.view(torch.int32).long() << 32) | (LOW - torch.arange(n))
        best = key.masked_fill_(both == 0, -1).topk(min(top, n), dim=1).indices  # (b, top)
        row = rows.unsqueeze(1).expand_as(best)
        keep = both[row, best] > 0
        rank = torch.arange(best.shape[1]).expand_as(best)[keep]
        row, other = row[keep], best[keep]
        ranked = Ranked(
            (row + self.first).numpy(), rank.numpy(), other.numpy(), jaccard[row, other].numpy()
        )
        return ranked, both[row, other].numpy()

    def from_sorted(self, cells: torch.Tensor, *, top: int) -> tuple[Ranked, np.ndarray]:
        n = self.n_latents
        # ascending: owner-major, then id order
        distinct, count = map(torch.from_numpy, count_distinct(cells.numpy()))
        row, other = distinct // (n + 1), distinct % (n + 1)
        owner = row + self.first
        jaccard = count / (self.fires[owner] + self.fires[other] - count)  # float32, > 0
        fall = (1 << 31) - 1 - jaccard.view(torch.int32).long()  # ascending = Jaccard falling
        order = torch.sort((row << 31) | fall, stable=True).indices  # ties stay in id order
        rank = torch.from_numpy(rank_in_runs(owner[order].numpy()))
        best = order[rank < top]
        ranked = Ranked(
            owner[best].numpy(),
            rank[rank < top].numpy(),
            other[best].numpy(),
            jaccard[best].numpy(),
        )
        return ranked, count[best].numpy()


class TokenTable(NamedTuple):
    """Ranked (key, rank, other) rows with the count and mean activation of each pair."""

    key: np.ndarray
    rank: np.ndarray
    other: np.ndarray
    fires: np.ndarray
    mean_activation: np.ndarray


def token_tables(
    fires: Fired, token_ids: np.ndarray, *, vocab_size: int, top: int
) -> tuple[TokenTable, TokenTable]:
    """(latent → the tokens it fires on most, token → the latents that fire on it most), from
    the fires of codes (S, T-1, k) of the contexts `token_ids` (S, T)."""
    token_id = token_ids[:, 1:].reshape(-1)[fires.token].astype(np.int64)  # (F,) vocabulary ids
    pair = fires.latent * vocab_size + token_id
    unique, count = count_distinct(pair)  # np.unique's inverse costs a slower argsort: search
    inverse = np.searchsorted(unique, pair)
    mean = np.bincount(inverse, weights=fires.activation, minlength=len(unique)) / count
    latent, token = unique // vocab_size, unique % vocab_size
    return _ranked(latent, token, count, mean, top), _ranked(token, latent, count, mean, top)


def _ranked(
    key: np.ndarray, other: np.ndarray, count: np.ndarray, mean: np.ndarray, top: int
) -> TokenTable:
    """The `top` pairs of each key by count (ties: smaller other id), with one integer sort."""
    # key | (most - count) | other packed into one int64: key ≤ 2^21, count and other ≤ 2^21.
    most = int(count.max(initial=0))
    bits = max(int(most).bit_length(), int(other.max(initial=0)).bit_length(), 1)
    if int(key.max(initial=0)).bit_length() + 2 * bits > 63:
        order = np.lexsort((other, -count, key))  # too wide to pack: the general sort
    else:
        packed = (key << (2 * bits)) | ((most - count) << bits) | other
        order = np.argsort(packed)
    rank = rank_in_runs(key[order])
    keep = order[rank < top]
    return TokenTable(key[keep], rank[rank < top], other[keep], count[keep], mean[keep])
