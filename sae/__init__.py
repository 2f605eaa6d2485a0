"""Latent Atlas: TopK sparse autoencoders on language-model activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sae.version import VERSION

__version__ = VERSION

if TYPE_CHECKING:
    from sae.model import SparseAutoencoder


def load(path: str, *, device: str = "cpu") -> SparseAutoencoder:
    """Load an SAE folder (ours, SAELens, sparsify or OpenAI), detecting the format."""
    from sae.formats import load as load_any

    return load_any(path, device=device)
