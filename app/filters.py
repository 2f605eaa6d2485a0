"""Jinja2 filters: number formats and how a token is shown. Output is escaped by Jinja2."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any, overload

from markupsafe import Markup, escape

from app.records import Example, Snippet
from sae.visible import visible

SHADES = 10  # highlight steps: CSS classes act-0 .. act-10 (no inline styles under the CSP)


def number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def density(value: float | None) -> str:
    """Densities span orders of magnitude: scientific below 0.1%."""
    if value is None:
        return "–"
    return f"{value:.2e}" if 0 < value < 1e-3 else f"{100 * value:.3g}%"


def shader(maximum: float | None) -> Callable[[float], str]:
    """The highlight class of a token, its activation as a share of the latent's maximum, for
    one latent's maximum: a page shades hundreds of tokens against the same one."""
    if not maximum or maximum <= 0:
        return lambda activation: "act-0"
    scale = SHADES / maximum
    return lambda a: "act-0" if a <= 0 else f"act-{max(1, min(SHADES, round(scale * a)))}"


def token(text: str) -> str:
    """A token as shown: line breaks and tabs made visible, spaces kept."""
    return visible(text, spaces=False) or "∅"


def escaped_token(text: str) -> str:
    """A token as shown, escaped: computed once per vocabulary entry by the db layer."""
    return str(escape(token(text)))


class EscapedTokens(Sequence[str]):
    """The vocabulary as pages show it, escaped: each token when first shown, then kept (a
    page holds thousands of tokens; escaping all 49,152 up front cost the first page ~1.3 s)."""

    def __init__(self, texts: list[str], *, contexts: int = 8192) -> None:
        self.texts = texts
        self._escaped: list[str | None] = [None] * len(texts)
        self._contexts: dict[int, list[str]] = {}  # context id -> its tokens, escaped
        self._kept = contexts

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return self.of(range(*index.indices(len(self))))
        return self.of([index])[0]

    def of(self, ids: Sequence[int]) -> list[str]:
        """The escaped texts of `ids`, '�' for an id outside the vocabulary: one C-level
        lookup for the whole list, as a page asks for thousands at once."""
        if not ids:
            return []
        escaped = self._escaped
        if min(ids) < 0 or max(ids) >= len(escaped):
            return [self.of([t])[0] if 0 <= t < len(escaped) else "�" for t in ids]
        parts: list[str | None] = (
            list(itemgetter(*ids)(escaped)) if len(ids) > 1 else [escaped[ids[0]]]
        )
        if None in parts:  # first shown: escape and keep (two threads may both: same text)
            for i, t in enumerate(ids):
                if parts[i] is None:
                    parts[i] = escaped[t] = escaped_token(self.texts[t])
        return parts  # type: ignore[return-value]  # no None is left

    def context(self, context_id: int, ids: Sequence[int]) -> list[str]:
        """`of(ids)` for the tokens of context `context_id` (a new list each call), kept for the
        last contexts shown: a context comes back on the page of every latent firing in it."""
        kept = self._contexts.get(context_id)
        if kept is None or len(kept) != len(ids):
            kept = self._contexts[context_id] = self.of(ids)
            if len(self._contexts) > self._kept:  # the oldest goes (threads: any one of them)
                self._contexts.pop(next(iter(self._contexts)), None)
        return list(kept)


def highlight(example: Example, *, vocab_html: EscapedTokens, maximum: float | None) -> Markup:
    """An example's context as markup: each token where the latent fires is tinted by its
    activation and titled with the value; the others are plain text. Built here rather than in
    a template loop because a latent page holds thousands of tokens."""
    return Markup(_highlighted(example, vocab_html, shader(maximum)))


def _highlighted(
    example: Example, vocab_html: EscapedTokens, shade_of: Callable[[float], str]
) -> str:
    parts = vocab_html.context(example.context_id, example.token_ids)
    activations = example.activations
    for i in compress(range(len(activations)), activations):  # the few not 0, found in C
        activation = activations[i]
        if activation > 0:  # only these become spans
            parts[i] = _tinted(parts[i], activation, i == example.position, shade_of)
    return "".join(parts)


def _tinted(text: str, activation: float, peak: bool, shade_of: Callable[[float], str]) -> str:
    """A token (escaped) where the latent fires: tinted by its activation, titled with it."""
    mark = " peak" if peak else ""
    return (
        f'<span class="tok {shade_of(activation)}{mark}" '
        f'title="{text}: {activation:.4g}">{text}</span>'
    )


