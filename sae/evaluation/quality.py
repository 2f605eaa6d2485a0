"""The paper's feature-quality metrics beyond reconstruction (Gao et al. 2024, §4.3-4.5).

- Explanations: N2G n-gram explanations (sae/explain.py) mined on 80% of a sample of cached
  contexts and scored on the other 20%; the medians of their precision and recall.
- Probes: the best single-latent logistic probe on tasks read off the corpus (probe.py).
- Rare latents: the share firing on fewer than 1 in 10,000 tokens of that sample.
- Ablation sparsity: ablate each active latent at a position (subtract its contribution to the
  reconstruction from the real activation), run the rest of the model and take the change of
  the logits over that position and the next few, centred over the vocabulary at each position
  (adding one number to every logit changes no probability), v (positions x vocab). The effect
  is sparse when (|v|_1 / |v|_2)^2 / size(v) is small: 1/size for an effect on one logit, about
  2/pi for Gaussian noise. We report its mean over the ablations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae.activations.cache import ActivationCache
from sae.activations.hookpoints import HookPoint, logits_with
from sae.activations.lm import LanguageModel
from sae.codes import fired, is_firing, joined
from sae.evaluation.probe import probe_metric
from sae.explain import TokenSample, explain_latents
from sae.model import SparseAutoencoder
from sae.sinks import is_sink

NOISE = 1e-4  # logit changes below this share of the largest logit are rounding, not effects
HELD_OUT_EVERY = 5  # every fifth context of the sample scores the explanations (20%)
RARE = 1e-4  # a latent firing on fewer than this share of tokens counts as nearly dead


class CodeSample(NamedTuple):
    """Contexts of a cache with their activations, for the metrics that need many tokens."""

    token_ids: np.ndarray  # (S, T) int32, position 0 included
    activations: Tensor  # (S, T-1, d) as stored (float16), positions 1..T-1


class Codes(NamedTuple):
    """An SAE's codes of a CodeSample: what the explanation and probe metrics read."""

    indices: np.ndarray  # (S, T-1, m) int32
    activations: np.ndarray  # (S, T-1, m) float32; <= 0: did not fire (sinks never fire)


def load_code_sample(cache: ActivationCache, contexts: int) -> CodeSample:
    """The last `contexts` contexts of the cache (whole shards from the end, then trimmed)."""
    token_ids = np.asarray(cache.token_ids())
    parts: list[Tensor] = []
    first = cache.n_contexts
    for index in reversed(range(cache.n_shards)):
        start, acts = cache.shard(index)
        parts.insert(0, acts)
        first = start
        if cache.n_contexts - first >= contexts:
            break
    activations = torch.cat(parts)[-contexts:]  # (S, T-1, d)
    first = cache.n_contexts - len(activations)
    return CodeSample(np.ascontiguousarray(token_ids[first:]), activations)


@torch.no_grad()
def encode_sample(
    model: SparseAutoencoder, sample: CodeSample, *, limit: float, batch: int = 8192
) -> Codes:
    """Codes of every token of the sample; tokens above the sink limit fire nothing.

    An SAE without a fixed k gives codes as wide as the busiest token, every activation kept.
    """
    flat = sample.activations.flatten(0, 1)  # (N, d)
    parts = []
    for rows in flat.split(batch):
        x = rows.to(model.device, torch.float32)  # (b, d)
        acts, idx = model.encode(x, silent=is_sink(x, limit))  # (b, k): sinks fire nothing
        parts.append((acts.cpu(), idx.cpu()))
    acts_all, idx_all = joined(parts)  # (N, k)
    shape = (*sample.activations.shape[:2], idx_all.shape[-1])
    return Codes(
        idx_all.reshape(shape).numpy().astype(np.int32),
        acts_all.reshape(shape).numpy().astype(np.float32),
    )


