"""`indexer export`: every latent of an index as Neuronpedia's feature files, read from the index
alone (no model, no SAE).

Neuronpedia takes an SAE's dashboards as the files SAEDashboard's `NeuronpediaRunner` writes: a
folder of `batch-0.json`, `batch-1.json`, ..., each one JSON object `{model_id, layer, sae_set,
sae_id_suffix, features}` holding a feature per latent with the keys of SAEDashboard's
`NeuronpediaDashboardFeature.to_dict` (and `NeuronpediaDashboardActivation.to_dict` for each
example), in that order. We write every key SAEDashboard writes, so a folder of ours goes where
SAEDashboard's output goes (Neuronpedia's importer reads each key by name); bench/peers/
check_neuronpedia.py rebuilds every feature with SAEDashboard's own converter and compares.

From the index (a latent's `latent_pages` row; its tables in an index built before that row):
- feature_index: latents.latent_id. frac_nonzero: latents.density.
- pos_str, pos_values / neg_str, neg_values: `logits` promoted / suppressed in rank order (the
  largest, and the most negative, first): vocab.text of token_id, value.
- freq_hist_data_bar_values, _bar_heights: `activation_histograms`, the middle of each bin,
  (lower + upper) / 2, and its count: the index's log-spaced bins, non-empty ones only, where
  SAEDashboard draws 50 equal bins from the smallest activation to the largest.
- activations: the `examples`, top ones by rank, then the quantile bands from the highest (as
  SAEDashboard lists its top group, then its intervals from the highest). tokens: vocab.text of
  the context's token_ids; values: examples.activations; both from position 1, since position 0
  is the attention sink that is never encoded, as SAEDashboard leaves out each prompt's first
  token (its BOS); qualifying_token_index: examples.position - 1, an index into `tokens`.
  bin_min, bin_max, bin_contains: for a top example -1, latents.max_activation, -1 (what
  SAEDashboard writes for its top group); for a band quantile_bands.min_activation,
  max_activation and latents.density * (rank_to - rank_from), the share of all tokens whose
  activation lies in the band, which is what SAEDashboard's `CONTAINS` share of an interval is.
- n_prompts_total: build.n_contexts; n_tokens_in_prompt: build.context_length; dataset:
  build.corpus. The header's model_id, layer: build.model (`default` as its Hugging Face id, the
  name our SAELens export gives it) and build.layer, unless given; sae_set: given, else
  `latent-atlas-<n_latents>`; sae_id_suffix: null.

Left out, written as SAEDashboard's empty defaults ([]), because the index does not hold them:
- neuron_alignment_indices, _values, _l1: the basis directions W_dec[i] is most aligned with;
  the index holds no decoder weights.
- correlated_neurons_indices, _l1, _pearson: correlations with the model's neurons, which the
  index never sees.
- correlated_features_indices, _l1, _pearson: SAEDashboard's are the Pearson correlation and
  cosine of activations over the tokens; the index's co-activations (Jaccard index) and decoder
  neighbours (cosine of decoder directions) are other measures, which these names would mislabel.
- logits_hist_data_bar_heights, _bar_values: the histogram of W_dec[i]'s logit effect over the
  whole vocabulary; the index keeps the top and bottom tokens only.
- decoder_weights_dist (the split over attention heads of a hook_z SAE) and vector (the decoder
  direction).
- dfa_values, dfa_maxValue, dfa_targetIndex of each activation: direct feature attribution,
  which SAEDashboard computes only when asked (`use_dfa`); without it, it writes [], 0 and -1,
  and so do we.
The index's explanations, n-gram patterns, top tokens, neighbours and co-activations have no
field in the format. An activation's maxValue, minValue and maxValueTokenIndex, which
Neuronpedia's database holds, are not in SAEDashboard's files either: Neuronpedia's importer
computes them from `values`. Batch N holds latents N * batch_size to (N + 1) * batch_size - 1
(SAEDashboard cuts its features into near-equal batches; the importer reads any batch-*.json).

Values are written as the index holds them (SAEDashboard rounds to 3 decimals), token strings
verbatim, escaped to ASCII (any control character, markup or quote survives as JSON text).
Memory holds one block of `batch_size` latents' pages and contexts, and one feature's JSON: it
does not grow with the width.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
from tqdm import tqdm

from indexer import schema as s
from indexer.export_files import check_new_folder, made_folder, new_file
from indexer.read_index import Page, build_row, contexts_of, open_index, page_blocks, vocab_texts
from sae.errors import AtlasError

BATCH_FILE = "batch-{}.json"  # SAEDashboard's name for its n-th file of features
OUT_OF_RANGE = "<|outofrange|>"  # SAEDashboard's text for a token id past the vocabulary
TOP_GROUP = -1  # SAEDashboard's bin_min and bin_contains of an example of the top group
COMPACT = (",", ":")  # JSON separators: no spaces
# What SAEDashboard writes in every activation when it computes no DFA (its default): its
# FeatureData always has a dfa_data dict, so the converter fills these in, never leaves them out.
NO_DFA = {"dfa_values": [], "dfa_maxValue": 0, "dfa_targetIndex": -1}


class PageExample(NamedTuple):
    """An entry of a page's `examples` (indexer/schema.py): its activations as their length,
    the positions where they are not 0, and the activations there."""

    kind: str
    rank: int
    band: int | None
    context_id: int
    position: int
    activation: float
    length: int
    where: list[int]
    values: list[float]


@dataclass(frozen=True)
class Source:
    """What every feature of an export shares: the batch header's ids, the dataset fields."""

    model_id: str
    layer: int
    sae_set: str
    n_prompts_total: int
    n_tokens_in_prompt: int
    dataset: str

    def header(self) -> dict[str, Any]:
        """A batch's keys before `features`, as NeuronpediaDashboardBatch.to_dict has them."""
        return {
            "model_id": self.model_id,
            "layer": self.layer,
            "sae_set": self.sae_set,
            "sae_id_suffix": None,
        }