def snippet(item: Snippet, *, maximum: float | None) -> Markup:
    """A search result's snippet as its `<span class="context">`, tinted as a latent page
    tints its examples (against the latent's maximum)."""
    shade_of = shader(maximum)
    parts = [
        _tinted(text, t.activation, i == item.position, shade_of) if t.activation > 0 else text
        for i, t in enumerate(item.tokens)
        for text in (escaped_token(t.text),)
    ]
    return Markup(f'<span class="context snippet">{"".join(parts)}</span>')


def example_list(
    examples: Sequence[Example], *, list_id: str, vocab_html: EscapedTokens, maximum: float | None
) -> Markup:
    """A list of a latent page's examples as its `<ol>`, each `<li>` with the example's
    activation, its highlighted context and its document. Markup made here, as `highlight`: a
    page shows 70 of them, and the same in a template cost ~6 escapes and a filter call each."""
    shade_of = shader(maximum)
    items = [f'<ol class="examples" id="{escape(list_id)}">']
    for x in examples:
        doc, context = escape(x.doc_id), int(x.context_id)
        items.append(
            f'<li class="example" data-context="{context}">'
            f'<span class="example-meta">{escape(number(x.activation))}</span> '
            f'<span class="context">{_highlighted(x, vocab_html, shade_of)}</span> '
            f'<span class="doc" title="document {doc}, context {context}">{doc}</span></li>'
        )
    items.append("</ol>")
    return Markup("\n".join(items))


# The words the overview shows for the keys of the index's metrics, the SAE's eval.json, its
# last training record and its config. The JSON API keeps the keys; a page shows each key as
# the label's `title`.
LABELS = {
    # index metrics (indexer build)
    "alive": "Alive latents",
    "dead": "Dead latents",
    "dense": "Dense latents",
    "median_density": "Median density of alive latents",
    "mean_l0": "Mean L0 (latents firing per token)",
    "median_explanation_precision": "Median explanation precision",
    "median_explanation_recall": "Median explanation recall",
    "token_sample_contexts": "Contexts in the token sample",
    "explained": "Latents explained",
    # sae eval
    "nmse": "Normalized MSE",
    "explained_variance": "Explained variance",
    "l0": "L0 (active latents per token)",
    "dead_fraction": "Dead latents, fraction",
    "loss_clean": "LM loss, clean",
    "loss_sae": "LM loss, SAE spliced in",
    "loss_zero_ablation": "LM loss, zero ablation",
    "loss_mean_ablation": "LM loss, mean ablation",
    "delta_loss": "Δ LM loss, SAE spliced in",
    "delta_loss_zero_ablation": "Δ LM loss, zero ablation",
    "delta_loss_mean_ablation": "Δ LM loss, mean ablation",
    "kl": "KL to clean (nats per token)",
    "n_tokens": "Tokens",
    "n_contexts": "Contexts",
    "explanation_precision": "Explanation precision",
    "explanation_recall": "Explanation recall",
    "explained_fraction": "Latents explained, fraction",
    "rare_fraction": "Rare latents, fraction",
    "probe_score": "Probe score",
    "ablation_sparsity": "Ablation sparsity",
    # last training step
    "step": "Step",
    "tokens": "Tokens seen",
    "auxk_loss": "AuxK loss",
    "multi_topk_nmse": "Multi-TopK normalized MSE",
    "l1": "L1 of the codes",
    "lr": "Learning rate",
    "tokens_per_s": "Tokens per second",
    # SAE config
    "d_in": "Input width (d)",
    "n_latents": "Latents",
    "k": "Active latents per token (k)",
    "activation": "Activation",
    "normalize": "Input normalization",
    "input_scale": "Input scale",
    "multi_topk": "Multi-TopK loss",
    "k_aux": "AuxK latents",
    "auxk_coef": "AuxK loss weight",
    "dead_tokens": "Unfired tokens before a latent is dead",
    "max_norm_ratio": "Largest input norm kept (× median)",
    "median_norm": "Median input norm",
    "model": "Model",
    "layer": "Layer",
    "hook": "Hook",
    "corpus": "Corpus",
    "library_version": "Library version",
}


def label(key: str) -> str:
    """The words for a metric or setting key; a key not listed reads as words all the same."""
    return LABELS.get(key) or key.replace("_", " ").capitalize()


FILTERS = {
    "number": number,
    "percent": percent,
    "density": density,
    "token": token,
    "example_list": example_list,
    "snippet": snippet,
    "label": label,
}
