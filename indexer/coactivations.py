"""What fires together, and on which tokens: computed from the token sample.

The token sample holds every token's code in a fixed share of the contexts (all of them for
small corpora), so these counts are exact on the sample and memory does not grow with the corpus.
Co-activation is counted a block of latents at a time: never an n x n matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from indexer.ranking import Ranked, block_starts, concat, rank_in_runs, within
from sae.codes import Fired, is_firing
from sae.explain import TokenSample


class Coactivation(NamedTuple):
    ranked: Ranked  # value = Jaccard index
    together: np.ndarray  # tokens where both fire


@torch.no_grad()
def coactivations(
    sample: TokenSample,
    *,
    n_latents: int,
    top: int,
    max_cells: int = 1 << 22,
    latents: range | None = None,
) -> Coactivation:
    """Each latent's most co-active latents by Jaccard index over the sample's tokens (of the
    latents `latents` only, when given: a latent shard's, against every partner).

    Codes (M, k): a token's k slots are its co-members, so the pairs of a block of latents are
    a gather, and their counts a bincount into a (block, n) array.
    """
    activations, indices, every = sample.activations, sample.indices, sample.fires
    k = activations.shape[-1]
    token, owner_all = torch.from_numpy(every.token), torch.from_numpy(every.latent)  # (F,)
    fires = torch.bincount(owner_all, minlength=n_latents)[:n_latents]  # (n,)
    idx = torch.from_numpy(indices.reshape(-1, k)).long()  # (M, k)
    firing = torch.from_numpy(is_firing(activations.reshape(-1, k)))
    idx = torch.where(firing, idx, n_latents)  # silent slots point at a spare column
    block = max(1, max_cells // (n_latents + 1))
    # Fires grouped by latent once, so each block's are a slice (counts ignore their order).
    by_owner = torch.argsort(owner_all, stable=True)  # (F,)
    bounds = torch.searchsorted(owner_all[by_owner], torch.arange(0, n_latents + block, block))
    parts, counts = [], []
    latents = range(n_latents) if latents is None else latents
    for first in block_starts(latents, block):
        last = min(first + block, n_latents)
        mine = by_owner[bounds[first // block] : bounds[first // block + 1]]
        owner = (owner_all[mine] - first).unsqueeze(1)  # (f, 1)
        partner = idx[token[mine]]  # (f, k): every latent on the same token
        cells = (owner * (n_latents + 1) + partner).reshape(-1)
        both = torch.bincount(cells, minlength=(last - first) * (n_latents + 1))
        both = both.view(last - first, n_latents + 1)[:, :n_latents].clone()  # (b, n)
        rows = torch.arange(last - first)
        both[rows, rows + first] = 0  # a latent with itself
        union = fires[first:last, None] + fires[None, :] - both
        jaccard = both / union.clamp(min=1)  # (b, n), 0 where never together
        best = jaccard.topk(min(top, n_latents - 1), dim=1)  # ties: a fixed order
        keep = best.values > 0
        row = rows.unsqueeze(1).expand_as(best.indices)[keep]
        rank = torch.arange(best.indices.shape[1]).expand_as(best.indices)[keep]
        other = best.indices[keep]
        parts.append(
            Ranked((row + first).numpy(), rank.numpy(), other.numpy(), best.values[keep].numpy())
        )
        counts.append(both[row, other].numpy())
    ranked, together = concat(parts), np.concatenate(counts)
    inside = within(ranked.latent, latents)
    return Coactivation(ranked.take(inside), together[inside])


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
    ordered = np.sort(pair)  # np.unique's inverse costs a slower argsort: search instead
    starts = np.flatnonzero(np.r_[len(ordered) > 0, ordered[1:] != ordered[:-1]])
    unique, count = ordered[starts], np.diff(np.r_[starts, len(ordered)])
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