class Exported(NamedTuple):
    """What an export wrote."""

    out: Path
    n_latents: int
    n_files: int
    file_bytes: int
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"neuronpedia export {self.out}: {self.n_latents:,} latents in {self.n_files:,} "
            f"batch files, {self.file_bytes / 2**20:.1f} MiB in {self.seconds:.1f} s"
        ]


def source_of(
    build: dict[str, Any], *, model_id: str | None, sae_set: str | None, layer: int | None
) -> Source:
    """The header and dataset fields from the index's build row, or as given."""
    from sae.activations.lm import published_model_id

    model = published_model_id(build["model"])
    return Source(
        model_id=model_id or model,
        layer=int(build["layer"]) if layer is None else layer,
        sae_set=sae_set or f"latent-atlas-{build['n_latents']}",
        n_prompts_total=int(build["n_contexts"]),
        n_tokens_in_prompt=int(build["context_length"]),
        dataset=build["corpus"],
    )


def texts(vocab: list[str], token_ids: list[int]) -> list[str]:
    """The tokens' texts, OUT_OF_RANGE for an id the vocabulary does not have."""
    if token_ids and (min(token_ids) < 0 or max(token_ids) >= len(vocab)):
        return [vocab[t] if 0 <= t < len(vocab) else OUT_OF_RANGE for t in token_ids]
    return list(map(vocab.__getitem__, token_ids))  # the common case, at C speed


def shown_tokens(vocab: list[str], contexts: dict[int, list[int]]) -> dict[int, list[str]]:
    """Each context's token texts as an activation lists them: from position 1, since position 0
    is the attention sink, never encoded (SAEDashboard leaves out each prompt's first token)."""
    return {context_id: texts(vocab, ids[1:]) for context_id, ids in contexts.items()}


def activations(page: Page, tokens: dict[int, list[str]]) -> list[dict[str, Any]]:
    """The page's examples as SAEDashboard's activations: top ones, then bands from the highest;
    `tokens` holds the texts of their contexts (`shown_tokens`)."""
    latent = page["latent"]
    bands = {band: rest for band, *rest in page["bands"]}  # rank_from, rank_to, min, max
    shown = []
    for x in map(PageExample._make, page["examples"]):
        values = [0.0] * x.length
        for i, value in zip(x.where, x.values, strict=True):
            values[i] = float(value)
        if x.kind == s.TOP:
            low, high, contains = TOP_GROUP, float(latent["max_activation"]), TOP_GROUP
        else:
            rank_from, rank_to, low, high = bands[x.band]
            contains = latent["density"] * (rank_to - rank_from)
        shown.append(
            {
                "bin_min": low,
                "bin_max": high,
                "bin_contains": contains,
                "tokens": tokens[x.context_id],
                "values": values[1:],  # from position 1, as the tokens
                "qualifying_token_index": x.position - 1,
                **NO_DFA,
            }
        )
    return shown


