"""`sae eval`: how well an SAE reconstructs, and what its reconstruction costs the model.

Metrics on held-out contexts (contexts of the same corpus that are not in the cache):
- nmse: squared error over the variance of the inputs (the training loss's quantity);
- explained variance: 1 - Var(x - x̂) / Var(x), per dimension, summed;
- L0: mean number of active latents per token; dead fraction: latents that never fired;
- downstream (the paper's §4.1): the model's next-token loss when the layer's output is replaced
  by the SAE's reconstruction, next to the loss with the layer zero- and mean-ablated, and the
  KL divergence of the spliced model's next-token distribution from the clean one;
- with `quality` on, the feature-quality metrics of quality.py: explanation precision and
  recall, the probe score, ablation sparsity.
Attention sinks — position 0, and tokens whose norm is far above the median (the SAE's
`max_norm_ratio`) — are never replaced and not scored: the SAE was not trained on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae.activations.cache import ActivationCache
from sae.activations.contexts import build_contexts
from sae.activations.corpus import open_corpus
from sae.activations.hookpoints import (
    HookPoint,
    check_trained_on,
    logits_with,
    next_token_loss_of,
    recorded_hookpoint,
)
from sae.activations.lm import LanguageModel, load_lm, vocab_size, vocabulary
from sae.codes import is_firing
from sae.config import check_field_types
from sae.errors import AtlasError
from sae.evaluation.quality import (
    ablation_sparsity,
    encode_sample,
    explanation_quality,
    load_code_sample,
    probe_quality,
    rare_fraction,
)
from sae.files import write_json
from sae.model import SparseAutoencoder
from sae.sinks import after_position_0, sink_mask, without_sinks


@dataclass
class EvalConfig:
    """Settings of `sae eval`. Field help texts become `sae eval --help`."""

    sae: str = field(metadata={"help": "SAE folder (ours, SAELens, sparsify or OpenAI)"})
    acts: str = field(metadata={"help": "the activation cache the SAE was trained on"})
    contexts: int = field(default=64, metadata={"help": "held-out contexts to evaluate on"})
    batch_size: int = field(default=16, metadata={"help": "contexts per forward pass"})
    quality: bool = field(
        default=True,
        metadata={
            "help": "also explanations, probes and ablation sparsity (sae/evaluation/quality.py)"
        },
    )
    sample_contexts: int = field(
        default=1024, metadata={"help": "cached contexts for explanations and probes"}
    )
    ablation_positions: int = field(
        default=4, metadata={"help": "positions whose active latents are ablated one by one"}
    )
    json: bool = field(default=False, metadata={"help": "print the result as JSON"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("contexts", "batch_size", "sample_contexts", "ablation_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class EvalResult:
    """The numbers `sae eval` reports."""

    nmse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    loss_clean: float
    loss_sae: float
    loss_zero_ablation: float
    loss_mean_ablation: float
    delta_loss: float
    delta_loss_zero_ablation: float
    delta_loss_mean_ablation: float
    kl: float
    """Mean KL(clean || spliced) of the next-token distributions, nats per token."""
    n_tokens: int
    n_contexts: int
    explanation_precision: float | None = None
    explanation_recall: float | None = None
    explained_fraction: float | None = None
    rare_fraction: float | None = None
    """Latents firing on fewer than 1e-4 of the quality sample's tokens (never included)."""
    probe_score: float | None = None
    probe: dict[str, Any] | None = None
    ablation_sparsity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_contexts(cache: ActivationCache, tokenizer: object, n: int) -> Tensor:
    """Contexts of the cache's corpus that the cache does not contain: (n, T) token ids."""
    manifest = cache.manifest
    settings = manifest["settings"]
    corpus = open_corpus(settings["corpus"], fetch=False)
    needed = cache.n_contexts + n
    contexts = build_contexts(
        corpus.documents(),
        tokenizer,
        context_length=cache.context_length,
        n_contexts=needed,
        seed=int(settings["seed"]),
        corpus_name=settings["corpus"],
    )
    seen = {row.tobytes() for row in np.asarray(cache.token_ids())}
    fresh = [row for row in contexts.token_ids if row.tobytes() not in seen][:n]
    if not fresh:
        raise AtlasError(
            f"corpus {settings['corpus']!r} has no contexts beyond those in the "
            f"cache {cache.root}; harvest fewer tokens to keep some held out"
        )
    return torch.from_numpy(np.stack(fresh)).long()


