"""A chunk's (latent, context) pairs: the dense-grid way (narrow SAEs) and the sorting way
(wide ones) give the same pairs, maxima and per-latent k-th orders."""

from __future__ import annotations

import numpy as np
import pytest

from indexer import fires
from indexer.fires import Chunk, ContextPairs
from indexer.hashing import pair_hash


def _chunk(seed: int, *, n: int) -> Chunk:
    rng = np.random.default_rng(seed)
    contexts, length, k = 12, 9, 4
    indices = np.stack([rng.choice(n, k, replace=False) for _ in range(contexts * (length - 1))])
    activations = rng.random(indices.shape).astype(np.float32) - 0.3  # some slots silent
    activations[::7] = 0.5  # repeated maxima: the first position of the maximum must be kept
    return Chunk(
        first_context=100,
        token_ids=rng.integers(0, 50, (contexts, length)),
        activations=activations.reshape(contexts, length - 1, k),
        indices=indices.reshape(contexts, length - 1, k).astype(np.int64),
    )


@pytest.mark.parametrize("n", [6, 40])
def test_pairs_by_sorting_equal_pairs_by_grid(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = _chunk(n, n=n)
    by_grid = ContextPairs.of(chunk, n)
    monkeypatch.setattr(fires, "grid_is_small", lambda cells, events: False)
    by_sort = ContextPairs.of(chunk, n)
    for name in ("pair_cell", "pair_latent", "pair_context", "pair_max", "cell", "flat"):
        np.testing.assert_array_equal(getattr(by_sort, name), getattr(by_grid, name))
    for k in (1, 3, 50):
        strongest = -by_grid.pair_max
        hashed = pair_hash(by_grid.pair_latent, by_grid.pair_context)
        monkeypatch.undo()
        expected = [by_grid.kth_smallest(strongest, k), by_grid.kth_smallest(hashed, k)]
        monkeypatch.setattr(fires, "grid_is_small", lambda cells, events: False)
        got = [by_sort.kth_smallest(strongest, k), by_sort.kth_smallest(hashed, k)]
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(have, want)
    # the grid's answer against a direct count: each latent's k-th smallest of its pairs
    latent = by_grid.pair_latent
    for one in range(n):
        own = np.sort(-by_grid.pair_max[latent == one])
        want = own[2] if len(own) >= 3 else np.inf
        assert by_sort.kth_smallest(-by_grid.pair_max, 3)[one] == want
