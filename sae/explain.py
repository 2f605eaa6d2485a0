"""Explanations of SAE latents that need no external LLM: n-gram patterns with precision/recall.

N2G-style ("neuron to graph", Foote et al. 2023): a latent is explained by a few token n-grams
that end on the token where it fires, e.g. 'from[␣import]'. Each explanation is scored the way
Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", §4.5) score simple explanations:
precision and recall of the explanation predicting where the latent fires, on contexts that
were not used to choose it. The rendered text is stored in the index so it can be searched.

The algorithm, exactly (a latent "fires" at a position when its activation is > 0, as
`sae.codes.fired` finds; position 0 never fires, but its token may start an n-gram that ends
at position 1 or 2):
1. The sample's contexts with held_out False are the mining data; those with held_out True are
   the held-out data.
2. Candidates for latent ℓ: every n-gram (n = 1..max_n) ending at a position where ℓ fires in
   the mining contexts, i.e. in ℓ's examples in a uniform sample of the corpus. An n-gram never
   reaches before position 0.
3. On the mining contexts only: matches(g) = positions 1..T-1 where g ends; hits(g, ℓ) = those
   where ℓ fires. Candidates with matches < min_matches are dropped.
4. Greedy: add, up to max_patterns times, the candidate that maximises the F1 of the
   disjunction of the chosen patterns on the mining data; stop when F1 does not increase. Two
   n-grams ending at one position both match only if one is a suffix of the other, so
   candidates that are a suffix of a chosen pattern, or have one as a suffix, are skipped: the
   chosen patterns match disjoint positions and the disjunction's counts are exact sums. Ties
   go to more hits, then the shorter n-gram, then smaller token ids (oldest token first).
5. The same counts on the held-out contexts give every Pattern's and Explanation's precision
   and recall (None where the denominator is 0).
6. A pattern renders as its tokens in order with the firing token in brackets; spaces show as
   '␣', newlines as '⏎', tabs as '⇥'. An explanation's text joins its patterns with ' | '.
Latents without any chosen pattern get no explanation: a latent that never fires in the mining
contexts has no candidates, and one whose candidates all match too rarely has none left. For big
corpora the sample is capped, so very rare latents may go unexplained.

Everything is counted with numpy over integer keys: an n-gram is packed into one int64 (each
token + 1 in its own bit field, the firing token in the lowest), so "g ends here" is an integer
comparison and "a is a suffix of b" is `b & mask(len(a)) == a`. The greedy step runs for all
latents at once over a flat candidate array grouped by latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from sae.codes import Fired, fired
from sae.visible import visible

SEPARATOR = " | "


@dataclass(frozen=True)
class TokenSample:
    """Whole contexts drawn uniformly from the corpus, with every token's sparse code."""

    token_ids: np.ndarray  # (S, T) int32, the contexts' tokens, position 0 included
    indices: np.ndarray  # (S, T-1, k) int32: the k latents the SAE selected at positions 1..T-1
    activations: np.ndarray  # (S, T-1, k) float32: their activations; <= 0: did not fire
    held_out: np.ndarray  # (S,) bool: contexts reserved for scoring, never used for mining

    def __post_init__(self) -> None:
        if self.token_ids.ndim != 2 or self.token_ids.shape[1] < 2:
            raise ValueError("token_ids must be (S, T) with T >= 2")
        n_contexts, length = self.token_ids.shape
        if self.indices.ndim != 3 or self.indices.shape[:2] != (n_contexts, length - 1):
            raise ValueError(f"indices must be ({n_contexts}, {length - 1}, k)")
        if self.activations.shape != self.indices.shape:
            raise ValueError("activations must have the shape of indices")
        if self.held_out.shape != (n_contexts,):
            raise ValueError(f"held_out must be ({n_contexts},)")

    @cached_property
    def fires(self) -> Fired:
        """Where the codes fire, tokens flat over (S, T-1): found once for everyone who reads
        the sample (explanations, co-activation, token tables)."""
        return fired(self.activations, self.indices)


