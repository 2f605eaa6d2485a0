"""Settings of `indexer build`: every field is a command-line flag with its help text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from indexer.shards import parse_shard
from sae.activations.hookpoints import chosen_hookpoint
from sae.config import check_field_types


@dataclass
class BuildConfig:
    """What to index and how much of each latent's dashboard to keep."""

    sae: str = field(metadata={"help": "the SAE: our folder, SAELens, sparsify or OpenAI file"})
    out: str = field(
        metadata={
            "help": "the DuckDB file to write: a new path, or an index written before (replaced "
            "only when complete); never a file of another kind, nor inside the SAE or cache"
        }
    )
    acts: str | None = field(
        default=None,
        metadata={"help": "activation cache from `sae harvest`; without it the model is run"},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "the LM for logit effects, token texts and (without --acts) activations; "
            "default: the cache's model, or 'default' (SmolLM2-135M)"
        },
    )
    corpus: str = field(
        default="pydocs", metadata={"help": "corpus to run the model on when there is no --acts"}
    )
    layer: int | None = field(
        default=None, metadata={"help": "layer without --acts (default: the SAE's own layer)"}
    )
    hook: str = field(
        default="",
        metadata={
            "help": "hook point without --acts, by its SAELens or sparsify name (default: the "
            "SAE's own, else the residual stream after --layer)"
        },
    )
    tokens: int = field(
        default=0,
        metadata={
            "help": "activations to index: with --acts, the first N of the cache (0 = all); "
            "without, N from the corpus (0 = 200,000)"
        },
    )
    context_length: int = field(default=64, metadata={"help": "tokens per context, without --acts"})
    seed: int = field(default=0, metadata={"help": "context shuffle seed, without --acts"})
    top_examples: int = field(default=20, metadata={"help": "strongest contexts kept per latent"})
    quantile_bands: int = field(default=10, metadata={"help": "rank-quantile bands per latent"})
    examples_per_band: int = field(default=5, metadata={"help": "contexts shown per band"})
    quantile_sample: int = field(
        default=100,
        metadata={"help": "contexts each latent fires in, sampled uniformly, to cut bands from"},
    )
    token_sample: int = field(
        default=262_144,
        metadata={
            "help": "tokens (whole contexts, chosen by hash) whose codes are kept for "
            "co-activation, token tables and explanations; all of them in smaller corpora"
        },
    )
    held_out: float = field(
        default=0.2,
        metadata={"help": "share of the token sample reserved to score explanations"},
    )
    neighbours: int = field(default=10, metadata={"help": "nearest latents by decoder cosine"})
    coactive: int = field(default=10, metadata={"help": "most co-active latents kept"})
    logit_tokens: int = field(default=10, metadata={"help": "promoted and suppressed tokens"})
    top_tokens: int = field(default=10, metadata={"help": "tokens per latent, latents per token"})
    explanation_patterns: int = field(default=3, metadata={"help": "n-grams per explanation"})
    max_norm_ratio: float = field(
        default=10.0,
        metadata={
            "help": "for SAEs that do not record it: tokens with a norm above this multiple "
            "of the median (attention sinks) are not encoded (0: encode everything)"
        },
    )
    batch_tokens: int = field(default=8192, metadata={"help": "tokens encoded at once"})
    chunk_contexts: int = field(
        default=1024, metadata={"help": "contexts per chunk when running the model"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device for the SAE and the LM"})
    memory_budget: float = field(
        default=0.0,
        metadata={
            "help": "GiB the build may hold; it stops with the figures when it would need more "
            "(0: half of this machine's RAM)"
        },
    )
    latent_shard: str = field(
        default="",
        metadata={
            "help": "I/N: build shard I (from 0) of N: read every token but keep only the "
            "latents [I*n/N, (I+1)*n/N), and write a shard file for `indexer merge`; "
            "empty: every latent, an index"
        },
    )
    shard_by: Literal["data", "latents"] = field(
        default="data",
        metadata={
            "help": "under torchrun: 'data': each rank reads a slice of the chunks and rank 0 "
            "merges the accumulators; 'latents': each rank reads every chunk, builds the shard "
            "of its rank (as --latent-shard RANK/WORLD) and rank 0 merges the shards"
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.hook:
            chosen_hookpoint(self.hook, 0)  # a name that is no hook point: the ValueError now
        positive = (
            "top_examples",
            "quantile_bands",
            "examples_per_band",
            "quantile_sample",
            "token_sample",
            "batch_tokens",
            "chunk_contexts",
            "context_length",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("tokens", "neighbours", "coactive", "logit_tokens", "top_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.quantile_sample < self.quantile_bands:
            raise ValueError(
                f"quantile_sample ({self.quantile_sample}) must be at least quantile_bands "
                f"({self.quantile_bands})"
            )
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out must be between 0 and 1, got {self.held_out}")
        if self.memory_budget < 0:
            raise ValueError(f"memory_budget must not be negative, got {self.memory_budget}")
        if self.max_norm_ratio < 0:
            raise ValueError(f"max_norm_ratio must not be negative, got {self.max_norm_ratio}")
        if self.latent_shard:
            parse_shard(self.latent_shard)
        if not 1 <= self.explanation_patterns <= 10:
            raise ValueError(
                f"explanation_patterns must be between 1 and 10, got {self.explanation_patterns}"
            )
