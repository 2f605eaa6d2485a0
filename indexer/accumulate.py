"""Per-latent accumulators of fixed size that see the corpus once and merge exactly.

`indexer build` encodes the activations chunk by chunk (a chunk = whole contexts) and feeds each
chunk's sparse codes to `Accumulators.update`. Nothing here grows with the corpus:
- `LatentStats`: counts, sums, maxima and log-spaced histograms, (n,) and (n, bins) arrays;
- `Reservoir`: for every latent, the best `capacity` (latent, context) pairs under an order —
  the largest activation for top examples, the smallest hash for a uniform sample of the
  contexts it fires in (bottom-k sampling), from which rank-quantile bands are cut at the end;
- `TokenSampler`: every token's code in a fixed, hash-chosen share of the contexts, for
  co-activation, token tables and the explanations (an `explain.TokenSample` at the end).
Each merges with another built on other chunks to exactly what one pass over both would give
(ties broken by context id; hashes depend only on ids), so sharded builds equal single ones.

A latent shard (indexer/shards.py) keeps the first three for its slice of latents only, with
ids counted from the slice's first latent, and the token sample whole (every latent's code:
co-activation partners and n-gram matches need them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from indexer.fires import Chunk, ContextPairs
from indexer.hashing import held_out, in_token_sample, pair_hash
from indexer.reservoir import Reservoir
from indexer.shards import LatentSlice
from sae.codes import widened
from sae.explain import TokenSample

HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_PER_DECADE = -4.0, 4.0, 20
HIST_BINS = int((HIST_LOG10_MAX - HIST_LOG10_MIN) * HIST_PER_DECADE)


@dataclass
class LatentStats:
    """Exact per-latent counts, sums, maxima and activation histograms."""

    n_latents: int
    n_tokens: int = 0
    n_sink_tokens: int = 0
    n_fires: np.ndarray = field(init=False)
    n_contexts: np.ndarray = field(init=False)
    activation_sum: np.ndarray = field(init=False)
    activation_max: np.ndarray = field(init=False)
    special_fires: np.ndarray = field(init=False)
    repeat_fires: np.ndarray = field(init=False)
    histogram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = self.n_latents
        self.n_fires, self.n_contexts = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.activation_sum, self.activation_max = np.zeros(n), np.zeros(n, np.float32)
        self.special_fires, self.repeat_fires = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.histogram = np.zeros((n, HIST_BINS), np.int64)

    def update(self, chunk: Chunk, fires: ContextPairs, *, special_ids: np.ndarray) -> None:
        n, lat, act = self.n_latents, fires.latent, fires.activation
        self.n_fires += np.bincount(lat, minlength=n)
        self.n_contexts += np.bincount(fires.pair_latent, minlength=n)
        self.activation_sum += np.bincount(lat, weights=act, minlength=n)
        self.activation_max = np.maximum(
            self.activation_max,
            torch.zeros(n)
            .scatter_reduce(0, torch.from_numpy(lat), torch.from_numpy(act), "amax")
            .numpy(),
        )
        bins = histogram_bins(act)
        self.histogram += np.bincount(lat * HIST_BINS + bins, minlength=n * HIST_BINS).reshape(
            n, HIST_BINS
        )
        tokens = chunk.token_ids[:, 1:].reshape(-1)[fires.flat]  # (E,) the firing tokens
        previous = chunk.token_ids[:, :-1].reshape(-1)[fires.flat]
        self.special_fires += np.bincount(lat[np.isin(tokens, special_ids)], minlength=n)
        self.repeat_fires += np.bincount(lat[tokens == previous], minlength=n)

    def merge(self, other: LatentStats) -> None:
        self.n_tokens += other.n_tokens
        self.n_sink_tokens += other.n_sink_tokens
        for name in ("n_fires", "n_contexts", "activation_sum", "special_fires", "repeat_fires"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.histogram += other.histogram
        self.activation_max = np.maximum(self.activation_max, other.activation_max)


def histogram_bins(activations: np.ndarray) -> np.ndarray:
    """Log-spaced bin of each activation; out-of-range values go to the first or last bin."""
    log = np.log10(np.maximum(activations, 1e-30))
    bins = np.floor((log - HIST_LOG10_MIN) * HIST_PER_DECADE).astype(np.int64)
    return np.clip(bins, 0, HIST_BINS - 1)


def histogram_edges() -> np.ndarray:
    return 10.0 ** np.linspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)


@dataclass
class TokenSampler:
    """Collects every token's sparse code in the contexts whose hash falls in a fixed share:
    O(fraction x tokens x k), which `indexer build` keeps near `--token-sample` tokens."""

    fraction: float  # share of contexts kept
    context_ids: list[np.ndarray] = field(default_factory=list)
    token_ids: list[np.ndarray] = field(default_factory=list)
    activations: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)

    def update(self, chunk: Chunk) -> None:
        ids = chunk.first_context + np.arange(len(chunk.token_ids))
        keep = in_token_sample(ids, self.fraction)
        if keep.any():
            self.context_ids.append(ids[keep])
            self.token_ids.append(chunk.token_ids[keep].astype(np.int32))
            self.activations.append(chunk.activations[keep].astype(np.float32))
            self.indices.append(chunk.indices[keep].astype(np.int32))

    def merge(self, other: TokenSampler) -> None:
        for name in ("context_ids", "token_ids", "activations", "indices"):
            getattr(self, name).extend(getattr(other, name))

    def sample(self, *, held_out_fraction: float) -> TokenSample:
        """The contexts collected, by context id, with a hash-chosen `held_out_fraction` of
        them reserved for scoring explanations."""
        if not self.context_ids:
            raise ValueError("the token sample is empty")
        ids = np.concatenate(self.context_ids)
        order = np.argsort(ids, kind="stable")
        return TokenSample(
            token_ids=np.concatenate(self.token_ids)[order],
            indices=np.concatenate(widened(self.indices))[order],  # chunks' widths may differ
            activations=np.concatenate(widened(self.activations))[order],
            held_out=held_out(ids[order], held_out_fraction),
        )


@dataclass
class Accumulators:
    """Everything `indexer build` keeps while it reads the corpus once."""

    stats: LatentStats
    top: Reservoir  # strongest contexts of each latent
    sample: Reservoir  # uniform sample of the contexts each latent fires in
    tokens: TokenSampler
    special_ids: np.ndarray
    latents: LatentSlice  # the latents kept (all but in a latent shard)

    @classmethod
    def create(
        cls,
        *,
        latents: LatentSlice,
        positions: int,
        top_examples: int,
        quantile_sample: int,
        sample_fraction: float,
        special_ids: np.ndarray,
    ) -> Accumulators:
        n = latents.size
        return cls(
            stats=LatentStats(n),
            top=Reservoir(n, top_examples, positions, "strongest"),
            sample=Reservoir(n, quantile_sample, positions, "hash"),
            tokens=TokenSampler(sample_fraction),
            special_ids=special_ids,
            latents=latents,
        )

    def update(self, chunk: Chunk, *, n_tokens: int, n_sink_tokens: int) -> None:
        mine = _of_slice(chunk, self.latents)
        fires = ContextPairs.of(mine, self.stats.n_latents)
        self.stats.n_tokens += n_tokens
        self.stats.n_sink_tokens += n_sink_tokens
        self.stats.update(mine, fires, special_ids=self.special_ids)
        self.top.offer(fires, -fires.pair_max)
        latent = fires.pair_latent + self.latents.first  # hashes of the SAE's own latent ids
        self.sample.offer(fires, pair_hash(latent, fires.pair_context))
        self.tokens.update(chunk)

    def examples_bytes(self) -> int:
        """The memory of the examples kept so far (the part that depends on the data)."""
        return self.top.nbytes() + self.sample.nbytes()

    def merge(self, other: Accumulators) -> None:
        if other.latents != self.latents:
            raise ValueError(f"accumulators of latents {other.latents} and {self.latents}")
        self.stats.merge(other.stats)
        self.top.merge(other.top)
        self.sample.merge(other.sample)
        self.tokens.merge(other.tokens)


def _of_slice(chunk: Chunk, latents: LatentSlice) -> Chunk:
    """The chunk's codes of the slice's latents only, ids counted from its first latent: the
    other slots silent (activation 0, so `sae.codes.fired` skips them, order kept)."""
    if latents.is_every:
        return chunk
    inside = (chunk.indices >= latents.first) & (chunk.indices < latents.stop)  # (C, T-1, k)
    return Chunk(
        first_context=chunk.first_context,
        token_ids=chunk.token_ids,
        activations=np.where(inside, chunk.activations, np.float32(0)),
        indices=np.where(inside, chunk.indices - latents.first, 0),
    )
