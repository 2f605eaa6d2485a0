"""Sparse codes, and where a latent fires.

An SAE's code of a token is a pair (activations, indices), each (..., k): the k active slots
and the latents in them (`SparseAutoencoder.encode`). A latent *fires* at a token when its
activation there is > 0; a slot with activation 0 is silent (a TopK SAE can pick a latent
whose pre-activation is not positive, and the index zeroes the codes of tokens it skips).

An SAE without a fixed k (ReLU, JumpReLU: the number of active latents changes per token) gives
codes as wide as the busiest token of the batch, the other tokens' spare slots silent
(`narrowed`); batches of different widths are joined by padding with silent slots (`joined`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, overload

import numpy as np
import torch
from torch import Tensor


class Fired(NamedTuple):
    """Every (token, latent) pair of some codes where the latent fires, in token order."""

    token: np.ndarray  # (F,) int64 flat index of the token over the codes' leading dims
    latent: np.ndarray  # (F,) int64
    activation: np.ndarray  # (F,) the activation, in the codes' dtype


@overload
def is_firing(activations: np.ndarray) -> np.ndarray: ...
@overload
def is_firing(activations: Tensor) -> Tensor: ...
def is_firing(activations: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """True where a slot of codes (..., k) fires: its activation is > 0 (numpy or torch)."""
    return activations > 0


def fired(activations: np.ndarray, indices: np.ndarray) -> Fired:
    """Where codes (..., k) fire: tokens ascending, slots in order within a token."""
    k = activations.shape[-1]
    acts = activations.reshape(-1, k)  # (M, k)
    token, slot = np.nonzero(is_firing(acts))  # (F,), (F,)
    latent = indices.reshape(-1, k)[token, slot].astype(np.int64)
    return Fired(token.astype(np.int64), latent, acts[token, slot])


def narrowed(
    activations: Tensor, indices: Tensor, *, silent: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Codes (..., m) cut to as many slots as the busiest token fires (at least one), every
    firing slot kept: dense codes of an SAE without a fixed k become sparse ones. Tokens where
    `silent` (...,) is true keep no code and do not count as the busiest."""
    counts = is_firing(activations).sum(-1)  # (...,)
    if silent is not None:
        counts = counts.masked_fill(silent, 0)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    if width < activations.shape[-1]:
        activations, order = activations.topk(width, dim=-1)  # the firing slots, then silent
        indices = indices.gather(-1, order)
    if silent is not None:
        activations = activations.masked_fill(silent[..., None], 0.0)
    return activations, indices


def joined(parts: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Codes of consecutive batches (b_i, k_i) as one (sum b_i, max k_i): narrower batches
    padded with silent slots (activation 0, latent 0)."""
    width = max(acts.shape[-1] for acts, _ in parts)
    activations = [torch.nn.functional.pad(acts, (0, width - acts.shape[-1])) for acts, _ in parts]
    indices = [torch.nn.functional.pad(idx, (0, width - idx.shape[-1])) for _, idx in parts]
    return torch.cat(activations), torch.cat(indices)


def widened(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Codes arrays (..., k_i), each padded with silent slots (0) to the widest k_i, so that
    they concatenate."""
    width = max(part.shape[-1] for part in parts)
    return [
        np.pad(part, [(0, 0)] * (part.ndim - 1) + [(0, width - part.shape[-1])])
        if part.shape[-1] < width
        else part
        for part in parts
    ]
