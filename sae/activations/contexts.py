"""Split a corpus into fixed-length token contexts, shuffled deterministically.

Documents are tokenized without special tokens, joined into one stream with the tokenizer's
end-of-sequence token between them (so short documents are not lost), and cut into contexts of
`context_length` tokens. Each context remembers the document its first token belongs to and
that token's offset in it. The contexts are shuffled by seed and the first ones kept, so a small
harvest samples the whole corpus rather than its first files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from sae.activations.corpus import Document
from sae.errors import AtlasError

TOKENIZE_BATCH = 64  # documents per tokenizer call (the Rust tokenizer parallelises a batch)
MIN_POOL_TOKENS = 1 << 20  # read at least this much of a corpus (about a third of pydocs)


@dataclass
class Contexts:
    """Fixed-length token contexts with their provenance."""

    token_ids: np.ndarray  # (N, T) int32
    doc_index: np.ndarray  # (N,) int32, into `documents`
    start: np.ndarray  # (N,) int64, offset of the first token within its document
    documents: list[str]  # doc_id of every document read

    def __len__(self) -> int:
        return len(self.token_ids)


def contexts_needed(n_tokens: int, context_length: int) -> int:
    """Contexts needed for `n_tokens` activations when position 0 of each is excluded."""
    return math.ceil(n_tokens / (context_length - 1))


def build_contexts(
    documents: Iterable[Document],
    tokenizer: Any,
    *,
    context_length: int,
    n_contexts: int,
    seed: int,
    pool_factor: int = 20,
    corpus_name: str = "corpus",
) -> Contexts:
    """Tokenize, pack and shuffle; keep `n_contexts` (fewer if the corpus is smaller).

    The pool drawn from is the whole corpus, capped at `pool_factor * n_contexts` contexts (and
    at least MIN_POOL_TOKENS tokens) so a huge or streamed corpus is not read to its end.
    """
    separator = tokenizer.eos_token_id
    max_pool_tokens = max(pool_factor * n_contexts * context_length, MIN_POOL_TOKENS)
    stream: list[np.ndarray] = []  # token chunks, separators included
    owner: list[np.ndarray] = []  # (len,) document index of every token
    offset: list[np.ndarray] = []  # (len,) position of every token within its document
    documents_read: list[str] = []
    n_tokens = 0
    for batch in _batched(documents, TOKENIZE_BATCH):
        encoded = encode_texts(tokenizer, [doc.text for doc in batch])
        for doc, ids in zip(batch, encoded, strict=True):
            if not ids:
                continue
            doc_index = len(documents_read)
            documents_read.append(doc.doc_id)
            tokens = np.asarray([*ids, separator] if separator is not None else ids, np.int32)
            stream.append(tokens)
            owner.append(np.full(len(tokens), doc_index, np.int32))
            offset.append(np.arange(len(tokens), dtype=np.int64))
            n_tokens += len(tokens)
        if n_tokens >= max_pool_tokens:
            break
    n_available = n_tokens // context_length
    if n_available == 0:
        raise AtlasError(
            f"corpus {corpus_name!r} is empty or too short: {n_tokens} tokens, "
            f"fewer than one context of {context_length}"
        )
    keep = n_available * context_length
    all_tokens = np.concatenate(stream)[:keep].reshape(n_available, context_length)
    first_owner = np.concatenate(owner)[:keep:context_length]
    first_offset = np.concatenate(offset)[:keep:context_length]
    order = np.random.default_rng(seed).permutation(n_available)[:n_contexts]
    return Contexts(
        token_ids=np.ascontiguousarray(all_tokens[order]),
        doc_index=first_owner[order],
        start=first_offset[order],
        documents=documents_read,
    )


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, no special tokens added: `tokenizer(texts, ...)["input_ids"]`.

    A fast tokenizer is asked for the ids alone (`encode_batch_fast` of its Rust backend skips
    the offsets that call computes and drops), when its backend is set up as that call would
    set it: no padding, no truncation, special tokens split or not as the tokenizer says.
    """
    backend: Any = tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    as_the_call_sets_it = (
        backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == split_special
    )
    if not as_the_call_sets_it:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _batched(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
