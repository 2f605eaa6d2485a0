"""Decoder neighbours and logit effects against brute force, on tiles and blocks of every
size, with exact ties; a latent shard's rows equal to a whole build's, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.geometry import decoder_neighbours, logit_effects


def _decoder(n: int) -> torch.Tensor:
    decoder = torch.randn(n, 24, generator=torch.Generator().manual_seed(n))
    decoder[5], decoder[7] = decoder[3], 2 * decoder[3]  # the same direction: cosines tie
    decoder[9] = 0  # a direction of zeros: every cosine 0, all tied
    return decoder


def _brute_force_neighbours(decoder: torch.Tensor, top: int) -> np.ndarray:
    unit = torch.nn.functional.normalize(decoder, dim=1)
    cosine = (unit @ unit.T).fill_diagonal_(-torch.inf).tolist()
    n = len(decoder)
    return np.array([sorted(range(n), key=lambda j: (-row[j], j))[:top] for row in cosine])


@pytest.mark.parametrize(("n", "tile"), [(64, 2048), (301, 64), (300, 7), (12, 1)])
def test_neighbours_match_brute_force_ties_by_smaller_id(n: int, tile: int) -> None:
    decoder = _decoder(n)
    got = decoder_neighbours(decoder, top=10, tile=tile)
    np.testing.assert_array_equal(got.other.reshape(n, 10), _brute_force_neighbours(decoder, 10))
    assert got.other[got.latent == 3][:2].tolist() == [5, 7]  # its copies, smaller id first
    assert got.other[got.latent == 9].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]


@pytest.mark.parametrize("tile", [64, 7])
def test_a_latent_shard_computes_its_rows_to_the_bit(tile: int) -> None:
    decoder, n = _decoder(301), 301
    whole = decoder_neighbours(decoder, top=10, tile=tile)
    for lo, hi in [(0, 150), (150, 301), (17, 18)]:
        part = decoder_neighbours(decoder, top=10, tile=tile, latents=range(lo, hi))
        np.testing.assert_array_equal(part.latent, np.repeat(np.arange(lo, hi), 10))
        np.testing.assert_array_equal(part.other, whole.other.reshape(n, 10)[lo:hi].reshape(-1))
        np.testing.assert_array_equal(part.value, whole.value.reshape(n, 10)[lo:hi].reshape(-1))


def test_logit_effects_match_brute_force_and_shards() -> None:
    decoder, w_u, gain = _decoder(301), torch.randn(70, 24), torch.rand(24)
    effect = (decoder * gain) @ w_u.T
    cells = 70 * 16  # blocks of 16 rows
    promoted, suppressed = logit_effects(decoder, w_u, final_norm=gain, top=10, cells=cells)
    up, down = effect.topk(10), effect.topk(10, largest=False)
    np.testing.assert_array_equal(promoted.other.reshape(301, 10), up.indices.numpy())
    np.testing.assert_allclose(promoted.value.reshape(301, 10), up.values.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(suppressed.other.reshape(301, 10), down.indices.numpy())
    for lo, hi in [(0, 150), (150, 301), (17, 18)]:
        part, _ = logit_effects(
            decoder, w_u, final_norm=gain, top=10, cells=cells, latents=range(lo, hi)
        )
        np.testing.assert_array_equal(part.latent, np.repeat(np.arange(lo, hi), 10))
        np.testing.assert_array_equal(part.value, promoted.value.reshape(301, 10)[lo:hi].ravel())