def mean_activation(cache: ActivationCache) -> Tensor:
    """The mean cached activation (d,): what mean-ablation substitutes."""
    total = torch.zeros(cache.d_model, dtype=torch.float64)
    count = 0
    for _, acts in cache.shards():
        total += acts.flatten(0, 1).double().sum(0)
        count += acts.shape[0] * acts.shape[1]
    return (total / max(count, 1)).float()


def _splice(values: Callable[[Tensor], Tensor], limit: float) -> Callable[[Tensor], Tensor]:
    """Replace a block's output (B, T, d) by `values` except at attention sinks.

    Sinks are position 0 and any token whose norm exceeds `limit`: the SAE was not trained on
    them, so every variant (SAE, zero, mean) keeps them as the model computed them.
    """

    def replace(hidden: Tensor) -> Tensor:
        sink = sink_mask(hidden, limit)  # (B, T)
        return torch.where(sink[..., None], hidden, values(hidden).to(hidden.dtype))

    return replace


def _recorder(store: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """A 'replacement' that keeps the block output unchanged and records it."""

    def record(hidden: Tensor) -> Tensor:
        store.append(hidden)
        return hidden

    return record


class CleanBatch(NamedTuple):
    """The model's own pass over one batch of held-out contexts; it does not depend on the SAE."""

    token_ids: Tensor  # (b, T)
    hidden: Tensor  # (b, T, d): the output of the SAE's block
    logits: Tensor  # (b, T, V)
    loss: float  # mean next-token loss of the batch


@torch.no_grad()
def clean_pass(
    lm: LanguageModel, token_ids: Tensor, *, hook: HookPoint, batch_size: int
) -> list[CleanBatch]:
    """Run the model on held-out contexts (N, T) in batches, keeping what evaluate() reads."""
    batches = []
    for batch in token_ids.split(batch_size):
        seen: list[Tensor] = []  # the activation at the hook point, read on the way through
        logits = logits_with(lm, batch, hook=hook, replace=_recorder(seen))  # (b, T, V)
        batches.append(CleanBatch(batch, seen[0], logits, float(next_token_loss_of(logits, batch))))
    return batches


@torch.no_grad()
def evaluate(
    model: SparseAutoencoder,
    lm: LanguageModel,
    cache: ActivationCache,
    token_ids: Tensor,
    *,
    batch_size: int = 16,
    ablations: tuple[float, float] | None = None,
    clean: list[CleanBatch] | None = None,
) -> EvalResult:
    """All metrics on the given held-out contexts (N, T).

    What does not depend on the SAE can come from an earlier evaluation on the same contexts:
    `ablations`, the (zero, mean) ablation losses with the same sink limit, and `clean`, the
    model's own pass (clean_pass). A sweep computes them once and runs one LM forward per SAE
    instead of four.
    """
    hook, mean = cache.hook_point, mean_activation(cache).to(lm.device)
    limit = model.cfg.sink_limit
    losses = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0}
    variants: dict[str, Callable[[Tensor], Tensor]] = {
        "sae": lambda h: model.reconstruct(h.flatten(0, 1).float()).sae_out.view_as(h),
    }
    if ablations is None:
        variants["zero"] = torch.zeros_like
        variants["mean"] = lambda h: mean.expand_as(h)
    xs, errs, l0, kl = [], [], 0.0, 0.0
    fired = torch.zeros(model.cfg.n_latents, dtype=torch.bool)
    if clean is None:
        clean = clean_pass(lm, token_ids, hook=hook, batch_size=batch_size)
    for batch, hidden, clean_logits, clean_loss in clean:
        losses["clean"] += len(batch) * clean_loss
        x = after_position_0(hidden).float().flatten(0, 1)  # (b*(T-1), d)
        x = without_sinks(x, limit)  # (m, d) sinks left out, as in training
        out = model.reconstruct(x.to(model.device))
        xs.append(x.cpu())
        errs.append((x - out.sae_out.to(x.device)).cpu())
        firing = is_firing(out.top_acts)  # (m, k)
        l0 += float(firing.sum())
        fired[out.top_indices[firing].cpu()] = True
        for name, values in variants.items():
            logits = logits_with(lm, batch, hook=hook, replace=_splice(values, limit))
            losses[name] += len(batch) * float(next_token_loss_of(logits, batch))
            if name == "sae":  # positions 1.. : position 0 is never replaced
                kl += float(kl_divergence(clean_logits[:, 1:], logits[:, 1:]).mean()) * len(batch)
    x_all, err_all = torch.cat(xs), torch.cat(errs)  # (N, d)
    n_tokens, n_contexts = len(x_all), len(token_ids)
    variance = (x_all - x_all.mean(0)).pow(2).sum(-1).mean()
    mean_loss = {key: value / n_contexts for key, value in losses.items()}
    if ablations is not None:
        mean_loss["zero"], mean_loss["mean"] = ablations
    return EvalResult(
        nmse=float(err_all.pow(2).sum(-1).mean() / variance),
        explained_variance=float(1 - err_all.var(0).sum() / x_all.var(0).sum()),
        l0=l0 / max(n_tokens, 1),
        dead_fraction=float((~fired).float().mean()),
        loss_clean=mean_loss["clean"],
        loss_sae=mean_loss["sae"],
        loss_zero_ablation=mean_loss["zero"],
        loss_mean_ablation=mean_loss["mean"],
        delta_loss=mean_loss["sae"] - mean_loss["clean"],
        delta_loss_zero_ablation=mean_loss["zero"] - mean_loss["clean"],
        delta_loss_mean_ablation=mean_loss["mean"] - mean_loss["clean"],
        kl=kl / n_contexts,
        n_tokens=n_tokens,
        n_contexts=n_contexts,
    )


