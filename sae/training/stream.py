"""Training batches computed from the model on the fly, for corpora too large to cache.

A shuffling layer over a `StreamSource` (sae/activations/source.py), which builds the contexts
(token ids only) up front and runs the model. Each epoch visits the contexts in a seeded order,
in groups of about `shuffle_tokens` tokens; each group's activations (positions 1..) are
filtered like a cache (attention sinks left out, sae/sinks.py) and shuffled. Group sizes are
remembered, and saved in checkpoints, so a resumed run skips the groups it has consumed without
running the model on them again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae.activations.source import StreamSource
from sae.sinks import sink_limit, without_sinks
from sae.training.batches import GroupSource, batches_from_groups


class StreamedTokens:
    """(B, d) batches of activations straight from the model, resumable by token offset."""

    def __init__(
        self,
        source: StreamSource,
        *,
        batch_size: int,
        shuffle_tokens: int,
        seed: int,
        max_norm_ratio: float,
    ) -> None:
        self.source = source
        self.batch_size, self.seed, self.max_norm_ratio = batch_size, seed, max_norm_ratio
        n_contexts, context_length = source.token_ids.shape  # (N, T)
        self.group_contexts = max(1, math.ceil(shuffle_tokens / (context_length - 1)))
        self.n_groups = math.ceil(n_contexts / self.group_contexts)
        self.counts: dict[str, int] = {}  # "epoch:group" -> tokens kept
        self.reference_norm: float | None = None
        self._last: tuple[tuple[int, int], Tensor] | None = None  # the latest group's forward

    @property
    def d_model(self) -> int:
        return self.source.d_model

    def median_norm(self) -> float:
        """Median activation norm of the first group: the reference for the sink filter."""
        if self.reference_norm is None:
            self.reference_norm = float(self._activations(0, 0).norm(dim=-1).median())
        return self.reference_norm

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "reference_norm": self.reference_norm}

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts.update(state.get("counts", {}))
        self.reference_norm = state.get("reference_norm", self.reference_norm)

    def _activations(self, epoch: int, group: int) -> Tensor:
        """Activations (tokens, d) of one group's contexts, positions 1.. only.

        The latest group is kept: the median norm, the initialisation sample and the first
        batches all need group 0, and the model runs over it once.
        """
        if self._last is not None and self._last[0] == (epoch, group):
            return self._last[1]
        self._last = None  # free it before the next forward: one group in memory at a time
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source.token_ids))
        rows = order[group * self.group_contexts : (group + 1) * self.group_contexts]
        acts = self.source.forward(np.sort(rows)).flatten(0, 1)  # (G * (T-1), d)
        self._last = ((epoch, group), acts)
        return acts

    def _group_tokens(self, epoch: int, group: int) -> Tensor:
        acts = self._activations(epoch, group)  # (tokens, d)
        if self.max_norm_ratio > 0:  # else every token is kept: no median (group 0) needed
            acts = without_sinks(acts, sink_limit(self.max_norm_ratio, self.median_norm()))
        self.counts[f"{epoch}:{group}"] = len(acts)
        order = np.random.default_rng([self.seed, epoch, group]).permutation(len(acts))
        return acts[torch.from_numpy(order)]

    def batches(self, *, start_token: int = 0) -> Iterator[Tensor]:
        def sources(epoch: int) -> list[GroupSource]:
            return [
                GroupSource(self.counts.get(f"{epoch}:{g}"), partial(self._group_tokens, epoch, g))
                for g in range(self.n_groups)
            ]

        return batches_from_groups(sources, batch_size=self.batch_size, start_token=start_token)
