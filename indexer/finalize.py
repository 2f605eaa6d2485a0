"""From the merged accumulators, the SAE and the LM to every table of the index.

A latent shard's accumulators (indexer/shards.py) give the rows of its latents only: every
per-latent table for its slice (against all n latents and every token of the sample),
`token_latents` among its latents (the merge keeps each token's best of the union), and its
slice's share of `density_histogram` (the merge adds them up).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from indexer import memory, schema, tables
from indexer.accumulate import Accumulators
from indexer.coactivations import TokenTable, coactivations, token_tables
from indexer.config import BuildConfig
from indexer.geometry import decoder_neighbours, logit_effects
from indexer.ranking import Ranked
from indexer.shards import LatentSlice
from indexer.store import Rows
from sae import explain
from sae.activations.lm import LanguageModel, vocab_size, vocabulary
from sae.activations.source import ActivationSource
from sae.codes import Fired
from sae.model import SparseAutoencoder


class Head(NamedTuple):
    """What the index needs of the LM once the pass is done; taken so its weights can go."""

    unembedding: torch.Tensor  # (V, d)
    gain: torch.Tensor | None  # (d,) the final norm's elementwise gain, when it has one
    texts: list[str]  # every token id's text
    special: np.ndarray  # (V,) bool


def head_of(lm: LanguageModel) -> Head:
    """The LM's unembedding, final norm gain and vocabulary: detached tensors, which keep only
    their own storage alive once the model goes (no copy of the unembedding)."""
    w_u = lm.model.get_output_embeddings().weight.detach()
    norm = getattr(getattr(lm.model, "model", None), "norm", None)
    gain = getattr(norm, "weight", None)
    texts, special = vocabulary(lm, vocab_size(lm))
    return Head(w_u, gain.detach() if isinstance(gain, torch.Tensor) else None, texts, special)


def assemble(
    acc: Accumulators,
    *,
    sae: SparseAutoencoder,
    head: Head,
    source: ActivationSource,
    cfg: BuildConfig,
) -> tuple[dict[str, Rows], dict[str, Any]]:
    """All tables but `build`, and the numbers the summary and the build row report.

    The steps run one after another, each handing its working memory back before the next
    (`memory.release`): side by side their peaks added up, and on a machine of few cores it
    was slower too, the GEMMs already using every core (bench/RESULTS.md).
    """
    n, part, texts = sae.cfg.n_latents, acc.latents, head.texts
    sample = acc.tokens.sample(held_out_fraction=cfg.held_out)
    fires = sample.fires  # found here, once, for every step that reads it
    promoted, suppressed, near = _weight_tables(sae, head.unembedding, head.gain, cfg, part)
    memory.release()
    coactivation = coactivations(sample, n_latents=n, top=cfg.coactive, latents=part.ids)
    memory.release()
    latent_tokens, token_latents = token_tables(
        _fires_of(fires, part), sample.token_ids, vocab_size=len(texts), top=cfg.top_tokens
    )
    memory.release()
    explained = _explained(_sample_of(sample, part), latents=part, vocab=texts, cfg=cfg)
    memory.release()
    examples, bands = _examples(acc, cfg=cfg)
    out = {
        "vocab": _vocab(texts, head.special),
        "contexts": _contexts(source, np.unique(examples.context_ids)),
        "latents": _with_ids(
            tables.latents_table(
                acc.stats,
                top_token_text=_top_token_text(latent_tokens, texts, latents=part),
                explanation=explained.text,
                precision=explained.precision,
                recall=explained.recall,
            ),
            part,
        ),
        "examples": pa.RecordBatchReader.from_batches(tables.EXAMPLE_SCHEMA, examples.batches),
        "quantile_bands": bands,
        "activation_histograms": _with_ids(tables.activation_histograms(acc.stats), part),
        "density_histogram": tables.density_histogram(acc.stats),
        "logits": _logits(promoted, suppressed),
        "neighbours": tables.ranked_table(near, other="other_id", value="cosine"),
        "coactivations": tables.ranked_table(
            coactivation.ranked, other="other_id", value="jaccard", count=coactivation.together
        ),
        "latent_tokens": _token_table(latent_tokens, key="latent_id", other="token_id"),
        "token_latents": _token_table(token_latents, key="token_id", other="latent_id"),
        "explanation_patterns": _patterns(explained.patterns),
    }
    flags = tables.latent_flags(acc.stats)
    metrics = summary_metrics(
        density=flags["density"],
        dead=flags[schema.DEAD],
        dense=flags[schema.DENSE],
        precision=explained.precision,
        recall=explained.recall,
        n_explained=explained.n_explained,
        n_sample_contexts=len(sample.token_ids),
    )
    return out, metrics


class Explained(NamedTuple):
    """The n-gram explanations, spread out per latent (None / NaN where a latent has none)."""

    text: list[str | None]
    precision: np.ndarray
    recall: np.ndarray
    patterns: list[explain.Pattern]
    n_explained: int  # latents with an explanation


def _explained(
    sample: explain.TokenSample, *, latents: LatentSlice, vocab: list[str], cfg: BuildConfig
) -> Explained:
    """Each latent's explanation from the token sample, as the `latents` columns hold it."""
    explanations = explain.explain_latents(
        sample, n_latents=latents.n_latents, vocab=vocab, max_patterns=cfg.explanation_patterns
    )
    text: list[str | None] = [None] * latents.size
    precision, recall = np.full(latents.size, np.nan), np.full(latents.size, np.nan)
    patterns: list[explain.Pattern] = []
    for e in explanations:
        row = e.latent_id - latents.first
        text[row] = e.text
        precision[row] = np.nan if e.precision is None else e.precision
        recall[row] = np.nan if e.recall is None else e.recall
        patterns.extend(e.patterns)
    return Explained(text, precision, recall, patterns, len(explanations))


