"""Where a latent fires is decided in one place (sae/codes.py) and read the same everywhere."""

from __future__ import annotations

import numpy as np
import torch

from indexer.accumulate import TokenSampler
from indexer.fires import Chunk, ContextPairs
from indexer.hashing import held_out
from sae.codes import fired, is_firing


def random_codes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes (3, 5, 4) with silent slots (0), negative pre-activations and repeated latents."""
    rng = np.random.default_rng(seed)
    activations = rng.normal(size=(3, 5, 4)).astype(np.float32)
    activations[rng.random(activations.shape) < 0.3] = 0.0
    indices = rng.integers(0, 6, size=(3, 5, 4)).astype(np.int32)
    return activations, indices


def test_fired_lists_every_positive_slot_in_token_then_slot_order() -> None:
    activations, indices = random_codes()
    expected = [
        (t, int(indices.reshape(-1, 4)[t, s]), float(activations.reshape(-1, 4)[t, s]))
        for t in range(15)
        for s in range(4)
        if activations.reshape(-1, 4)[t, s] > 0
    ]
    fires = fired(activations, indices)
    assert fires.token.dtype == np.int64 and fires.latent.dtype == np.int64
    assert fires.activation.dtype == np.float32
    got = zip(fires.token.tolist(), fires.latent.tolist(), fires.activation.tolist(), strict=True)
    assert list(got) == expected


def test_is_firing_is_the_same_rule_for_numpy_and_torch() -> None:
    activations, _ = random_codes(1)
    mask = is_firing(activations)
    assert isinstance(mask, np.ndarray)
    assert np.array_equal(is_firing(torch.from_numpy(activations)).numpy(), mask)
    assert not is_firing(np.zeros(3)).any()  # a silent slot (activation 0) does not fire


def test_the_pairs_of_a_chunk_are_its_fires_grouped_by_latent_and_context() -> None:
    activations, indices = random_codes(2)
    chunk = Chunk(7, np.zeros((3, 6), np.int64), activations, indices.astype(np.int64))
    pairs = ContextPairs.of(chunk, n_latents=6)
    fires = fired(activations, indices)
    assert np.array_equal(pairs.latent, fires.latent)
    assert np.array_equal(pairs.flat, fires.token)
    best: dict[tuple[int, int], float] = {}
    for token, latent, activation in zip(*fires, strict=True):
        key = (int(latent), 7 + int(token) // 5)
        best[key] = max(best.get(key, 0.0), float(activation))
    found = zip(pairs.pair_latent.tolist(), pairs.pair_context.tolist(), strict=True)
    assert list(found) == sorted(best)
    assert pairs.pair_max.tolist() == [np.float32(best[key]) for key in sorted(best)]


def test_the_token_sampler_hands_explain_its_contexts_by_id() -> None:
    activations, indices = random_codes(3)
    tokens = np.arange(18).reshape(3, 6)
    sampler = TokenSampler(fraction=1.0)
    sampler.update(Chunk(3, tokens[1:], activations[1:], indices[1:].astype(np.int64)))
    other = TokenSampler(fraction=1.0)
    other.update(Chunk(2, tokens[:1], activations[:1], indices[:1].astype(np.int64)))
    sampler.merge(other)  # the later chunk first: the sample is still ordered by context id
    sample = sampler.sample(held_out_fraction=0.5)
    assert np.array_equal(sample.token_ids, tokens)
    assert np.array_equal(sample.activations, activations)
    assert np.array_equal(sample.indices, indices)
    assert np.array_equal(sample.held_out, held_out(np.array([2, 3, 4]), 0.5))
