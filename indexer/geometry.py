"""What the SAE's weights say about each latent: logit effects and nearest decoder neighbours.

Both are computed a block of latents at a time, so nothing n x V or n x n is ever held.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indexer.ranking import Ranked, concat

CELLS = 1 << 25  # float32 products held at once (128 MB): the block of rows follows the width


def _flatten(first: int, values: Tensor, indices: Tensor) -> Ranked:
    rows, top = values.shape
    return Ranked(
        latent=np.repeat(np.arange(first, first + rows), top),
        rank=np.tile(np.arange(top), rows),
        other=indices.reshape(-1).cpu().numpy(),
        value=values.reshape(-1).double().cpu().numpy(),
    )


def _rows(width: int, cells: int) -> int:
    return max(1, min(4096, cells // max(1, width)))


@torch.no_grad()
def logit_effects(
    decoder: Tensor,
    unembedding: Tensor,
    *,
    final_norm: Tensor | None,
    top: int,
    cells: int = CELLS,
    latents: range | None = None,
) -> tuple[Ranked, Ranked]:
    """The tokens each decoder direction (n, d) promotes and suppresses most; of the latents
    `latents` only when given (a latent shard's).

    A direction added to the residual stream moves the logits by W_U (g * w), where g is the
    final norm's elementwise gain (the norm's division by the RMS only rescales every logit).
    Computed on the decoder's device in blocks of rows on a grid from latent 0 (a shard
    computes the very blocks a whole build does): never n x V.
    """
    directions = decoder.float() * (final_norm.float() if final_norm is not None else 1.0)
    w_u = unembedding.float().to(directions.device)  # (V, d)
    top = min(top, len(w_u))
    wanted = range(len(directions)) if latents is None else latents
    block = _rows(len(w_u), cells)
    promoted, suppressed = [], []
    for first in range(wanted.start - wanted.start % block, wanted.stop, block):
        effect = directions[first : first + block] @ w_u.T  # (b, V)
        lo, hi = max(first, wanted.start) - first, min(first + block, wanted.stop) - first
        up = effect.topk(top, dim=1)
        down = effect.topk(top, dim=1, largest=False)
        promoted.append(_flatten(first + lo, up.values[lo:hi], up.indices[lo:hi]))
        suppressed.append(_flatten(first + lo, down.values[lo:hi], down.indices[lo:hi]))
    return concat(promoted), concat(suppressed)


TILE = 2048  # rows and columns of one tile of cosines (16 MB), on a grid from latent 0
LOW = (1 << 32) - 1


@torch.no_grad()
def decoder_neighbours(
    decoder: Tensor, *, top: int, tile: int = TILE, latents: range | None = None
) -> Ranked:
    """Each latent's nearest latents by cosine between decoder directions (self excluded),
    ties by the smaller id; of the latents `latents` only when given (a latent shard's).

    Exact. The cosines are cut into (tile x tile) tiles on a fixed grid and each tile above the
    diagonal is computed once: its rows' candidates, and transposed, its columns'. A latent
    shard computes the very tiles its rows touch, so its rows equal a whole build's to the bit;
    a whole build computes half of n^2 d. Each latent keeps a running best `top` (never n x n).
    """
    unit = torch.nn.functional.normalize(decoder.float(), dim=1)  # (n, d)
    n = len(unit)
    wanted = range(n) if latents is None else latents
    best = _Best(wanted, min(top, n - 1), unit.device)
    starts = range(0, n, tile)
    for b in starts:
        for c in starts[b // tile :]:
            rows, columns = _touches(b, tile, wanted), _touches(c, tile, wanted)
            if not (rows or columns):
                continue
            cosine = unit[b : b + tile] @ unit[c : c + tile].T  # (tile, tile)
            if b == c:
                cosine.fill_diagonal_(-torch.inf)  # never its own neighbour
            if rows:
                best.offer(cosine, first_row=b, first_id=c)
            if columns and c != b:
                best.offer(cosine.T.contiguous(), first_row=c, first_id=b)  # rows: fast top-k
    return best.ranked()


def _touches(first: int, size: int, wanted: range) -> bool:
    return first < wanted.stop and first + size > wanted.start


class _Best:
    """The best `top` candidates of each wanted latent so far, as integer keys: the cosine's
    float32 bits mapped to an order-preserving integer, above the candidate's id reversed, so a
    larger key is a larger cosine, then a smaller id, whatever order the tiles come in."""

    def __init__(self, wanted: range, top: int, device: torch.device) -> None:
        self.wanted, self.top = wanted, top
        self.keys = torch.full((len(wanted), top), torch.iinfo(torch.long).min, device=device)

    def offer(self, values: Tensor, *, first_row: int, first_id: int) -> None:
        """Candidates `values` (r, c): rows are latents first_row.., columns ids first_id..."""
        lo, hi = max(first_row, self.wanted.start), min(first_row + len(values), self.wanted.stop)
        values = values[lo - first_row : hi - first_row]
        top = min(self.top, values.shape[1])
        # One more than wanted: where it equals the last wanted, the float top-k chose among
        # ties arbitrarily, so those rows are ranked by key over all their candidates (rare).
        chosen = values.topk(min(top + 1, values.shape[1]), dim=1)
        kept, kept_ids = chosen.values[:, :top], chosen.indices[:, :top] + first_id
        keys = _key(kept, kept_ids)
        if 0 < top < chosen.values.shape[1]:
            tied = chosen.values[:, top] == chosen.values[:, top - 1]
            if tied.any():
                every = torch.arange(values.shape[1], device=values.device) + first_id
                keys[tied] = (
                    _key(values[tied], every.expand(int(tied.sum()), -1)).topk(top, dim=1).values
                )
        mine = slice(lo - self.wanted.start, hi - self.wanted.start)
        self.keys[mine] = torch.cat([self.keys[mine], keys], dim=1).topk(self.top, dim=1).values

    def ranked(self) -> Ranked:
        ids = LOW - (self.keys & LOW)
        mapped = (self.keys >> 32).int()
        bits = torch.where(mapped < 0, mapped ^ 0x7FFFFFFF, mapped)
        return _flatten(self.wanted.start, bits.view(torch.float32), ids)


def _key(values: Tensor, ids: Tensor) -> Tensor:
    """int64 keys ordered as (value, -id): float32 bits made order-preserving (negative
    floats' magnitude bits flipped), shifted above the reversed id."""
    bits = values.contiguous().view(torch.int32)
    mapped = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (mapped << 32) | (LOW - ids)