def _examples(acc: Accumulators, *, cfg: BuildConfig) -> tuple[tables.Examples, pa.Table]:
    """The `examples` rows (top examples, then quantile examples) and `quantile_bands`."""
    first = acc.latents.first  # the reservoirs count latents from the slice's first
    sample, strongest = acc.sample.kept(), acc.top.kept()
    quantile, bands = tables.quantile_examples(
        sample._replace(latent=sample.latent + first),
        n_latents=acc.latents.stop,
        bands=cfg.quantile_bands,
        per_band=cfg.examples_per_band,
    )
    top = tables.top_examples(strongest._replace(latent=strongest.latent + first))
    examples = tables.Examples(
        np.concatenate([top.context_ids, quantile.context_ids]),
        itertools.chain(top.batches, quantile.batches),
    )
    return examples, bands


def _top_token_text(
    latent_tokens: TokenTable, texts: list[str], *, latents: LatentSlice
) -> list[str | None]:
    """The text of the token each latent fires on most (None for a latent that never fires)."""
    top: list[str | None] = [None] * latents.size
    first = latent_tokens.rank == 0
    for latent, token in zip(latent_tokens.key[first], latent_tokens.other[first], strict=True):
        top[int(latent) - latents.first] = texts[int(token)]
    return top


def _fires_of(fires: Fired, latents: LatentSlice) -> Fired:
    """The fires of the slice's latents, in order (all of them when it holds every latent)."""
    if latents.is_every:
        return fires
    keep = (fires.latent >= latents.first) & (fires.latent < latents.stop)
    return Fired(fires.token[keep], fires.latent[keep], fires.activation[keep])


def _sample_of(sample: explain.TokenSample, latents: LatentSlice) -> explain.TokenSample:
    """The token sample with only the slice's latents firing: what it explains (every n-gram
    still counted over every token)."""
    if latents.is_every:
        return sample
    inside = (sample.indices >= latents.first) & (sample.indices < latents.stop)
    return explain.TokenSample(
        token_ids=sample.token_ids,
        indices=sample.indices,
        activations=np.where(inside, sample.activations, np.float32(0)),
        held_out=sample.held_out,
    )


def _with_ids(table: pa.Table, latents: LatentSlice) -> pa.Table:
    """A table made from the slice's accumulators, its `latent_id`s those of the SAE."""
    if latents.first == 0:
        return table
    column = table.schema.get_field_index("latent_id")
    ids = pa.array(table.column(column).to_numpy() + latents.first, pa.int32())
    return table.set_column(column, "latent_id", ids)