def feature(
    page: Page, tokens: dict[int, list[str]], vocab: list[str], source: Source
) -> dict[str, Any]:
    """One latent as NeuronpediaDashboardFeature.to_dict writes it, its keys in that order."""
    latent = page["latent"]
    return {
        "feature_index": latent["latent_id"],
        "neuron_alignment_indices": [],  # this and the next eight: not in the index
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": texts(vocab, [t for t, _ in page["suppressed"]]),
        "neg_values": [float(v) for _, v in page["suppressed"]],
        "pos_str": texts(vocab, [t for t, _ in page["promoted"]]),
        "pos_values": [float(v) for _, v in page["promoted"]],
        "frac_nonzero": float(latent["density"]),
        "freq_hist_data_bar_values": [(lower + upper) / 2 for lower, upper, _ in page["histogram"]],
        "freq_hist_data_bar_heights": [int(count) for _, _, count in page["histogram"]],
        "logits_hist_data_bar_heights": [],  # not in the index
        "logits_hist_data_bar_values": [],
        "n_prompts_total": source.n_prompts_total,
        "n_tokens_in_prompt": source.n_tokens_in_prompt,
        "dataset": source.dataset,
        "decoder_weights_dist": [],  # not in the index
        "activations": activations(page, tokens),
        "vector": [],  # not in the index
    }


def to_json(value: Any) -> str:
    """JSON text in ASCII: every character outside it escaped (control characters, U+2028, lone
    surrogates), so any JSON parser reads it; NaN and infinities are refused, not written."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=COMPACT)


def write_batch(path: Path, header: dict[str, Any], features: Iterable[dict[str, Any]]) -> int:
    """One batch file, written a feature at a time; returns its size in bytes."""
    written = 0
    with new_file(path) as handle:
        written += handle.write(to_json(header)[:-1] + ',"features":[')
        for i, one in enumerate(features):
            try:
                text = to_json(one)
            except ValueError:
                raise AtlasError(
                    f"latent {one['feature_index']} holds a NaN or an infinity, which JSON "
                    f"cannot hold; {path.name} is not written"
                ) from None
            written += handle.write(("," if i else "") + text)
        written += handle.write("]}")
    return written


def export_neuronpedia(
    index: Path,
    out: Path,
    *,
    batch_size: int = 128,
    model_id: str | None = None,
    sae_set: str | None = None,
    layer: int | None = None,
    progress: bool = False,
) -> Exported:
    """Write every latent of `index` into the new or empty folder `out` as `batch-N.json`, the
    latents N * batch_size to (N + 1) * batch_size - 1 in each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    connection = open_index(index)
    try:
        check_new_folder(out)
        build = build_row(connection)
        source = source_of(build, model_id=model_id, sae_set=sae_set, layer=layer)
        vocab = vocab_texts(connection, missing=OUT_OF_RANGE)
        bar = tqdm(total=build["n_latents"], unit="latent", desc="export", disable=not progress)
        n_latents = n_files = n_bytes = 0
        with made_folder(out), bar:
            for first, block in page_blocks(connection, batch_size):
                shown = (PageExample(*x) for page in block for x in page["examples"])
                tokens = shown_tokens(vocab, contexts_of(connection, (x.context_id for x in shown)))
                features = (feature(page, tokens, vocab, source) for page in block)
                path = out / BATCH_FILE.format(first // batch_size)
                n_bytes += write_batch(path, source.header(), features)
                n_latents, n_files = n_latents + len(block), n_files + 1
                bar.update(len(block))
    except duckdb.Error as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise AtlasError(f"{index}: cannot be read to the end: {lines[0]}") from None
    finally:
        connection.close()
    return Exported(out, n_latents, n_files, n_bytes, time.perf_counter() - started)
