"""What the SAE's weights say about each latent: logit effects and nearest decoder neighbours.

Both are computed a block of latents at a time, so nothing n x V or n x n is ever held.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indexer.ranking import Ranked, concat


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
    decoder: Tensor, unembedding: Tensor, *, final_norm: Tensor | None, top: int, block: int = 256
) -> tuple[Ranked, Ranked]:
    """The tokens each decoder direction (n, d) promotes and suppresses most.

    A direction added to the residual stream moves the logits by W_U (g * w), where g is the
    final norm's elementwise gain (the norm's division by the RMS only rescales every logit).
    """
    directions = decoder.float() * (final_norm.float() if final_norm is not None else 1.0)
    w_u = unembedding.float()  # (V, d)
    top = min(top, len(w_u))
    promoted, suppressed = [], []
    for first in range(0, len(directions), block):
        effect = directions[first : first + block] @ w_u.T  # (b, V)
        up = effect.topk(top, dim=1)
        down = effect.topk(top, dim=1, largest=False)
        promoted.append(_flatten(first, up.values, up.indices))
        suppressed.append(_flatten(first, down.values, down.indices))
    return concat(promoted), concat(suppressed)


@torch.no_grad()
def decoder_neighbours(decoder: Tensor, *, top: int, block: int = 1024) -> Ranked:
    """Each latent's nearest latents by cosine between decoder directions (self excluded)."""
    unit = torch.nn.functional.normalize(decoder.float(), dim=1)  # (n, d)
    top = min(top, len(unit) - 1)
    parts = []
    for first in range(0, len(unit), block):
        cosine = unit[first : first + block] @ unit.T  # (b, n)
        rows = torch.arange(len(cosine))
        cosine[rows, rows + first] = -torch.inf  # never its own neighbour
        best = cosine.topk(top, dim=1)
        parts.append(_flatten(first, best.values, best.indices))
    return concat(parts)