class Pattern(NamedTuple):
    """One n-gram ending on the token where the latent fires."""

    latent_id: int
    rank: int
    """0 = chosen first."""
    token_ids: tuple[int, ...]
    """The n-gram, oldest token first; the last is the firing token."""
    text: str
    """Readable, e.g. 'from[␣import]'."""
    precision: float | None
    """On held-out contexts: hits / matches; None when the n-gram never occurs there."""
    recall: float | None
    """On held-out contexts: share of the latent's fires this pattern covers; None if none."""
    n_matches: int
    """Held-out positions where the n-gram ends."""
    n_hits: int
    """Of those, positions where the latent fires."""


class Explanation(NamedTuple):
    """A latent's chosen patterns and how well their disjunction predicts its fires."""

    latent_id: int
    text: str
    """The patterns' texts joined by ' | '."""
    precision: float | None
    """Of the disjunction of the patterns, on held-out contexts."""
    recall: float | None
    """Of the disjunction of the patterns, on held-out contexts."""
    patterns: list[Pattern]


class NgramTable(NamedTuple):
    """Every n-gram ending at every position of the sample, as dense ids."""

    keys: np.ndarray  # (G,) int64 packed n-grams, sorted; a dense id indexes this
    lengths: np.ndarray  # (G,) int64: n of each n-gram
    ids: np.ndarray  # (S*(T-1), max_n) int64: id of the n-gram of length n+1 ending here; -1: none
    bits: int  # width of one token's field in a packed key


class Candidates(NamedTuple):
    """(latent, n-gram) candidates with their mining counts, grouped by latent."""

    latents: np.ndarray  # (C,) int64, sorted
    ngrams: np.ndarray  # (C,) int64 dense n-gram ids
    hits: np.ndarray  # (C,) int64
    matches: np.ndarray  # (C,) int64


class Chosen(NamedTuple):
    """The patterns the greedy step chose, sorted by latent then rank."""

    latents: np.ndarray  # (P,) int64
    ranks: np.ndarray  # (P,) int64
    ngrams: np.ndarray  # (P,) int64 dense n-gram ids


