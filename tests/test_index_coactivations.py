"""Co-activation against a brute-force count, on both ways of counting the pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.coactivations import coactivations
from sae.explain import TokenSample


def _sample(seed: int, *, n: int, crowded: bool, scale: int = 1) -> TokenSample:
    """Codes (S, T-1, k) over n latents (ids multiplied by `scale`); crowded: all from 12, so
    many pairs tie on their Jaccard index."""
    rng = np.random.default_rng(seed)
    contexts, length, k = 10, 13, 5
    pool = 12 if crowded else n
    picks = [rng.choice(pool, k, replace=False) for _ in range(contexts * (length - 1))]
    indices = (np.stack(picks) * scale).reshape(contexts, length - 1, k).astype(np.int32)
    activations = rng.random(indices.shape).astype(np.float32) - 0.25  # some slots silent
    token_ids = rng.integers(0, 50, (contexts, length)).astype(np.int32)
    return TokenSample(token_ids, indices, activations, np.zeros(contexts, bool))


def _brute_force(sample: TokenSample, *, n: int, top: int) -> dict[int, list[tuple[int, int]]]:
    """Each latent's partners (id, tokens together), by Jaccard then smaller id, from a dense
    token x latent matrix."""
    k = sample.indices.shape[-1]
    slots, on = sample.indices.reshape(-1, k), sample.activations.reshape(-1, k) > 0
    fired = np.zeros((len(slots), n), np.int64)
    for row in range(len(slots)):
        fired[row, slots[row][on[row]]] = 1
    together = fired.T @ fired
    fires = np.diag(together).copy()
    np.fill_diagonal(together, 0)
    union = torch.from_numpy(fires[:, None] + fires[None, :] - together).clamp(min=1)
    jaccard = (torch.from_numpy(together) / union).numpy()  # float32, as stored
    best = {}
    for latent in range(n):
        partners = sorted((-jaccard[latent, o], o) for o in np.flatnonzero(together[latent]))
        best[latent] = [(int(o), int(together[latent, o])) for _, o in partners[:top]]
    return best


def _stored(sample: TokenSample, *, n: int, top: int, scale: int = 1, **kw: int) -> dict:
    result = coactivations(sample, n_latents=n * scale, top=top, **kw)
    got: dict[int, list[tuple[int, int]]] = {}
    latent, rank, other, _ = result.ranked
    assert np.all(np.diff(latent) >= 0)
    for row in range(len(latent)):
        got.setdefault(int(latent[row]) // scale, []).append(
            (int(other[row]) // scale, int(result.together[row]))
        )
        assert rank[row] == len(got[int(latent[row]) // scale]) - 1
    return got


@pytest.mark.parametrize("crowded", [False, True])
@pytest.mark.parametrize("max_pairs", [1 << 22, 40, 1])  # one block; many; a latent per block
def test_coactivations_match_brute_force_with_ties_by_id(crowded: bool, max_pairs: int) -> None:
    sample = _sample(3, n=30, crowded=crowded)
    expected = _brute_force(sample, n=30, top=4)
    got = _stored(sample, n=30, top=4, max_pairs=max_pairs)
    assert {latent: got.get(latent, []) for latent in range(30)} == expected


@pytest.mark.parametrize("crowded", [False, True])
def test_wide_sae_counts_by_sorting_and_gives_the_same_rows(crowded: bool) -> None:
    # Ids spread over 3M latents: each block's (block, n) grid is far larger than its pairs,
    # so the pairs are sorted, not counted into a grid; ids keep their order, so rows map 1:1.
    sample = _sample(5, n=30, crowded=crowded)
    expected = {latent: rows for latent, rows in _brute_force(sample, n=30, top=4).items() if rows}
    assert _stored(sample, n=30, top=4) == expected
    wide = _sample(5, n=30, crowded=crowded, scale=100_000)
    assert _stored(wide, n=30, top=4, scale=100_000) == expected
