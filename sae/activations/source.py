"""Where `indexer build` gets activations: a harvested cache, or the model run on the fly.

Both give the same thing: the token ids of every context, and the activations of whole
contexts in numbered chunks (positions 1..T-1, position 0 — the attention sink — never), so a
build can be split across torchrun ranks by chunk number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from sae.activations.cache import ActivationCache
from sae.activations.contexts import build_contexts, contexts_needed
from sae.activations.corpus import open_corpus
from sae.activations.lm import LanguageModel, hook_description, residual_stream


@dataclass(frozen=True)
class Provenance:
    model: str
    layer: int
    hook: str
    corpus: str
    activations: str  # the cache folder, or "streamed from the model"


class ActivationSource(Protocol):
    provenance: Provenance
    token_ids: np.ndarray  # (N, T) every context's tokens, position 0 included
    special_ids: np.ndarray  # token ids that count as special (document separators, BOS)
    excluded_ids: np.ndarray  # token ids the harvest left out of statistics

    @property
    def n_chunks(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def chunk_contexts(self, index: int) -> int:
        """How many contexts chunk `index` holds."""
        ...

    def chunk(self, index: int) -> tuple[int, torch.Tensor]:
        """(first context id, activations (C, T-1, d)) of chunk `index`."""
        ...

    def median_norm(self) -> float: ...

    def context_table(self, context_ids: np.ndarray) -> pa.Table:
        """doc_id and start of the given contexts."""
        ...


class CacheSource:
    """A complete activation cache, optionally cut to its first `max_tokens` activations."""

    def __init__(self, root: str, *, max_tokens: int = 0) -> None:
        self.cache = ActivationCache(root)
        manifest = self.cache.manifest
        positions = self.cache.context_length - 1
        n = self.cache.n_contexts
        if max_tokens:
            n = min(n, math.ceil(max_tokens / positions))
        self.n_contexts = n
        self.per_shard = int(manifest["shard_contexts"])
        self.token_ids = np.asarray(self.cache.token_ids()[:n])
        self.special_ids = np.asarray(manifest.get("special_token_ids", []), np.int64)
        self.excluded_ids = np.asarray(manifest.get("excluded_token_ids", []), np.int64)
        self.provenance = Provenance(
            model=str(manifest["model"]),
            layer=self.cache.layer,
            hook=str(manifest.get("hook", hook_description(self.cache.layer))),
            corpus=str(manifest.get("corpus", "")),
            activations=str(self.cache.root),
        )

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_contexts / self.per_shard)

    @property
    def d_model(self) -> int:
        return self.cache.d_model

    def chunk_contexts(self, index: int) -> int:
        return max(0, min(self.per_shard, self.n_contexts - index * self.per_shard))

    def chunk(self, index: int) -> tuple[int, torch.Tensor]:
        first, acts = self.cache.shard(index)
        return first, acts[: max(0, self.n_contexts - first)]

    def median_norm(self) -> float:
        return self.cache.median_norm()

    def context_table(self, context_ids: np.ndarray) -> pa.Table:
        table = self.cache.contexts()
        return table.take(pa.array(context_ids, pa.int64()))


class StreamSource:
    """Contexts cut from a corpus and run through the model chunk by chunk, nothing cached."""

    def __init__(
        self,
        lm: LanguageModel,
        *,
        corpus: str,
        layer: int,
        tokens: int,
        context_length: int,
        seed: int,
        chunk_contexts: int,
        forward_batch: int = 32,
    ) -> None:
        source = open_corpus(corpus)
        contexts = build_contexts(
            source.documents(),
            lm.tokenizer,
            context_length=context_length,
            n_contexts=contexts_needed(tokens, context_length),
            seed=seed,
            corpus_name=corpus,
        )
        self.lm, self.layer, self.forward_batch = lm, layer, forward_batch
        self.per_chunk = chunk_contexts
        self.token_ids = contexts.token_ids
        self.n_contexts = len(contexts.token_ids)
        self._doc_ids = np.asarray(contexts.documents, dtype=object)[contexts.doc_index]
        self._starts = np.asarray(contexts.start, np.int64)
        self.special_ids = np.asarray(sorted(set(lm.tokenizer.all_special_ids)), np.int64)
        self.excluded_ids = np.zeros(0, np.int64)
        self.provenance = Provenance(
            model=lm.name,
            layer=layer,
            hook=hook_description(layer),
            corpus=source.describe(),
            activations="streamed from the model",
        )
        self._median: float | None = None

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_contexts / self.per_chunk)

    @property
    def d_model(self) -> int:
        return self.lm.d_model

    def chunk_contexts(self, index: int) -> int:
        return max(0, min(self.per_chunk, self.n_contexts - index * self.per_chunk))

    def chunk(self, index: int) -> tuple[int, torch.Tensor]:
        first = index * self.per_chunk
        ids = torch.from_numpy(np.asarray(self.token_ids[first : first + self.per_chunk]))
        parts = [
            residual_stream(self.lm, batch.long(), self.layer)[:, 1:].float().cpu()
            for batch in ids.split(self.forward_batch)
        ]
        return first, torch.cat(parts)  # (C, T-1, d)

    def median_norm(self) -> float:
        """Median norm over the first chunk: every rank computes the same number."""
        if self._median is None:
            _, acts = self.chunk(0)
            self._median = float(acts.float().norm(dim=-1).median())
        return self._median

    def context_table(self, context_ids: np.ndarray) -> pa.Table:
        return pa.table(
            {
                "context_id": pa.array(context_ids, pa.int64()),
                "doc_id": pa.array(self._doc_ids[context_ids].tolist(), pa.string()),
                "start": pa.array(self._starts[context_ids], pa.int64()),
            }
        )