def explain_latents(
    sample: TokenSample,
    *,
    n_latents: int,
    vocab: Sequence[str],
    max_patterns: int = 3,
    max_n: int = 3,
    min_matches: int = 2,
) -> list[Explanation]:
    """One Explanation per latent that gets at least one pattern, sorted by latent id."""
    bits = _check_inputs(sample, n_latents=n_latents, vocab_size=len(vocab), max_n=max_n)
    if max_patterns < 1 or min_matches < 1:
        raise ValueError("max_patterns and min_matches must be at least 1")
    mining = ~sample.held_out.astype(bool)  # (S,)
    table = ngram_table(sample.token_ids, max_n=max_n, bits=bits)
    fires = sample.fires
    length = sample.token_ids.shape[1] - 1
    fire_mining = mining[fires.token // length]  # (F,)
    position_mining = np.repeat(mining, length)  # (S*(T-1),)
    mining_matches = _count_matches(table, position_mining)  # (G,)
    mining_fires = np.bincount(fires.latent[fire_mining], minlength=n_latents)  # (L,)
    candidates = _candidates(
        table,
        _select(fires, fire_mining),
        mining_matches=mining_matches,
        min_matches=min_matches,
    )
    chosen = choose_patterns(
        candidates, table, mining_fires=mining_fires, max_patterns=max_patterns
    )
    held_out_fires = _select(fires, ~fire_mining)
    return _assemble(
        chosen,
        table,
        held_out_fires,
        held_out_matches=_count_matches(table, ~position_mining),
        n_latents=n_latents,
        vocab=vocab,
    )


def _check_inputs(sample: TokenSample, *, n_latents: int, vocab_size: int, max_n: int) -> int:
    """Check ids against n_latents and the vocabulary; return the bit width of a token field."""
    if n_latents < 1 or max_n < 1:
        raise ValueError("n_latents and max_n must be at least 1")
    for name, ids, bound in [
        ("sample.token_ids", sample.token_ids, vocab_size),
        ("sample.indices", sample.indices, n_latents),
    ]:
        if ids.size and (ids.min() < 0 or ids.max() >= bound):
            raise ValueError(f"{name} must lie in [0, {bound})")
    bits = max(1, vocab_size.bit_length())  # fields hold token + 1 <= vocab_size
    if bits * max_n > 63:
        raise ValueError(f"max_n={max_n} n-grams of a {vocab_size}-token vocabulary exceed int64")
    return bits


def ngram_table(token_ids: np.ndarray, *, max_n: int, bits: int) -> NgramTable:
    """Pack the n-grams (n = 1..max_n) ending at positions 1..T-1 and give them dense ids."""
    keys = _packed_ngrams(token_ids, max_n=max_n, bits=bits)  # (S, T-1, max_n)
    keys = keys.reshape(-1, max_n)  # (S*(T-1), max_n)
    present = keys > 0  # 0 = the n-gram would reach before position 0
    unique_keys, _ = count_distinct(keys[present])  # (G,)
    ids = np.full(keys.shape, -1, dtype=np.int64)  # (S*(T-1), max_n)
    ids[present] = np.searchsorted(unique_keys, keys[present])
    return NgramTable(unique_keys, _ngram_lengths(unique_keys, bits=bits), ids, bits)


def _packed_ngrams(token_ids: np.ndarray, *, max_n: int, bits: int) -> np.ndarray:
    """(S, T) tokens -> (S, T-1, max_n) packed keys of the n-grams ending at 1..T-1, 0 if none."""
    shifted = token_ids.astype(np.int64) + 1  # (S, T); +1 so that an empty field means "no token"
    n_contexts, length = shifted.shape
    keys = np.zeros((n_contexts, length - 1, max_n), dtype=np.int64)  # (S, T-1, max_n)
    key = shifted[:, 1:].copy()  # (S, T-1) unigrams at positions 1..T-1
    keys[:, :, 0] = key
    for n in range(2, max_n + 1):
        # position p = column + 1 needs the token at p - n + 1 >= 0, i.e. column >= n - 2
        older = np.zeros_like(key)  # (S, T-1)
        older[:, n - 2 :] = shifted[:, : length - n + 1]
        key = key + (older << (bits * (n - 1)))
        keys[:, n - 2 :, n - 1] = key[:, n - 2 :]
    return keys


def _ngram_lengths(keys: np.ndarray, *, bits: int) -> np.ndarray:
    """Number of tokens in each packed key: its non-empty fields, which are the lowest ones."""
    lengths = np.zeros(keys.shape, dtype=np.int64)
    for field in range(63 // bits):
        lengths += (keys >> (bits * field)) > 0
    return lengths


def _suffix_mask(lengths: np.ndarray, *, bits: int) -> np.ndarray:
    """Bit masks that keep the last `lengths` tokens of a packed key."""
    return (np.int64(1) << (bits * lengths)) - 1


def _select(fires: Fired, keep: np.ndarray) -> Fired:
    """The fires where `keep` (F,) is True, in order."""
    return Fired(fires.token[keep], fires.latent[keep], fires.activation[keep])


def _count_matches(table: NgramTable, positions: np.ndarray) -> np.ndarray:
    """(G,) how many of the selected positions each n-gram ends at."""
    ids = table.ids[positions]  # (N, max_n)
    return np.bincount(ids[ids >= 0], minlength=len(table.keys))


def _pair_keys(table: NgramTable, fires: Fired) -> np.ndarray:
    """One int64 per (fire, n-gram ending there): latent * G + n-gram id."""
    ids = table.ids[fires.token]  # (F, max_n)
    pairs = fires.latent[:, None] * len(table.keys) + ids  # (F, max_n)
    return pairs[ids >= 0]


def count_distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_counts=True), but with the fast default sort."""
    keys = np.sort(keys)
    starts = np.flatnonzero(np.r_[len(keys) > 0, keys[1:] != keys[:-1]])
    return keys[starts], np.diff(np.r_[starts, len(keys)])


def _candidates(
    table: NgramTable, mining_fires: Fired, *, mining_matches: np.ndarray, min_matches: int
) -> Candidates:
    """Steps 2-3: the (latent, n-gram) candidates that match often enough, with mining hits."""
    frequent = mining_matches >= min_matches  # (G,)
    pairs = _pair_keys(table, mining_fires)
    # sorted pair keys (latent * G + n-gram id) group the candidates by latent
    pairs, hits = count_distinct(pairs[frequent[pairs % len(table.keys)]])  # (C,), (C,)
    ngrams = pairs % len(table.keys)
    return Candidates(pairs // len(table.keys), ngrams, hits, mining_matches[ngrams])


def choose_patterns(
    candidates: Candidates,
    table: NgramTable,
    *,
    mining_fires: np.ndarray,
    max_patterns: int,
) -> Chosen:
    """Step 4 for all latents at once: greedy patterns maximising the disjunction's mining F1."""
    if len(candidates.latents) == 0:
        return _no_patterns()
    new_latent = np.r_[True, candidates.latents[1:] != candidates.latents[:-1]]  # (C,)
    starts = np.flatnonzero(new_latent)  # (Λ,) first candidate of each latent
    segment = np.cumsum(new_latent) - 1  # (C,) which latent's group a candidate is in
    latents = candidates.latents[starts]  # (Λ,)
    fires = mining_fires[latents][segment]  # (C,)
    keys = table.keys[candidates.ngrams]  # (C,)
    lengths = table.lengths[candidates.ngrams]  # (C,)
    hits_sum = np.zeros(len(starts), dtype=np.int64)  # (Λ,) the disjunction's hits so far
    matches_sum = np.zeros(len(starts), dtype=np.int64)  # (Λ,) and its matches
    best_f1 = np.zeros(len(starts))  # (Λ,)
    allowed = np.ones(len(keys), dtype=bool)  # (C,)
    chosen_latents, chosen_ranks, chosen_ngrams = [], [], []
    for rank in range(max_patterns):
        # exact integer numerator and denominator: equal F1s compare equal as floats
        f1 = (2 * (hits_sum[segment] + candidates.hits)) / (
            matches_sum[segment] + candidates.matches + fires
        )  # (C,)
        f1 = np.where(allowed & (f1 > best_f1[segment]), f1, -1.0)  # (C,)
        top = np.maximum.reduceat(f1, starts)  # (Λ,)
        tied = np.flatnonzero((f1 >= 0) & (f1 == top[segment]))  # few per latent
        if len(tied) == 0:
            break
        tied = tied[np.lexsort((keys[tied], lengths[tied], -candidates.hits[tied], segment[tied]))]
        winners = tied[np.r_[True, segment[tied][1:] != segment[tied][:-1]]]  # (W,) one a latent
        won = segment[winners]  # (W,)
        hits_sum[won] += candidates.hits[winners]
        matches_sum[won] += candidates.matches[winners]
        best_f1[won] = f1[winners]
        chosen_latents.append(latents[won])
        chosen_ranks.append(np.full(len(won), rank, dtype=np.int64))
        chosen_ngrams.append(candidates.ngrams[winners])
        allowed &= ~_suffix_related(keys, lengths, segment, winners, won, bits=table.bits)
    if not chosen_latents:
        return _no_patterns()
    result = Chosen(*(np.concatenate(c) for c in (chosen_latents, chosen_ranks, chosen_ngrams)))
    order = np.lexsort((result.ranks, result.latents))
    return Chosen(result.latents[order], result.ranks[order], result.ngrams[order])


def _suffix_related(
    keys: np.ndarray,
    lengths: np.ndarray,
    segment: np.ndarray,
    winners: np.ndarray,
    won: np.ndarray,
    *,
    bits: int,
) -> np.ndarray:
    """(C,) candidates that are a suffix of their latent's new pattern, or have it as a suffix."""
    n_segments = int(segment[-1]) + 1
    chosen_key = np.zeros(n_segments, dtype=np.int64)  # (Λ,) 0: no new pattern
    chosen_length = np.zeros(n_segments, dtype=np.int64)  # (Λ,)
    chosen_key[won] = keys[winners]
    chosen_length[won] = lengths[winners]
    other_key = chosen_key[segment]  # (C,)
    other_length = chosen_length[segment]  # (C,)
    shorter = lengths <= other_length  # (C,) candidate could be a suffix of the pattern
    mask = _suffix_mask(np.minimum(lengths, other_length), bits=bits)  # (C,)
    related = np.where(shorter, (other_key & mask) == keys, (keys & mask) == other_key)
    return related & (other_length > 0)


def _no_patterns() -> Chosen:
    empty = np.zeros(0, dtype=np.int64)
    return Chosen(empty, empty, empty)


def _held_out_hits(table: NgramTable, chosen: Chosen, held_out_fires: Fired) -> np.ndarray:
    """(P,) held-out positions where each chosen pattern ends and its latent fires."""
    wanted = chosen.latents * len(table.keys) + chosen.ngrams  # (P,) distinct pair keys
    order = np.argsort(wanted)
    pairs = _pair_keys(table, held_out_fires)  # (H,)
    at = np.minimum(np.searchsorted(wanted[order], pairs), len(wanted) - 1)  # (H,)
    found = wanted[order][at] == pairs  # (H,)
    hits = np.zeros(len(wanted), dtype=np.int64)
    hits[order] = np.bincount(at[found], minlength=len(wanted))
    return hits


def _assemble(
    chosen: Chosen,
    table: NgramTable,
    held_out_fires: Fired,
    *,
    held_out_matches: np.ndarray,
    n_latents: int,
    vocab: Sequence[str],
) -> list[Explanation]:
    """Step 5-6: score the chosen patterns on the held-out contexts and render them."""
    if len(chosen.latents) == 0:
        return []
    hits = _held_out_hits(table, chosen, held_out_fires).tolist()  # (P,)
    matches = held_out_matches[chosen.ngrams].tolist()  # (P,)
    fires = np.bincount(held_out_fires.latent, minlength=n_latents).tolist()  # (L,)
    explanations: list[Explanation] = []
    patterns: list[Pattern] = []
    for i, (latent, rank, ngram) in enumerate(
        zip(chosen.latents.tolist(), chosen.ranks.tolist(), chosen.ngrams.tolist(), strict=True)
    ):
        tokens = unpack_ngram(int(table.keys[ngram]), bits=table.bits)
        patterns.append(
            Pattern(
                latent_id=latent,
                rank=rank,
                token_ids=tokens,
                text=render_ngram(tokens, vocab),
                precision=_ratio(hits[i], matches[i]),
                recall=_ratio(hits[i], fires[latent]),
                n_matches=matches[i],
                n_hits=hits[i],
            )
        )
        if i + 1 == len(hits) or chosen.latents[i + 1] != latent:
            explanations.append(_explanation(patterns, held_out_fires=fires[latent]))
            patterns = []
    return explanations


def _explanation(patterns: list[Pattern], *, held_out_fires: int) -> Explanation:
    """The disjunction of patterns that match disjoint positions: its counts are sums."""
    hits = sum(p.n_hits for p in patterns)
    matches = sum(p.n_matches for p in patterns)
    return Explanation(
        latent_id=patterns[0].latent_id,
        text=SEPARATOR.join(p.text for p in patterns),
        precision=_ratio(hits, matches),
        recall=_ratio(hits, held_out_fires),
        patterns=patterns,
    )


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def unpack_ngram(key: int, *, bits: int) -> tuple[int, ...]:
    """A packed key back to its token ids, oldest first."""
    tokens = []
    while key:
        tokens.append((key & ((1 << bits) - 1)) - 1)
        key >>= bits
    return tuple(reversed(tokens))


def render_ngram(token_ids: Sequence[int], vocab: Sequence[str]) -> str:
    """Tokens in order, the firing (last) one in brackets, whitespace made visible.

    The text is data, not markup: escaping it for HTML is the app's job.
    """
    texts = [visible(vocab[t]) for t in token_ids]
    return "".join(texts[:-1]) + "[" + texts[-1] + "]"
