"""Sparse codes, and where a latent fires.

An SAE's code of a token is a pair (activations, indices), each (..., k): the k active slots
and the latents in them (`SparseAutoencoder.encode`). A latent *fires* at a token when its
activation there is > 0; a slot with activation 0 is silent (a TopK SAE can pick a latent
whose pre-activation is not positive, and the index zeroes the codes of tokens it skips).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, overload

import numpy as np

if TYPE_CHECKING:
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
