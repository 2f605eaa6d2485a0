"""Hashes of ids that decide samples: fixed by the ids alone, so any split of the corpus
(chunks, torchrun ranks) picks the same contexts and pairs."""

from __future__ import annotations

import numpy as np

HASH_MAX = np.iinfo(np.uint64).max


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed bijection of uint64 that scatters nearby ids."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def context_hash(context_ids: np.ndarray, *, salt: int) -> np.ndarray:
    return mix64(np.asarray(context_ids, np.uint64) ^ mix64(np.array([salt], np.uint64)))


def pair_hash(latent_ids: np.ndarray, context_ids: np.ndarray) -> np.ndarray:
    return mix64(context_hash(context_ids, salt=1) ^ np.asarray(latent_ids, np.uint64))


def threshold(fraction: float) -> np.uint64:
    """The hash value below which a share `fraction` of ids falls."""
    if fraction >= 1.0:
        return np.uint64(HASH_MAX)
    return np.uint64(int(fraction * 2.0**64))


def in_token_sample(context_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each context's codes are kept in the token sample."""
    return context_hash(context_ids, salt=2) <= threshold(fraction)


def held_out(context_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each context of the token sample is reserved for scoring explanations."""
    return context_hash(context_ids, salt=3) <= threshold(fraction)
