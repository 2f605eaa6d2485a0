"""Where activations come from: a harvested cache, or the model run on the fly.

"Cache or stream" is decided here once for `indexer build` and `sae train`. Both sources give
the token ids of every context and the activations of whole contexts (positions 1..T-1,
position 0 — the attention sink — never). The indexer reads them in numbered chunks, so a build
can be split across torchrun ranks by chunk number; training reads shuffled groups of rows of a
`StreamSource` through `StreamSource.forward` (sae/training/stream.py), or a cache through its
own shuffled shards (sae/training/batches.py).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from sae.activations.cache import ActivationCache
from sae.activations.contexts import Contexts, build_contexts, contexts_needed
from sae.activations.corpus import Corpus, open_corpus
from sae.activations.hookpoints import (
    HookPoint,
    check_hookpoint,
    read_hookpoint,
    recorded_hookpoint,
)
from sae.activations.lm import (
    LanguageModel,
    load_config,
    load_lm,
    load_tokenizer,
)
from sae.sinks import after_position_0

CHUNK_CONTEXTS = 1024  # contexts per `StreamSource.chunk` unless told otherwise


@dataclass(frozen=True)
class Provenance:
    model: str
    layer: int
    hook: str
    corpus: str
    activations: str  # the cache folder, or "streamed from the model"

    @property
    def hook_point(self) -> HookPoint:
        found = recorded_hookpoint(self.layer, self.hook)
        assert found is not None  # every source records its layer
        return found


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
            hook=self.cache.hook_point.description,
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


def open_stream(
    model: str,
    *,
    hook: HookPoint,
    corpus: str,
    tokens: int,
    context_length: int,
    seed: int,
    device: str,
    chunk_contexts: int = CHUNK_CONTEXTS,
) -> StreamSource:
    """Model `model` on `device` over about `tokens` tokens of `corpus`, cut into contexts.

    The hook point is checked against the model's config before any weight is loaded. The corpus is
    tokenized in a thread while the weights load: the Rust tokenizer releases the GIL, and
    loading is mostly Python importing the model's code.
    """
    check_hookpoint(load_config(model), hook, name=model)
    tokenizer = load_tokenizer(model)
    documents = open_corpus(corpus)
    with ThreadPoolExecutor(max_workers=1) as worker:
        contexts = worker.submit(
            build_contexts,
            documents.documents(),
            tokenizer,
            context_length=context_length,
            n_contexts=contexts_needed(tokens, context_length),
            seed=seed,
            corpus_name=corpus,
        )
        lm = load_lm(model, device=device, tokenizer=tokenizer)
        return StreamSource(
            lm, contexts.result(), corpus=documents, hook=hook, chunk_contexts=chunk_contexts
        )


class StreamSource:
    """Contexts cut from a corpus and run through the model chunk by chunk, nothing cached."""

    def __init__(
        self,
        lm: LanguageModel,
        contexts: Contexts,
        *,
        corpus: Corpus,
        hook: HookPoint,
        chunk_contexts: int = CHUNK_CONTEXTS,
        forward_batch: int = 32,
    ) -> None:
        self.lm, self.hook, self.forward_batch = lm, hook, forward_batch
        self.per_chunk = chunk_contexts
        self.token_ids = contexts.token_ids
        self.n_contexts = len(contexts.token_ids)
        self._documents = np.asarray(contexts.documents, dtype=object)  # doc_id of each read
        self._doc_index = contexts.doc_index  # (N,) into _documents
        self._starts = np.asarray(contexts.start, np.int64)
        self.special_ids = np.asarray(sorted(set(lm.tokenizer.all_special_ids)), np.int64)
        self.excluded_ids = np.zeros(0, np.int64)
        self.provenance = Provenance(
            model=lm.name,
            layer=hook.layer,
            hook=hook.description,
            corpus=corpus.describe(),
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
        return first, self.forward(slice(first, first + self.per_chunk))  # (C, T-1, d)

    def forward(self, rows: slice | np.ndarray) -> torch.Tensor:
        """Float32 activations (C, T-1, d) on the CPU of the contexts `rows` (in that order),
        positions 1.. only; the model runs over `forward_batch` contexts at a time."""
        ids = torch.from_numpy(np.asarray(self.token_ids[rows])).long()  # (C, T)
        parts = [
            after_position_0(read_hookpoint(self.lm, batch, self.hook)).float().cpu()
            for batch in ids.split(self.forward_batch)
        ]
        return torch.cat(parts)  # (C, T-1, d)

    def median_norm(self) -> float:
        """Median norm over the first chunk: every rank computes the same number."""
        if self._median is None:
            _, acts = self.chunk(0)
            self._median = float(acts.float().norm(dim=-1).median())
        return self._median

    def context_table(self, context_ids: np.ndarray) -> pa.Table:
        doc_ids = self._documents[self._doc_index[context_ids]]
        return pa.table(
            {
                "context_id": pa.array(context_ids, pa.int64()),
                "doc_id": pa.array(doc_ids.tolist(), pa.string()),
                "start": pa.array(self._starts[context_ids], pa.int64()),
            }
        )
