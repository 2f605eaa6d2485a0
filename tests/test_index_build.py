"""`indexer build` against a brute-force computation over the same activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch

import sae
from indexer.build import build
from indexer.config import BuildConfig
from indexer.hashing import pair_hash
from sae.activations.cache import ActivationCache
from tests.helpers import jumprelu_of


def small_config(indexed_sae: Path, tiny_cache: Path, out: Path, **kw: Any) -> BuildConfig:
    settings: dict[str, Any] = {
        "top_examples": 5,
        "quantile_bands": 4,
        "examples_per_band": 2,
        "quantile_sample": 1000,  # more than any latent's contexts: bands are exact
        "batch_tokens": 100,
    }
    settings.update(kw)
    return BuildConfig(sae=str(indexed_sae), acts=str(tiny_cache), out=str(out), **settings)


@pytest.fixture(scope="module", params=["topk", "jumprelu"])
def indexed_sae(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_sae: Path
) -> Path:
    """The tiny TopK SAE, and a JumpReLU SAE of the same weights whose thresholds (each
    latent's 90th percentile of its pre-activations) let a varying number of latents fire."""
    if request.param == "topk":
        return tiny_sae
    return jumprelu_of(tiny_sae, tmp_path_factory.mktemp("jumprelu") / "sae")


@pytest.fixture(scope="module")
def tiny_index(
    tmp_path_factory: pytest.TempPathFactory, indexed_sae: Path, tiny_cache: Path
) -> Path:
    out = tmp_path_factory.mktemp("index") / "index.duckdb"
    build(small_config(indexed_sae, tiny_cache, out), progress=False)
    return out


class Dense:
    """Every token's code as a dense (N, T-1, n) array, computed the plain way."""

    def __init__(self, indexed_sae: Path, tiny_cache: Path) -> None:
        model = sae.load(str(indexed_sae))
        cache = ActivationCache(tiny_cache)
        x = torch.cat([acts for _, acts in cache.shards()]).float()  # (N, T-1, d)
        limit = 10 * cache.median_norm()  # the tiny SAE records no sink limit of its own
        with torch.no_grad():
            pre = (x * model.cfg.input_scale - model.b_pre) @ model.W_enc.T + model.b_enc
            if model.cfg.activation == "jumprelu":
                dense = pre.relu() * (pre > model.threshold)
            else:
                top = pre.topk(model.cfg.k, dim=-1)
                dense = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        dense[x.norm(dim=-1) > limit] = 0.0
        self.codes = dense.numpy()  # (N, T-1, n)
        self.tokens = cache.token_ids()
        self.n_tokens = int((x.norm(dim=-1) <= limit).sum())
        self.model = model

    def context_max(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Each context's largest activation of `latent` and its first position (1-based)."""
        column = self.codes[:, :, latent]  # (N, T-1)
        return column.max(axis=1), column.argmax(axis=1) + 1


@pytest.fixture(scope="module")
def dense(indexed_sae: Path, tiny_cache: Path) -> Dense:
    return Dense(indexed_sae, tiny_cache)


# The documented bins (DESIGN.md §7, indexer/schema.py): 20 log-spaced bins per decade from
# 1e-4 to 1e4, each [lower, upper); a value outside the range counts in the first or last bin.
EDGES = np.logspace(-4, 4, 8 * 20 + 1)


def expected_histogram(values: np.ndarray) -> list[tuple[float, float, int]]:
    """(lower, upper, count) of every non-empty bin, by comparing values with the edges."""
    clipped = np.clip(values.astype(np.float64), EDGES[0], EDGES[-1])
    counts, _ = np.histogram(clipped, bins=EDGES)  # the last bin also holds 1e4 itself
    return [(EDGES[i], EDGES[i + 1], int(counts[i])) for i in np.flatnonzero(counts)]


def query(index: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(index), read_only=True) as connection:
        return connection.execute(sql, list(params)).fetchall()


def test_counts_densities_maxima_and_histograms_match_brute_force(
    tiny_index: Path, dense: Dense
) -> None:
    rows = query(
        tiny_index,
        "SELECT latent_id, n_fires, n_contexts, density, mean_activation, max_activation, dead "
        "FROM latents ORDER BY latent_id",
    )
    assert len(rows) == 64
    fired = dense.codes > 0
    for latent, n_fires, n_contexts, density, mean, peak, dead in rows:
        values = dense.codes[:, :, latent][fired[:, :, latent]]
        assert n_fires == len(values)
        assert n_contexts == int(fired[:, :, latent].any(axis=1).sum())
        assert density == pytest.approx(len(values) / dense.n_tokens)
        assert dead == (len(values) == 0)
        if len(values):
            assert mean == pytest.approx(values.mean(), rel=1e-5)
            assert peak == pytest.approx(values.max(), rel=1e-6)
            expected = expected_histogram(values)
            stored = query(
                tiny_index,
                "SELECT lower, upper, count FROM activation_histograms WHERE latent_id = ? "
                "ORDER BY lower",
                latent,
            )
            assert [c for _, _, c in stored] == [c for _, _, c in expected]
            np.testing.assert_allclose(
                [row[:2] for row in stored], [row[:2] for row in expected], rtol=1e-6
            )  # the edges are stored as 32-bit floats
            assert sum(c for _, _, c in stored) == n_fires
    assert sum(r[1] for r in rows) > 0
    (n_tokens,) = query(tiny_index, "SELECT n_tokens FROM build")[0]
    assert n_tokens == dense.n_tokens


def test_top_examples_are_the_strongest_contexts_with_every_token(
    tiny_index: Path, dense: Dense
) -> None:
    checked = 0
    for latent in range(64):
        best, where = dense.context_max(latent)
        order = np.lexsort((np.arange(len(best)), -best))
        order = order[best[order] > 0][:5]
        stored = query(
            tiny_index,
            "SELECT e.rank, e.context_id, e.position, e.activation, e.activations, c.token_ids "
            "FROM examples e JOIN contexts c USING (context_id) "
            "WHERE latent_id = ? AND kind = 'top' ORDER BY rank",
            latent,
        )
        # The same strongest values; contexts may swap only where two values tie (repeated
        # text) up to float rounding between this plain computation and the encoder's.
        assert len(stored) == len(order)
        np.testing.assert_allclose([r[3] for r in stored], best[order], rtol=1e-5)
        stored_values = [r[3] for r in stored]
        assert stored_values == sorted(stored_values, reverse=True)
        for rank, context, position, activation, activations, tokens in stored:
            assert activation == pytest.approx(best[context], rel=1e-5)
            assert position == where[context] or np.isclose(
                dense.codes[context, position - 1, latent], best[context], rtol=1e-5
            )
            row = np.r_[0.0, dense.codes[context, :, latent]]
            np.testing.assert_allclose(activations, row, rtol=1e-3, atol=1e-4)  # float16 rows
            assert tokens == dense.tokens[context].tolist()
            checked += rank >= 0
    assert checked > 64  # most latents have several top examples


def test_quantile_bands_are_rank_quantiles_of_the_contexts_a_latent_fires_in(
    tiny_index: Path, dense: Dense
) -> None:
    for latent in range(64):
        best, _ = dense.context_max(latent)
        values = np.sort(best[best > 0])  # zeros excluded
        if len(values) == 0:
            continue
        band_of = (np.arange(len(values)) * 4) // len(values)
        bands = query(
            tiny_index,
            "SELECT band, min_activation, max_activation FROM quantile_bands "
            "WHERE latent_id = ? ORDER BY band",
            latent,
        )
        assert [b for b, _, _ in bands] == sorted(set(band_of.tolist()))
        for band, low, high in bands:
            assert low == pytest.approx(values[band_of == band].min(), rel=1e-6)
            assert high == pytest.approx(values[band_of == band].max(), rel=1e-6)
        shown = query(
            tiny_index,
            "SELECT band, activation FROM examples WHERE latent_id = ? AND kind = 'quantile'",
            latent,
        )
        for band, activation in shown:
            low, high = values[band_of == band].min(), values[band_of == band].max()
            assert low - 1e-6 <= activation <= high + 1e-6
        per_band = np.bincount(band_of, minlength=4)
        counts = np.bincount([b for b, _ in shown], minlength=4)
        assert (counts == np.minimum(per_band, 2)).all()


def test_a_small_quantile_sample_is_a_hash_chosen_uniform_sample(
    tmp_path: Path, indexed_sae: Path, tiny_cache: Path, dense: Dense
) -> None:
    out = tmp_path / "sampled.duckdb"
    build(small_config(indexed_sae, tiny_cache, out, quantile_sample=8), progress=False)
    for latent in range(64):
        best, _ = dense.context_max(latent)
        contexts = np.flatnonzero(best > 0)
        if len(contexts) <= 8:
            continue
        hashes = pair_hash(np.full(len(contexts), latent), contexts)
        chosen = np.sort(best[contexts[np.argsort(hashes)[:8]]])
        band_of = (np.arange(8) * 4) // 8
        bands = query(
            out,
            "SELECT band, min_activation, max_activation FROM quantile_bands "
            "WHERE latent_id = ? ORDER BY band",
            latent,
        )
        expected = [(b, chosen[band_of == b].min(), chosen[band_of == b].max()) for b in range(4)]
        assert [b for b, _, _ in bands] == [0, 1, 2, 3]
        np.testing.assert_allclose(np.array(bands)[:, 1:], np.array(expected)[:, 1:], rtol=1e-6)


def test_weights_tables_match_brute_force(tiny_index: Path, dense: Dense) -> None:
    from sae.activations.lm import load_lm

    model = dense.model
    (source,) = query(tiny_index, "SELECT model FROM build")[0]
    lm = load_lm(source)
    w_u = lm.model.get_output_embeddings().weight.detach()
    gain = lm.model.model.norm.weight.detach()
    effect = (model.W_dec.detach() * gain) @ w_u.T  # (n, V)
    unit = torch.nn.functional.normalize(model.W_dec.detach(), dim=1)
    cosine = unit @ unit.T
    cosine.fill_diagonal_(-2)
    for latent in (0, 17, 63):
        promoted = query(
            tiny_index,
            "SELECT token_id, value FROM logits WHERE latent_id = ? AND kind = 'promoted' "
            "ORDER BY rank",
            latent,
        )
        expected = effect[latent].topk(10)
        assert [t for t, _ in promoted] == expected.indices.tolist()
        np.testing.assert_allclose([v for _, v in promoted], expected.values, rtol=1e-4)
        suppressed = query(
            tiny_index,
            "SELECT token_id FROM logits WHERE latent_id = ? AND kind = 'suppressed' ORDER BY rank",
            latent,
        )
        assert [t for (t,) in suppressed] == effect[latent].topk(10, largest=False).indices.tolist()
        near = query(
            tiny_index,
            "SELECT other_id, cosine FROM neighbours WHERE latent_id = ? ORDER BY rank",
            latent,
        )
        assert [o for o, _ in near] == cosine[latent].topk(10).indices.tolist()


def test_coactivation_and_token_tables_match_brute_force(tiny_index: Path, dense: Dense) -> None:
    fired = dense.codes.reshape(-1, 64) > 0  # (M, n) the token sample is every context here
    tokens = dense.tokens[:, 1:].reshape(-1)
    together = fired.T.astype(np.int64) @ fired.astype(np.int64)  # (n, n): fine at n = 64
    fires = np.diag(together).copy()
    np.fill_diagonal(together, 0)
    jaccard = together / np.maximum(fires[:, None] + fires[None, :] - together, 1)
    for latent in range(64):
        stored = query(
            tiny_index,
            "SELECT other_id, count, jaccard FROM coactivations WHERE latent_id = ? ORDER BY rank",
            latent,
        )
        for other, count, value in stored:
            assert count == together[latent, other]
            assert value == pytest.approx(jaccard[latent, other])
        if stored:  # the best partner is stored first
            assert stored[0][2] == pytest.approx(jaccard[latent].max())
        top_tokens = query(
            tiny_index,
            "SELECT token_id, count FROM latent_tokens WHERE latent_id = ? ORDER BY rank",
            latent,
        )
        counts = np.bincount(tokens[fired[:, latent]], minlength=49152)
        assert [c for _, c in top_tokens] == sorted(counts[counts > 0], reverse=True)[:10]
        for token, count in top_tokens:
            assert counts[token] == count
    token = int(np.bincount(tokens).argmax())
    reverse = query(
        tiny_index, "SELECT latent_id, count FROM token_latents WHERE token_id = ?", token
    )
    for latent, count in reverse:
        assert count == int(fired[tokens == token, latent].sum())


def test_live_latents_have_explanations_scored_on_held_out_contexts(tiny_index: Path) -> None:
    rows = query(
        tiny_index,
        "SELECT explanation, explanation_precision, explanation_recall FROM latents WHERE NOT dead",
    )
    explained = [r for r in rows if r[0]]
    assert len(explained) >= 0.9 * len(rows)
    scored = [(p, r) for _, p, r in explained if p is not None and r is not None]
    assert scored and all(0 <= p <= 1 and 0 <= r <= 1 for p, r in scored)
    patterns = query(
        tiny_index, "SELECT latent_id, pattern, n_matches, n_hits FROM explanation_patterns"
    )
    assert all("[" in p and h <= m for _, p, m, h in patterns)


def test_provenance_row(tiny_index: Path, indexed_sae: Path, tiny_cache: Path) -> None:
    row = query(
        tiny_index,
        "SELECT layer, sae_format, length(sae_hash), n_latents, k, n_contexts, activations, "
        "settings->>'top_examples', versions->>'torch' FROM build",
    )
    k = 4 if sae.load(indexed_sae).cfg.activation == "topk" else 64  # no fixed k: k = n
    assert row == [(2, "ours", 64, 64, k, 128, str(tiny_cache), "5", torch.__version__)]


def test_the_summary_names_alive_dead_and_density(
    tmp_path: Path, indexed_sae: Path, tiny_cache: Path
) -> None:
    summary = build(small_config(indexed_sae, tiny_cache, tmp_path / "i.duckdb"), progress=False)
    assert summary is not None
    text = "\n".join(summary.lines())
    assert "alive" in text and "dead" in text and "median density" in text and "MiB" in text


def test_index_only_a_prefix_of_the_cache(
    tmp_path: Path, indexed_sae: Path, tiny_cache: Path
) -> None:
    out = tmp_path / "prefix.duckdb"
    build(small_config(indexed_sae, tiny_cache, out, tokens=600), progress=False)
    (n_contexts, n_tokens) = query(out, "SELECT n_contexts, n_tokens FROM build")[0]
    assert n_contexts == 38  # ceil(600 / 16)
    assert n_tokens <= 38 * 16
    assert query(out, "SELECT max(context_id) FROM examples")[0][0] < 38
