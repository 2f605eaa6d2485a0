"""Turn the finished accumulators into the index's tables (pyarrow, ready for DuckDB)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from indexer import schema as s
from indexer.accumulate import LatentStats, histogram_edges
from indexer.ranking import Ranked, rank_in_runs
from indexer.reservoir import Kept

DENSE_DENSITY = 0.1  # a latent firing on more than 10% of tokens is flagged dense
DOMINATED_SHARE = 0.5  # ... and one with most fires on special or repeated tokens
EXAMPLE_BATCH = 1 << 15  # examples whose dense activation rows are made at once

EXAMPLE_SCHEMA = pa.schema(
    [
        ("latent_id", pa.int32()),
        ("kind", pa.string()),
        ("rank", pa.int32()),
        ("band", pa.int32()),
        ("context_id", pa.int32()),
        ("position", pa.int32()),
        ("activation", pa.float32()),
        ("activations", pa.list_(pa.float32())),
    ]
)


class Examples(NamedTuple):
    """Rows of the `examples` table: their contexts now, the rows a batch at a time when
    written (each with its dense activation row, which only the batch holds)."""

    context_ids: np.ndarray  # (r,) the context of every row
    batches: Iterator[pa.RecordBatch]


def list_array(rows: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """A (m, L) array as m lists of L values (DuckDB LIST columns)."""
    m, width = rows.shape
    offsets = pa.array(np.arange(m + 1, dtype=np.int32) * width, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), value_type))


def latent_flags(stats: LatentStats) -> dict[str, np.ndarray]:
    fires = stats.n_fires
    alive = fires > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        density = fires / max(stats.n_tokens, 1)
        special = np.where(alive, stats.special_fires / fires, np.nan)
        repeat = np.where(alive, stats.repeat_fires / fires, np.nan)
        mean = np.where(alive, stats.activation_sum / fires, np.nan)
        log10 = np.where(alive, np.log10(density), np.nan)
    return {
        "density": density,
        "log10_density": log10,
        "mean_activation": mean,
        "special_share": special,
        "repeat_share": repeat,
        s.DEAD: ~alive,
        s.DENSE: density > DENSE_DENSITY,
        s.SPECIAL: alive & (special > DOMINATED_SHARE),
        s.REPEAT: alive & (repeat > DOMINATED_SHARE),
    }


def latents_table(
    stats: LatentStats,
    *,
    top_token_text: list[str | None],
    explanation: list[str | None],
    precision: np.ndarray,
    recall: np.ndarray,
) -> pa.Table:
    f = latent_flags(stats)
    flags = [" ".join(name for name in s.FLAGS if f[name][i]) for i in range(stats.n_latents)]
    alive = ~f[s.DEAD]
    return pa.table(
        {
            "latent_id": pa.array(np.arange(stats.n_latents), pa.int32()),
            "n_fires": stats.n_fires,
            "n_contexts": stats.n_contexts,
            "density": f["density"],
            "log10_density": pa.array(f["log10_density"], from_pandas=True),
            "mean_activation": pa.array(f["mean_activation"], from_pandas=True),
            "max_activation": pa.array(
                np.where(alive, stats.activation_max.astype(np.float64), np.nan), from_pandas=True
            ),
            "dead": f[s.DEAD],
            "dense": f[s.DENSE],
            "special_share": pa.array(f["special_share"], from_pandas=True),
            "repeat_share": pa.array(f["repeat_share"], from_pandas=True),
            "flags": flags,
            "top_token_text": pa.array(top_token_text, pa.string()),
            "explanation": pa.array(explanation, pa.string()),
            "explanation_precision": pa.array(precision, from_pandas=True),
            "explanation_recall": pa.array(recall, from_pandas=True),
        }
    )


def _with_position_zero(rows: np.ndarray) -> np.ndarray:
    """(m, T-1) activations at positions 1.. → (m, T), 0 at position 0."""
    return np.concatenate([np.zeros((len(rows), 1), np.float32), rows.astype(np.float32)], axis=1)


def top_examples(top: Kept) -> Examples:
    """The reservoir is sorted by latent then activation, strongest first: rank = that order."""
    return _examples(top, np.arange(len(top.latent)), s.TOP, rank_in_runs(top.latent), None)


def quantile_examples(
    sample: Kept, *, n_latents: int, bands: int, per_band: int
) -> tuple[Examples, pa.Table]:
    """Cut each latent's uniform sample of contexts into rank-quantile bands of activation.

    Band b holds the contexts whose rank among the sample's activations (ascending, zeros never
    present) lies in [b/bands, (b+1)/bands); up to `per_band` of them are shown, chosen by the
    sample's hash order (at random). Returns (examples, bands with their activation ranges).
    """
    lat, act, ctx = sample.latent, sample.activation, sample.context
    size = np.bincount(lat, minlength=n_latents)[lat]  # (m,) sample size of each row's latent
    by_activation = np.lexsort((ctx, act, lat))
    rank = np.empty(len(lat), np.int64)
    rank[by_activation] = rank_in_runs(lat[by_activation])
    band = rank * bands // np.maximum(size, 1)  # (m,)
    group = lat * bands + band
    by_hash = np.lexsort((ctx, sample.order, group))
    shown = by_hash[rank_in_runs(group[by_hash]) < per_band]
    shown = shown[np.lexsort((ctx[shown], act[shown], group[shown]))]  # weakest first in a band
    examples = _examples(sample, shown, s.QUANTILE, rank_in_runs(group[shown]), band[shown])
    return examples, _band_table(lat, band, act, bands=bands, by_activation=by_activation)


def _band_table(
    lat: np.ndarray, band: np.ndarray, act: np.ndarray, *, bands: int, by_activation: np.ndarray
) -> pa.Table:
    group = (lat * bands + band)[by_activation]  # sorted: latent, then activation
    if len(group) == 0:
        starts = np.zeros(0, np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(group)] - 1
    sorted_act = act[by_activation]
    g = group[starts]
    return pa.table(
        {
            "latent_id": pa.array(g // bands, pa.int32()),
            "band": pa.array(g % bands, pa.int32()),
            "rank_from": (g % bands) / bands,
            "rank_to": (g % bands + 1) / bands,
            "min_activation": sorted_act[starts].astype(np.float64),
            "max_activation": sorted_act[ends].astype(np.float64),
        }
    )


def _examples(
    source: Kept, rows: np.ndarray, kind: str, rank: np.ndarray, band: np.ndarray | None
) -> Examples:
    return Examples(source.context[rows], _example_batches(source, rows, kind, rank, band))


def _example_batches(
    source: Kept, rows: np.ndarray, kind: str, rank: np.ndarray, band: np.ndarray | None
) -> Iterator[pa.RecordBatch]:
    for first in range(0, len(rows), EXAMPLE_BATCH):
        part = slice(first, first + EXAMPLE_BATCH)
        mine = rows[part]
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(source.latent[mine], pa.int32()),
                pa.array([kind] * len(mine), pa.string()),
                pa.array(rank[part], pa.int32()),
                pa.array(band[part], pa.int32())
                if band is not None
                else pa.nulls(len(mine), pa.int32()),
                pa.array(source.context[mine], pa.int32()),
                pa.array(source.position[mine], pa.int32()),
                pa.array(source.activation[mine], pa.float32()),
                list_array(_with_position_zero(source.rows.take(mine).dense()), pa.float32()),
            ],
            schema=EXAMPLE_SCHEMA,
        )


def activation_histograms(stats: LatentStats) -> pa.Table:
    latent, bins = np.nonzero(stats.histogram)
    edges = histogram_edges()
    return pa.table(
        {
            "latent_id": pa.array(latent, pa.int32()),
            "lower": edges[bins],
            "upper": edges[bins + 1],
            "count": stats.histogram[latent, bins],
        }
    )


def density_histogram(stats: LatentStats, *, per_decade: int = 4) -> pa.Table:
    """How many latents have each log10 density (live latents only), from 1e-8 to 1."""
    log10 = latent_flags(stats)["log10_density"]
    live = log10[np.isfinite(log10)]
    edges = np.linspace(-8.0, 0.0, 8 * per_decade + 1)
    counts, _ = np.histogram(np.clip(live, -8.0, 0.0), bins=edges)
    return pa.table({"lower": edges[:-1], "upper": edges[1:], "n_latents": counts.astype(np.int32)})


def ranked_table(ranked: Ranked, *, other: str, value: str, **extra: object) -> pa.Table:
    columns: dict[str, object] = {
        "latent_id": pa.array(ranked.latent, pa.int32()),
        "rank": pa.array(ranked.rank, pa.int32()),
        other: pa.array(ranked.other, pa.int32()),
        value: ranked.value,
    }
    columns.update(extra)
    return pa.table(columns)
