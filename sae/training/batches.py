"""Shuffled batches of activations from a cache, in an order that can be resumed exactly.

Consecutive activations of one context are highly correlated, so training wants tokens mixed
across contexts. Shards are visited in a seeded order per epoch and pooled into groups of about
`shuffle_tokens` tokens; each group is shuffled by a seeded permutation. The stream of tokens is
therefore a pure function of (seed, epoch), and resuming at token t only needs to skip the groups
before t — without reading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae.activations.cache import ActivationCache
from sae.errors import AtlasError
from sae.sinks import is_read, sink_limit


def valid_norms(cache: ActivationCache, max_norm_ratio: float) -> np.ndarray:
    """(N, T-1) True where a token is not an attention sink: its norm is at most the sink
    limit, `max_norm_ratio` times the median (sae/sinks.py; 0 keeps every token).

    Besides position 0, a few tokens act as attention sinks with norms ~100x the median. Left
    in, they dominate the batch variance (and so the normalised MSE) while saying nothing about
    the features we want; so, like position 0, they are left out.
    """
    limit = sink_limit(max_norm_ratio, cache.median_norm())
    return is_read(cache.norms(), limit).numpy()  # (N, T-1), from the norms the cache stores


@dataclass(frozen=True)
class Group:
    """Shards pooled and shuffled together."""

    shards: tuple[int, ...]
    n_tokens: int


class ShuffledTokens:
    """Batches (B, d) of activations from a cache, epoch after epoch, resumable by token offset."""

    def __init__(
        self,
        cache: ActivationCache,
        *,
        batch_size: int,
        shuffle_tokens: int = 1 << 18,
        seed: int = 0,
        max_norm_ratio: float = 0.0,
    ) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle_tokens = shuffle_tokens
        self.seed = seed
        self._valid = self._valid_positions()  # (N, T-1) bool
        if max_norm_ratio > 0:
            self._valid &= valid_norms(cache, max_norm_ratio)
        self._shard_tokens = self._tokens_per_shard()
        self.tokens_per_epoch = int(sum(self._shard_tokens))
        if self.tokens_per_epoch == 0:
            raise AtlasError(f"{cache.root}: no activations left to train on after exclusions")

    def _valid_positions(self) -> np.ndarray:
        """Positions kept for training: all of 1..T-1 except excluded (special) tokens."""
        tokens = self.cache.token_ids()[:, 1:]  # (N, T-1)
        excluded = self.cache.manifest.get("excluded_token_ids") or []
        return ~np.isin(tokens, np.asarray(excluded, dtype=np.int32))

    def _tokens_per_shard(self) -> list[int]:
        per_shard = int(self.cache.manifest["shard_contexts"])
        return [
            int(self._valid[i * per_shard : (i + 1) * per_shard].sum())
            for i in range(self.cache.n_shards)
        ]

    def groups(self, epoch: int) -> list[Group]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.cache.n_shards)
        groups, current, size = [], [], 0
        for shard in order.tolist():
            current.append(shard)
            size += self._shard_tokens[shard]
            if size >= self.shuffle_tokens:
                groups.append(Group(tuple(current), size))
                current, size = [], 0
        if current:
            groups.append(Group(tuple(current), size))
        return groups

    def _group_tokens(self, group: Group, epoch: int, index: int) -> Tensor:
        per_shard = int(self.cache.manifest["shard_contexts"])
        parts = []
        for shard in group.shards:
            first, acts = self.cache.shard(shard)  # (C, T-1, d)
            valid = torch.from_numpy(self._valid[first : first + per_shard][: len(acts)])
            parts.append(acts[valid])  # (tokens, d)
        pooled = torch.cat(parts)  # (tokens, d)
        order = np.random.default_rng([self.seed, epoch, index]).permutation(len(pooled))
        return pooled[torch.from_numpy(order)]

    def state(self) -> dict[str, Any]:
        """Nothing to remember: a cache resumes from the token offset alone."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def batches(self, *, start_token: int = 0) -> Iterator[Tensor]:
        """Endless (B, d) batches in storage dtype, beginning at global token `start_token`."""
        epoch, skip = divmod(start_token, self.tokens_per_epoch)

        def sources(epoch: int) -> list[GroupSource]:
            return [
                GroupSource(group.n_tokens, partial(self._group_tokens, group, epoch, index))
                for index, group in enumerate(self.groups(epoch))
            ]

        return batches_from_groups(
            sources, batch_size=self.batch_size, start_token=skip, first_epoch=epoch
        )


class GroupSource(NamedTuple):
    """One shuffled group of a token stream, loaded only when needed."""

    n_tokens: int | None
    """Tokens in the group, or None when unknown until it is loaded."""
    load: Callable[[], Tensor]
    """Its tokens (n, d), already shuffled."""


def batches_from_groups(
    sources: Callable[[int], Iterable[GroupSource]],
    *,
    batch_size: int,
    start_token: int,
    first_epoch: int = 0,
) -> Iterator[Tensor]:
    """Cut the concatenated groups of successive epochs into (B, d) batches.

    Batch i is tokens [i*B, (i+1)*B) of the stream, so starting at token t = i*B gives exactly
    the batches an uninterrupted run would have seen from batch i on. Groups whose size is
    known are skipped without loading them.
    """
    skip, carry, epoch = start_token, None, first_epoch
    while True:
        epoch_tokens = 0
        for group in sources(epoch):
            if group.n_tokens is not None and skip >= group.n_tokens:
                skip -= group.n_tokens  # resuming: consumed before, not even loaded
                epoch_tokens += group.n_tokens
                continue
            tokens = group.load()
            epoch_tokens += len(tokens)
            if skip >= len(tokens):
                skip -= len(tokens)
                continue
            tokens = tokens[skip:] if carry is None else torch.cat([carry, tokens[skip:]])
            skip = 0
            n_full = len(tokens) // batch_size * batch_size
            if n_full:  # a group smaller than a batch waits for the next (split(0 rows) = [empty])
                yield from tokens[:n_full].split(batch_size)
            carry = tokens[n_full:] if n_full < len(tokens) else None
        if epoch_tokens == 0:  # waiting for a full batch would never end
            raise AtlasError("no activations to train on: a whole epoch of the data is empty")
        epoch += 1