def _vocab(texts: list[str], special: np.ndarray) -> pa.Table:
    """The `vocab` table: every token id's text, as the tokenizer decodes it alone."""
    return pa.table(
        {
            "token_id": pa.array(np.arange(len(texts)), pa.int32()),
            "text": texts,
            "special": special,
        }
    )


def _logits(promoted: Ranked, suppressed: Ranked) -> pa.Table:
    """The `logits` table: promoted tokens, then suppressed ones, each with its `kind`."""
    return pa.concat_tables(
        [
            tables.ranked_table(
                ranked, other="token_id", value="value", kind=[kind] * len(ranked.latent)
            )
            for kind, ranked in ((schema.PROMOTED, promoted), (schema.SUPPRESSED, suppressed))
        ]
    )


def _weight_tables(
    sae: SparseAutoencoder,
    w_u: torch.Tensor,
    gain: torch.Tensor | None,
    cfg: BuildConfig,
    latents: LatentSlice,
) -> tuple[Ranked, Ranked, Ranked]:
    """Logit effects (promoted, suppressed) and decoder neighbours of the slice's latents:
    the weights alone, on the SAE's device (the GPU's when it has one)."""
    decoder = sae.W_dec.detach()
    to = decoder.device
    promoted, suppressed = logit_effects(
        decoder,
        w_u.to(to),
        final_norm=None if gain is None else gain.to(to),
        top=cfg.logit_tokens,
        latents=latents.ids,
    )
    near = decoder_neighbours(decoder, top=cfg.neighbours, latents=latents.ids)
    return promoted, suppressed, near


def _contexts(source: ActivationSource, context_ids: np.ndarray) -> pa.Table:
    info = source.context_table(context_ids)
    tokens = np.asarray(source.token_ids[context_ids], np.int32)
    return pa.table(
        {
            "context_id": pa.array(context_ids, pa.int32()),
            "doc_id": info.column("doc_id"),
            "start": info.column("start"),
            "token_ids": tables.list_array(tokens, pa.int32()),
        }
    )


def _token_table(table: TokenTable, *, key: str, other: str) -> pa.Table:
    return pa.table(
        {
            key: pa.array(table.key, pa.int32()),
            "rank": pa.array(table.rank, pa.int32()),
            other: pa.array(table.other, pa.int32()),
            "count": table.fires,
            "mean_activation": table.mean_activation,
        }
    )


def _patterns(patterns: list[explain.Pattern]) -> pa.Table:
    return pa.table(
        {
            "latent_id": pa.array([p.latent_id for p in patterns], pa.int32()),
            "rank": pa.array([p.rank for p in patterns], pa.int32()),
            "pattern": pa.array([p.text for p in patterns], pa.string()),
            "token_ids": pa.array([list(p.token_ids) for p in patterns], pa.list_(pa.int32())),
            "precision": pa.array([p.precision for p in patterns], pa.float64()),
            "recall": pa.array([p.recall for p in patterns], pa.float64()),
            "n_matches": pa.array([p.n_matches for p in patterns], pa.int64()),
            "n_hits": pa.array([p.n_hits for p in patterns], pa.int64()),
        }
    )


def summary_metrics(
    *,
    density: np.ndarray,
    dead: np.ndarray,
    dense: np.ndarray,
    precision: np.ndarray,
    recall: np.ndarray,
    n_explained: int,
    n_sample_contexts: int,
) -> dict[str, Any]:
    """The build row's `metrics`, from per-latent columns (n,) of the `latents` table (NaN
    where a latent has no score): `indexer merge` recomputes them from the shards' rows."""
    alive = ~dead

    def median(values: np.ndarray) -> float | None:
        values = values[np.isfinite(values)]
        return float(np.median(values)) if len(values) else None

    return {
        "n_latents": len(density),
        "alive": int(alive.sum()),
        "dead": int(dead.sum()),
        "dense": int(dense.sum()),
        "median_density": median(density[alive]),
        "mean_l0": float(density.sum()),  # latents firing per token: a variable-L0 SAE's k
        "median_explanation_precision": median(precision),
        "median_explanation_recall": median(recall),
        "token_sample_contexts": n_sample_contexts,
        "explained": n_explained,
    }
