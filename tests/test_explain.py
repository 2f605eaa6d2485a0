"""N-gram explanations of latents: planted latents, and parity with a plain reference."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from sae.explain import (
    Explanation,
    TokenSample,
    explain_latents,
    render_ngram,
)

VOCAB = [f"w{i}" for i in range(40)]


def random_codes(
    rng: np.random.Generator, tokens: np.ndarray, *, n_latents: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct latents at every position; (token % n_latents) first, firing 70% of the time."""
    contexts, length = tokens.shape
    favoured = tokens[:, 1:] % n_latents  # (S, T-1)
    scores = rng.random((contexts, length - 1, n_latents))
    np.put_along_axis(scores, favoured[..., None], -1.0, axis=-1)
    indices = np.argsort(scores, axis=-1)[..., :k].astype(np.int32)  # (S, T-1, k)
    activations = rng.normal(size=indices.shape).astype(np.float32)
    activations[..., 0] = np.where(rng.random(favoured.shape) < 0.7, 1.0, -1.0)
    return indices, activations


def random_sample(
    seed: int, *, contexts: int = 60, length: int = 12, vocab: int = 25, n_latents: int = 8
) -> TokenSample:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)  # Zipf-ish, so that n-grams repeat
    tokens = rng.choice(vocab, size=(contexts, length), p=weights / weights.sum())
    indices, activations = random_codes(rng, tokens, n_latents=n_latents, k=3)
    held_out = rng.random(contexts) < 0.3
    return TokenSample(tokens.astype(np.int32), indices, activations, held_out)


def planted(
    tokens: np.ndarray, fires: np.ndarray, *, latent: int, n_latents: int, seed: int = 0
) -> TokenSample:
    """A sample where `latent` fires exactly where fires (S, T-1) is True, others at random."""
    rng = np.random.default_rng(seed)
    scores = rng.random((*fires.shape, n_latents))  # (S, T-1, L)
    scores[..., latent] = 2.0  # sorts last: other latents fill the k slots
    indices = np.argsort(scores, axis=-1)[..., :3].astype(np.int32)  # (S, T-1, k)
    activations = rng.normal(size=indices.shape).astype(np.float32)
    indices[..., 0] = np.where(fires, latent, indices[..., 0])
    activations[..., 0] = np.where(fires, 2.0, activations[..., 0])
    held_out = np.arange(len(tokens)) % 3 == 0
    return TokenSample(tokens.astype(np.int32), indices, activations, held_out)


# A plain reference: Python loops over positions, exact fractions.


def fires_at(sample: TokenSample, context: int, position: int, latent: int) -> bool:
    slot = sample.indices[context, position - 1] == latent
    return bool((sample.activations[context, position - 1][slot] > 0).any())


def ngrams_ending(tokens: np.ndarray, position: int, max_n: int) -> list[tuple[int, ...]]:
    return [
        tuple(int(t) for t in tokens[position - n + 1 : position + 1])
        for n in range(1, min(max_n, position + 1) + 1)
    ]


def counts(
    sample: TokenSample, *, held_out: bool, n_latents: int, max_n: int
) -> tuple[Counter[tuple[int, ...]], Counter[tuple[tuple[int, ...], int]], Counter[int]]:
    """matches per n-gram, hits per (n-gram, latent), fires per latent on one side of the split."""
    matches: Counter[tuple[int, ...]] = Counter()
    hits: Counter[tuple[tuple[int, ...], int]] = Counter()
    fires: Counter[int] = Counter()
    for s in range(len(sample.token_ids)):
        if bool(sample.held_out[s]) != held_out:
            continue
        for p in range(1, sample.token_ids.shape[1]):
            grams = ngrams_ending(sample.token_ids[s], p, max_n)
            matches.update(grams)
            for latent in range(n_latents):
                if fires_at(sample, s, p, latent):
                    fires[latent] += 1
                    hits.update((g, latent) for g in grams)
    return matches, hits, fires


def is_suffix(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) <= len(b) and b[len(b) - len(a) :] == a


def reference_patterns(
    sample: TokenSample,
    *,
    n_latents: int,
    max_patterns: int,
    max_n: int,
    min_matches: int,
) -> dict[int, list[tuple[int, ...]]]:
    """Chosen n-grams per latent, by the module docstring's steps 1-4."""
    matches, hits, fires = counts(sample, held_out=False, n_latents=n_latents, max_n=max_n)
    candidates: dict[int, set[tuple[int, ...]]] = {latent: set() for latent in range(n_latents)}
    for (gram, latent), _ in hits.items():
        candidates[latent].add(gram)
    chosen: dict[int, list[tuple[int, ...]]] = {}
    for latent, grams in candidates.items():
        usable = [g for g in grams if matches[g] >= min_matches]
        picked: list[tuple[int, ...]] = []
        total_hits, total_matches, best = 0, 0, Fraction(0)
        while len(picked) < max_patterns:
            options = [
                (
                    Fraction(
                        2 * (total_hits + hits[g, latent]),
                        total_matches + matches[g] + fires[latent],
                    ),
                    g,
                )
                for g in usable
                if not any(is_suffix(g, c) or is_suffix(c, g) for c in picked)
            ]
            if not options:
                break
            f1, gram = min(options, key=lambda o: (-o[0], -hits[o[1], latent], len(o[1]), o[1]))
            if f1 <= best:
                break
            picked.append(gram)
            total_hits, total_matches, best = (
                total_hits + hits[gram, latent],
                total_matches + matches[gram],
                f1,
            )
        if picked:
            chosen[latent] = picked
    return chosen


def ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def check_scores(explanation: Explanation, sample: TokenSample, *, n_latents: int) -> None:
    """Every held-out number equals a count over the held-out contexts."""
    matches, hits, fires = counts(sample, held_out=True, n_latents=n_latents, max_n=3)
    latent = explanation.latent_id
    for pattern in explanation.patterns:
        gram = pattern.token_ids
        assert pattern.n_matches == matches[gram]
        assert pattern.n_hits == hits[gram, latent]
        assert pattern.precision == ratio(hits[gram, latent], matches[gram])
        assert pattern.recall == ratio(hits[gram, latent], fires[latent])
    # the disjunction, evaluated position by position
    any_hits = any_matches = 0
    for s in np.flatnonzero(sample.held_out):
        for p in range(1, sample.token_ids.shape[1]):
            grams = ngrams_ending(sample.token_ids[s], p, 3)
            if any(pattern.token_ids in grams for pattern in explanation.patterns):
                any_matches += 1
                any_hits += fires_at(sample, int(s), p, latent)
    assert explanation.precision == pytest.approx(ratio(any_hits, any_matches))
    assert explanation.recall == pytest.approx(ratio(any_hits, fires[latent]))


# Planted latents.


def test_latent_firing_on_one_token_is_explained_by_that_token() -> None:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 30, size=(60, 12))
    sample = planted(tokens, tokens[:, 1:] == 7, latent=5, n_latents=8)
    explanations = {e.latent_id: e for e in explain_latents(sample, n_latents=8, vocab=VOCAB)}
    explanation = explanations[5]
    assert explanation.text == "[w7]"
    assert (explanation.precision, explanation.recall) == (1.0, 1.0)
    assert [p.token_ids for p in explanation.patterns] == [(7,)]


def test_latent_firing_on_a_bigram_gets_the_bigram_not_the_unigram() -> None:
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 20, size=(60, 12))
    starts = rng.random((60, 11)) < 0.15
    tokens[:, :-1][starts] = 3
    tokens[:, 1:][starts] = 4
    fires = (tokens[:, 1:] == 4) & (tokens[:, :-1] == 3)  # (S, T-1)
    assert ((tokens[:, 1:] == 4) & ~fires).any()  # 4 also occurs after other tokens
    sample = planted(tokens, fires, latent=2, n_latents=6)
    explanations = explain_latents(sample, n_latents=6, vocab=VOCAB)
    explanation = next(e for e in explanations if e.latent_id == 2)
    assert [p.token_ids for p in explanation.patterns] == [(3, 4)]
    assert explanation.text == "w3[w4]"
    assert (explanation.precision, explanation.recall) == (1.0, 1.0)


def test_latent_firing_on_two_tokens_gets_both_patterns() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 20, size=(80, 12))
    sample = planted(tokens, np.isin(tokens[:, 1:], [5, 9]), latent=1, n_latents=6)
    explanations = explain_latents(sample, n_latents=6, vocab=VOCAB)
    explanation = next(e for e in explanations if e.latent_id == 1)
    assert sorted(p.token_ids for p in explanation.patterns) == [(5,), (9,)]
    assert [p.rank for p in explanation.patterns] == [0, 1]
    assert explanation.text == " | ".join(p.text for p in explanation.patterns)
    assert (explanation.precision, explanation.recall) == (1.0, 1.0)


