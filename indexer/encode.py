"""Encode a chunk of cached activations with the SAE into the sparse codes the index reads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from indexer.accumulate import Chunk
from sae.codes import joined
from sae.model import SparseAutoencoder
from sae.sinks import is_sink

# Pre-activations held at once, (batch, n) float32: 256 MiB. Wide SAEs encode fewer tokens a
# batch, so memory does not grow with the width (each token's code does not depend on its batch).
ENCODE_CELLS = 1 << 26


class EncodedChunk(NamedTuple):
    """A chunk's codes, with the count of tokens encoded and of attention sinks left out."""

    chunk: Chunk
    n_tokens: int
    n_sink_tokens: int


@torch.no_grad()
def encode_chunk(
    sae: SparseAutoencoder,
    activations: torch.Tensor,
    token_ids: np.ndarray,
    *,
    first_context: int,
    sink_limit: float,
    excluded_ids: np.ndarray,
    batch_tokens: int,
) -> EncodedChunk:
    """Activations (C, T-1, d) of contexts `token_ids` (C, T) → their codes (C, T-1, k): top-k,
    or for an SAE without a fixed k as many slots as the chunk's busiest token fires.

    Tokens the harvest excluded and attention sinks (norm above `sink_limit`, which the SAE was
    not trained on) get no code: every activation 0.
    """
    n_ctx, positions, d = activations.shape
    x = activations.reshape(-1, d)  # (M, d)
    valid = ~torch.from_numpy(np.isin(token_ids[:, 1:], excluded_ids)).reshape(-1)  # (M,)
    parts, sinks = [], []
    batch_tokens = min(batch_tokens, max(1, ENCODE_CELLS // sae.cfg.n_latents))
    for start in range(0, len(x), batch_tokens):
        batch = x[start : start + batch_tokens].to(sae.device, torch.float32)  # (b, d)
        sink = is_sink(batch, sink_limit)  # (b,)
        skipped = sink | ~valid[start : start + len(batch)].to(sink.device)
        acts, indices = sae.encode(batch, silent=skipped)  # (b, k): without a fixed k, as
        parts.append((acts.cpu(), indices.cpu()))  # wide as its busiest token still firing
        sinks.append(sink.cpu())
    top_acts, top_indices = joined(parts)  # (M, k)
    sink = torch.cat(sinks)  # (M,)
    chunk = Chunk(
        first_context=first_context,
        token_ids=np.asarray(token_ids, np.int64),
        activations=top_acts.view(n_ctx, positions, -1).numpy(),
        indices=top_indices.view(n_ctx, positions, -1).numpy(),
    )
    return EncodedChunk(
        chunk,
        n_tokens=int((valid & ~sink).sum()),
        n_sink_tokens=int((valid & sink).sum()),
    )
