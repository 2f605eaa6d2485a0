"""Training batches computed from the model on the fly, for corpora too large to cache.

The contexts (token ids only) are built up front; each epoch visits them in a seeded order, in
groups of about `shuffle_tokens` tokens, and each group is run through the model up to the
hooked block, filtered like a cache (position 0 and attention-sink tokens left out) and
shuffled. Group sizes are remembered, and saved in checkpoints, so a resumed run skips the
groups it has consumed without running the model on them again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae.activations.lm import LanguageModel, residual_stream
from sae.training.batches import GroupSource, batches_from_groups


class StreamedTokens:
    """(B, d) batches of activations straight from the model, resumable by token offset."""

    def __init__(
        self,
        lm: LanguageModel,
        token_ids: np.ndarray,
        *,
        layer: int,
        batch_size: int,
        shuffle_tokens: int,
        seed: int,
        max_norm_ratio: float,
        forward_batch: int = 32,
    ) -> None:
        self.lm, self.token_ids, self.layer = lm, token_ids, layer  # token_ids (N, T)
        self.batch_size, self.seed, self.max_norm_ratio = batch_size, seed, max_norm_ratio
        self.forward_batch = forward_batch
        positions = token_ids.shape[1] - 1
        self.group_contexts = max(1, math.ceil(shuffle_tokens / positions))
        self.n_groups = math.ceil(len(token_ids) / self.group_contexts)
        self.counts: dict[str, int] = {}  # "epoch:group" -> tokens kept
        self.reference_norm: float | None = None
        self._last: tuple[tuple[int, int], Tensor] | None = None  # the latest group's forward

    @property
    def d_model(self) -> int:
        return self.lm.d_model

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
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.token_ids))
        rows = order[group * self.group_contexts : (group + 1) * self.group_contexts]
        ids = torch.from_numpy(np.asarray(self.token_ids[np.sort(rows)])).long()  # (G, T)
        parts = [
            residual_stream(self.lm, chunk, self.layer)[:, 1:].float()
            for chunk in ids.split(self.forward_batch)
        ]
        acts = torch.cat(parts).flatten(0, 1).cpu()  # (G * (T-1), d)
        self._last = ((epoch, group), acts)
        return acts

    def _group_tokens(self, epoch: int, group: int) -> Tensor:
        acts = self._activations(epoch, group)  # (tokens, d)
        if self.max_norm_ratio > 0:
            acts = acts[acts.norm(dim=-1) <= self.max_norm_ratio * self.median_norm()]
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