def kl_divergence(reference: Tensor, other: Tensor) -> Tensor:
    """KL(softmax(reference) || softmax(other)) over the last axis, (..., V) -> (...)."""
    log_p = reference.float().log_softmax(-1)
    log_q = other.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class Evaluator:
    """`sae eval` on one cache, for one SAE or a sweep of them: the LM, the held-out contexts
    and the zero- and mean-ablation losses (per sink limit) do not depend on the SAE, so they
    are loaded and computed once."""

    def __init__(
        self,
        acts: str,
        *,
        contexts: int,
        batch_size: int = 16,
        device: str = "cpu",
        quality: Quality | None = None,
    ) -> None:
        self.acts, self.batch_size, self.device = acts, batch_size, device
        self.cache = ActivationCache(acts)
        manifest = self.cache.manifest
        self.lm = load_lm(
            manifest["model"], dtype=manifest["settings"]["model_dtype"], device=device
        )
        self.token_ids = held_out_contexts(self.cache, self.lm.tokenizer, contexts)
        self.ablations: dict[float, tuple[float, float]] = {}
        self.clean: list[CleanBatch] | None = None  # the model's own pass, once
        self.hidden = torch.empty(0)  # its block outputs (N, T, d), with it
        self.quality = quality
        if quality is not None:
            self.sample = load_code_sample(self.cache, quality.sample_contexts)
            self.vocab, _ = vocabulary(self.lm, vocab_size(self.lm))

    def __call__(
        self, sae_path: str | Path, *, model: SparseAutoencoder | None = None
    ) -> EvalResult:
        """Evaluate the SAE at `sae_path` (or `model`, already loaded from it); record the
        result beside our SAE's weights."""
        from sae.formats import load

        if model is None:
            model = load(str(sae_path), device=self.device)
        model.eval()
        check_fits(model, self.cache, sae=str(sae_path), acts=self.acts)
        limit = model.cfg.sink_limit
        if self.clean is None:
            self.clean = clean_pass(
                self.lm, self.token_ids, hook=self.cache.hook_point, batch_size=self.batch_size
            )
            self.hidden = torch.cat([batch.hidden for batch in self.clean])  # (N, T, d)
        result = evaluate(
            model,
            self.lm,
            self.cache,
            self.token_ids,
            batch_size=self.batch_size,
            ablations=self.ablations.get(limit),
            clean=self.clean,
        )
        self.ablations[limit] = (result.loss_zero_ablation, result.loss_mean_ablation)
        if self.quality is not None:
            result = dataclasses.replace(result, **self._quality(model, limit))
        record_eval(Path(sae_path), result, acts=self.acts)
        return result

    def _quality(self, model: SparseAutoencoder, limit: float) -> dict[str, Any]:
        assert self.quality is not None
        codes = encode_sample(model, self.sample, limit=limit)
        n, tokens = model.cfg.n_latents, self.sample.token_ids
        return {
            **explanation_quality(tokens, codes, vocab=self.vocab, n_latents=n),
            **probe_quality(tokens, codes, vocab=self.vocab, n_latents=n),
            "rare_fraction": rare_fraction(codes, n_latents=n),
            "ablation_sparsity": ablation_sparsity(
                model,
                self.lm,
                self.token_ids,
                self.hidden,
                hook=self.cache.hook_point,
                limit=limit,
                positions=self.quality.ablation_positions,
            ),
        }