def test_equal_f1_goes_to_the_pattern_with_more_hits() -> None:
    # token 1: 2 matches, 1 hit; token 2: 8 matches, 2 hits; token 3: 3 matches, 1 hit.
    # With 4 fires, [w1] and [w2] both have F1 = 1/3; [w2] covers more fires.
    tokens = np.array(
        [
            [0, 1, 0, 1, 0, 2, 0, 2, 0, 2, 0, 2],
            [0, 2, 0, 2, 0, 2, 0, 2, 0, 3, 0, 3],
            [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.int32,
    )
    activations = np.full((3, 11, 1), -1.0, dtype=np.float32)
    for context, position in [(0, 1), (0, 5), (0, 7), (1, 9)]:
        activations[context, position - 1, 0] = 1.0
    sample = TokenSample(
        tokens, np.zeros((3, 11, 1), dtype=np.int32), activations, np.zeros(3, dtype=bool)
    )
    (explanation,) = explain_latents(sample, n_latents=1, vocab=VOCAB)
    assert [p.token_ids for p in explanation.patterns] == [(2,), (1,), (3,)]
    assert explanation.precision is None and explanation.recall is None  # nothing held out


def test_rendering_keeps_tokens_verbatim_and_shows_whitespace() -> None:
    vocab = ["from", " import", "\n", "\t", "[", "]", "<script>", "a b"]
    assert render_ngram([0, 1], vocab) == "from[␣import]"
    assert render_ngram([2, 3], vocab) == "⏎[⇥]"
    assert render_ngram([4, 5], vocab) == "[[]]"
    assert render_ngram([7, 6], vocab) == "a␣b[<script>]"


def test_hostile_token_text_is_stored_verbatim() -> None:
    vocab = [*VOCAB[:20], "<script>alert(1)</script>", " x"]
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 22, size=(60, 12))
    sample = planted(tokens, tokens[:, 1:] == 20, latent=0, n_latents=6)
    explanations = explain_latents(sample, n_latents=6, vocab=vocab)
    assert explanations[0].latent_id == 0
    assert explanations[0].text == "[<script>alert(1)</script>]"


# Random data against the reference.


@pytest.mark.parametrize(
    ("seed", "vocab", "max_patterns", "max_n", "min_matches"),
    [
        (0, 25, 3, 3, 2),
        (1, 25, 2, 3, 2),
        (2, 25, 3, 2, 1),
        (3, 25, 1, 3, 3),
        (4, 25, 4, 1, 2),
        (5, 12, 4, 3, 2),  # a small vocabulary: bigrams and trigrams get chosen
        (6, 12, 3, 3, 1),
    ],
)
def test_patterns_and_scores_match_the_reference(
    seed: int, vocab: int, max_patterns: int, max_n: int, min_matches: int
) -> None:
    sample = random_sample(seed, vocab=vocab)
    settings = {"max_patterns": max_patterns, "max_n": max_n, "min_matches": min_matches}
    explanations = explain_latents(sample, n_latents=8, vocab=VOCAB, **settings)
    expected = reference_patterns(sample, n_latents=8, **settings)
    assert {e.latent_id: [p.token_ids for p in e.patterns] for e in explanations} == expected
    assert [e.latent_id for e in explanations] == sorted(expected)
    for explanation in explanations:
        check_scores(explanation, sample, n_latents=8)


def test_patterns_are_never_suffixes_of_each_other() -> None:
    sample = random_sample(5, contexts=80, vocab=12)
    explanations = explain_latents(sample, n_latents=8, vocab=VOCAB, max_patterns=4)
    assert explanations
    for explanation in explanations:
        grams = [p.token_ids for p in explanation.patterns]
        assert 1 <= len(grams) <= 4
        assert [p.rank for p in explanation.patterns] == list(range(len(grams)))
        for i, a in enumerate(grams):
            for b in grams[i + 1 :]:
                assert not is_suffix(a, b) and not is_suffix(b, a)


def test_held_out_contexts_change_scores_but_not_patterns() -> None:
    sample = random_sample(6)
    before = explain_latents(sample, n_latents=8, vocab=VOCAB)
    rng = np.random.default_rng(7)
    held = sample.held_out
    indices, activations = sample.indices.copy(), sample.activations.copy()
    activations[held] = rng.normal(size=activations[held].shape)
    after = explain_latents(
        TokenSample(sample.token_ids, indices, activations, held), n_latents=8, vocab=VOCAB
    )
    assert [e.text for e in after] == [e.text for e in before]
    assert [(e.precision, e.recall) for e in after] != [(e.precision, e.recall) for e in before]


def test_latents_that_never_fire_get_no_explanation() -> None:
    sample = random_sample(8)
    silent = np.isin(sample.indices, [3, 6])
    activations = np.where(silent, -1.0, sample.activations).astype(np.float32)
    sample = TokenSample(sample.token_ids, sample.indices, activations, sample.held_out)
    latents = [e.latent_id for e in explain_latents(sample, n_latents=8, vocab=VOCAB)]
    assert 3 not in latents and 6 not in latents
    assert latents == sorted(latents) and len(latents) == 6


def test_same_input_same_output() -> None:
    sample = random_sample(9)
    first = explain_latents(sample, n_latents=8, vocab=VOCAB)
    assert first == explain_latents(sample, n_latents=8, vocab=VOCAB)


def test_no_mining_contexts_means_no_explanations() -> None:
    sample = random_sample(10)
    everything_held_out = np.ones(len(sample.token_ids), dtype=bool)
    sample = TokenSample(sample.token_ids, sample.indices, sample.activations, everything_held_out)
    assert explain_latents(sample, n_latents=8, vocab=VOCAB) == []


def test_bad_inputs_are_refused() -> None:
    sample = random_sample(11)
    with pytest.raises(ValueError, match="token_ids"):
        explain_latents(sample, n_latents=8, vocab=VOCAB[:10])
    with pytest.raises(ValueError, match="indices"):
        explain_latents(sample, n_latents=4, vocab=VOCAB)
    with pytest.raises(ValueError, match="indices"):
        TokenSample(sample.token_ids, sample.indices[:, 1:], sample.activations, sample.held_out)
    with pytest.raises(ValueError, match="min_matches"):
        explain_latents(sample, n_latents=8, vocab=VOCAB, min_matches=0)
