"""What the SAE's weights say about each latent: logit effects and nearest decoder neighbours.

Both are computed a block of latents at a time, so nothing n x V or n x n is ever held.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indexer.ranking import Ranked, block_starts, concat, within


def _flatten(first: int, values: Tensor, indices: Tensor) -> Ranked:
    rows, top = values.shape
    return Ranked(
        latent=np.repeat(np.arange(first, first + rows), top),
        rank=np.tile(np.arange(top), rows),
        other=indices.reshape(-1).numpy(),
        value=values.reshape(-1).double().numpy(),
    )


@torch.no_grad()
def logit_effects(
    decoder: Tensor,
    unembedding: Tensor,
    *,
    final_norm: Tensor | None,
    top: int,
    block: int = 256,
    latents: range | None = None,
) -> tuple[Ranked, Ranked]:
    """The tokens each decoder direction (n, d) promotes and suppresses most (of the latents
    `latents` only, when given: a latent shard's).

    A direction added to the residual stream moves the logits by W_U (g * w), where g is the
    final norm's elementwise gain (the norm's division by the RMS only rescales every logit).
    """
    directions = decoder.float() * (final_norm.float() if final_norm is not None else 1.0)
    w_u = unembedding.float()  # (V, d)
    top = min(top, len(w_u))
    promoted, suppressed = [], []
    latents = range(len(directions)) if latents is None else latents
    for first in block_starts(latents, block):
        effect = directions[first : first + block] @ w_u.T  # (b, V)
        up = effect.topk(top, dim=1)
        down = effect.topk(top, dim=1, largest=False)
        promoted.append(_flatten(first, up.values, up.indices))
        suppressed.append(_flatten(first, down.values, down.indices))
    promoted_rows, suppressed_rows = concat(promoted), concat(suppressed)
    return (
        promoted_rows.take(within(promoted_rows.latent, latents)),
        suppressed_rows.take(within(suppressed_rows.latent, latents)),
    )


@torch.no_grad()
def decoder_neighbours(
    decoder: Tensor, *, top: int, block: int = 1024, latents: range | None = None
) -> Ranked:
    """Each latent's nearest latents by cosine between decoder directions (self excluded), for
    the latents `latents` only when given (a latent shard's), against all of them."""
    unit = torch.nn.functional.normalize(decoder.float(), dim=1)  # (n, d)
    top = min(top, len(unit) - 1)
    parts = []
    latents = range(len(unit)) if latents is None else latents
    for first in block_starts(latents, block):
        cosine = unit[first : first + block] @ unit.T  # (b, n)
        rows = torch.arange(len(cosine))
        cosine[rows, rows + first] = -torch.inf  # never its own neighbour
        best = cosine.topk(top, dim=1)
        parts.append(_flatten(first, best.values, best.indices))
    near = concat(parts)
    return near.take(within(near.latent, latents))
