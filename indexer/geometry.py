"""What the SAE's weights say about each latent: logit effects and nearest decoder neighbours.

Both are computed a block of latents at a time, so nothing n x V or n x n is ever held.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indexer.ranking import Ranked, concat

CELLS = 1 << 26  # float32 products held at once (256 MB): the block of rows follows the width


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
) -> tuple[Ranked, Ranked]:
    """The tokens each decoder direction (n, d) promotes and suppresses most.

    A direction added to the residual stream moves the logits by W_U (g * w), where g is the
    final norm's elementwise gain (the norm's division by the RMS only rescales every logit).
    Computed on the decoder's device, a block of rows at a time: never n x V.
    """
    directions = decoder.float() * (final_norm.float() if final_norm is not None else 1.0)
    w_u = unembedding.float().to(directions.device)  # (V, d)
    top = min(top, len(w_u))
    block = _rows(len(w_u), cells)
    promoted, suppressed = [], []
    for first in range(0, len(directions), block):
        effect = directions[first : first + block] @ w_u.T  # (b, V)
        up = effect.topk(top, dim=1)
        down = effect.topk(top, dim=1, largest=False)
        promoted.append(_flatten(first, up.values, up.indices))
        suppressed.append(_flatten(first, down.values, down.indices))
    return concat(promoted), concat(suppressed)


@torch.no_grad()
def decoder_neighbours(decoder: Tensor, *, top: int, cells: int = CELLS) -> Ranked:
    """Each latent's nearest latents by cosine between decoder directions (self excluded).

    Exact, and each cosine is computed once: a block of rows against every later latent gives
    the block's candidates and, transposed, the later latents' candidates from the block; each
    latent keeps a running best `top` (n x top, never n x n).
    """
    unit = torch.nn.functional.normalize(decoder.float(), dim=1)  # (n, d)
    n = len(unit)
    top = min(top, n - 1)
    best = torch.full((n, top), -torch.inf, device=unit.device)
    best_ids = torch.zeros((n, top), dtype=torch.long, device=unit.device)
    block = _rows(n, cells)
    for first in range(0, n, block):
        size = min(block, n - first)
        cosine = unit[first : first + size] @ unit[first:].T  # (b, n - first)
        rows = torch.arange(size, device=unit.device)
        cosine[rows, rows] = -torch.inf  # never its own neighbour
        mine = cosine.topk(min(top, cosine.shape[1]), dim=1)
        _keep_best(best, best_ids, first, mine.values, mine.indices + first)
        if first + size < n:  # the later latents' candidates among this block
            later = cosine[:, size:].T.topk(min(top, size), dim=1)  # (n - first - b, top)
            _keep_best(best, best_ids, first + size, later.values, later.indices + first)
    return _flatten(0, best, best_ids)


def _keep_best(best: Tensor, ids: Tensor, first: int, values: Tensor, indices: Tensor) -> None:
    """Merge candidates for rows first.. into the running best, which stays sorted."""
    rows = slice(first, first + len(values))
    merged = torch.cat([best[rows], values], dim=1).topk(best.shape[1], dim=1)
    ids[rows] = torch.cat([ids[rows], indices], dim=1).gather(1, merged.indices)
    best[rows] = merged.values