class Quality(NamedTuple):
    """How much data the feature-quality metrics read."""

    sample_contexts: int = 1024
    """Cached contexts (the cache's last) for explanations and probes."""
    ablation_positions: int = 4
    """Held-out (context, position) pairs whose active latents are ablated one by one."""


def check_fits(model: SparseAutoencoder, cache: ActivationCache, *, sae: str, acts: str) -> None:
    """The SAE reads this cache's width and hook point, or a clear error naming both."""
    if model.cfg.d_in != cache.d_model:
        raise AtlasError(
            f"SAE {sae} has d_in {model.cfg.d_in}, but cache {acts} holds width {cache.d_model}"
        )
    trained = recorded_hookpoint(model.cfg.layer, model.cfg.hook)
    check_trained_on(trained, cache.hook_point, sae=sae, where=f"the cache {acts}")


def run_eval(cfg: EvalConfig) -> EvalResult:
    """Check the SAE against the cache before loading the LM, then evaluate it."""
    from sae.formats import load

    model = load(cfg.sae, device=cfg.device)
    check_fits(model, ActivationCache(cfg.acts), sae=cfg.sae, acts=cfg.acts)
    quality = Quality(cfg.sample_contexts, cfg.ablation_positions) if cfg.quality else None
    evaluator = Evaluator(
        cfg.acts,
        contexts=cfg.contexts,
        batch_size=cfg.batch_size,
        device=cfg.device,
        quality=quality,
    )
    return evaluator(cfg.sae, model=model)


EVAL_RECORD = "eval.json"


def record_eval(folder: Path, result: EvalResult, *, acts: str) -> None:
    """Keep the latest eval beside our SAE's weights, where `indexer build` finds it: only in
    a folder of ours (a sparsify folder has the same file names) and only over a record of ours."""
    from sae.formats import detect

    with contextlib.suppress(AtlasError, OSError):
        if detect(folder) == ("ours", folder) and not _foreign_record(folder / EVAL_RECORD):
            record = {**result.to_dict(), "acts": str(Path(acts).expanduser().resolve())}
            write_json(folder / EVAL_RECORD, record)  # a read-only folder: printed all the same


def _foreign_record(path: Path) -> bool:
    """An eval.json that this function did not write (a user's file of the same name)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        value = None
    ours = isinstance(value, dict) and "nmse" in value
    if not ours:
        logging.getLogger(__name__).warning("not replacing %s: sae eval did not write it", path)
    return not ours