def explanation_quality(
    token_ids: np.ndarray, codes: Codes, *, vocab: Sequence[str], n_latents: int
) -> dict[str, float | None]:
    """Medians of held-out precision and recall of the latents' N2G explanations, and the
    share of the latents firing in the sample that got one."""
    held_out = np.arange(len(token_ids)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1  # (S,)
    sample = TokenSample(token_ids, codes.indices, codes.activations, held_out)
    explanations = explain_latents(sample, n_latents=n_latents, vocab=vocab)
    firing_latents = np.unique(sample.fires.latent)
    precision = [e.precision for e in explanations if e.precision is not None]
    recall = [e.recall for e in explanations if e.recall is not None]
    return {
        "explanation_precision": float(np.median(precision)) if precision else None,
        "explanation_recall": float(np.median(recall)) if recall else None,
        "explained_fraction": (
            len(explanations) / len(firing_latents) if len(firing_latents) else None
        ),
    }


def rare_fraction(codes: Codes, *, n_latents: int) -> float:
    """Share of latents firing on fewer than RARE of the sample's tokens (never included):
    the nearly dead, which a short run's dead counter (not fired in its last quarter) misses."""
    counts = np.bincount(fired(codes.activations, codes.indices).latent, minlength=n_latents)
    tokens = codes.indices.shape[0] * codes.indices.shape[1]
    return float(np.mean(counts < RARE * tokens))


def probe_quality(
    token_ids: np.ndarray, codes: Codes, *, vocab: Sequence[str], n_latents: int
) -> dict[str, Any]:
    """The probe metric's mean score and its per-task report."""
    report = probe_metric(
        token_ids, codes.indices, codes.activations, vocab=vocab, n_latents=n_latents
    )
    return {"probe_score": report.mean_score, "probe": report.to_dict()}


def effect_sparsity(diff: Tensor) -> Tensor:
    """(|v|_1 / |v|_2)^2 / size(v) of each row of (m, size): 1/size (one logit) .. 1 (all)."""
    l1 = diff.abs().sum(-1)  # (m,)
    l2 = diff.pow(2).sum(-1).sqrt()  # (m,)
    return (l1 / l2).pow(2) / diff.shape[-1]


@torch.no_grad()
def ablation_sparsity(
    model: SparseAutoencoder,
    lm: LanguageModel,
    token_ids: Tensor,
    hidden: Tensor,
    *,
    hook: HookPoint,
    limit: float,
    positions: int = 4,
    window: int = 4,
) -> float | None:
    """Mean sparsity of the logit effects of ablating each active latent, over `positions`
    (context, position) pairs of the held-out contexts (N, T). None when nothing was active.

    `hidden` (N, T, d) is the activation at `hook` on those contexts, as the clean pass
    already has it: the model is causal, so a context cut after p + window tokens has the same
    activation on those tokens, and only the forward of the edited copies is run here."""
    scores: list[Tensor] = []
    length = token_ids.shape[1]
    for q in range(positions):
        p = min(8 * (q + 1), length - window)  # positions 8, 16, ...: past the first tokens
        c = q % len(token_ids)
        ids = token_ids[c, : p + window][None]  # (1, L)
        cut = hidden[c, : p + window].float()  # (L, d)
        if p < 1 or bool(is_sink(cut[p], limit)):
            continue  # an attention sink: the SAE does not read it
        deltas = latent_contributions(model, cut[p])  # (m, d)
        if len(deltas) == 0:
            continue
        edited = cut.expand(len(deltas) + 1, -1, -1).clone()  # (m+1, L, d)
        edited[1:, p] -= deltas.to(edited.device, edited.dtype)
        logits = logits_with(lm, ids.expand(len(edited), -1), hook=hook, replace=_constant(edited))[
            :, p:
        ].float()  # (m+1, window, V)
        diff = logits[1:] - logits[:1]  # (m, window, V)
        diff = (diff - diff.mean(-1, keepdim=True)).flatten(1)  # (m, window * V)
        # Rows of one batch can differ by rounding alone; an effect below this is noise and
        # would score as dense as noise does.
        moved = diff.abs().amax(-1) > NOISE * logits.abs().amax()
        scores.append(effect_sparsity(diff[moved]).cpu())
    values = torch.cat(scores) if scores else torch.empty(0)
    return float(values.mean()) if len(values) else None


def _constant(hidden: Tensor) -> Callable[[Tensor], Tensor]:
    """A block-output replacement that ignores what the model computed."""
    return lambda output: hidden.to(output.dtype)


def latent_contributions(model: SparseAutoencoder, x: Tensor) -> Tensor:
    """What each active latent adds to the reconstruction of one raw activation x (d,):
    x̂ - x̂ without that latent, (m, d) for the m latents with activation > 0."""
    acts, idx = model.encode(x[None].to(model.device))  # (1, k)
    active = is_firing(acts[0]).nonzero().squeeze(1)  # (m,)
    if len(active) == 0:
        return torch.empty(0, x.shape[-1])
    stats = _stats(model, x)
    full = model.decode(acts, idx, stats=stats)  # (1, d)
    ablated_acts = acts.expand(len(active), -1).clone()  # (m, k)
    ablated_acts[torch.arange(len(active)), active] = 0.0
    ablated = model.decode(ablated_acts, idx.expand(len(active), -1), stats=stats)  # (m, d)
    return (full - ablated).cpu()


def _stats(model: SparseAutoencoder, x: Tensor) -> tuple[Tensor, Tensor] | None:
    _, stats = model.normalize(x[None].to(model.device, model.W_enc.dtype))
    return stats
