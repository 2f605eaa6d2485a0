"""Jinja2 filters: number formats and how a token is shown. Output is escaped by Jinja2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

from app.records import Example

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


def shade(activation: float, maximum: float | None) -> str:
    """The highlight class of a token: its activation as a share of the latent's maximum."""
    if activation <= 0 or not maximum or maximum <= 0:
        return "act-0"
    return f"act-{max(1, min(SHADES, round(SHADES * activation / maximum)))}"


def token(text: str) -> str:
    """A token as shown: line breaks and tabs made visible, spaces kept."""
    return text.replace("\n", "⏎").replace("\r", "␍").replace("\t", "⇥") or "∅"


def escaped_token(text: str) -> str:
    """A token as shown, escaped: computed once per vocabulary entry by the db layer."""
    return str(escape(token(text)))


def highlight(example: Example, *, vocab_html: Sequence[str], maximum: float | None) -> Markup:
    """An example's context as markup: each token where the latent fires is tinted by its
    activation and titled with the value; the others are plain text. Built here rather than in
    a template loop because a latent page holds thousands of tokens; `vocab_html` holds every
    token's text already escaped."""
    known = len(vocab_html)
    parts = [vocab_html[t] if 0 <= t < known else "�" for t in example.token_ids]
    for i, activation in enumerate(example.activations):
        if activation > 0:  # a few per context: only these become spans
            text, peak = parts[i], " peak" if i == example.position else ""
            parts[i] = (
                f'<span class="tok {shade(activation, maximum)}{peak}" '
                f'title="{text}: {activation:.4g}">{text}</span>'
            )
    return Markup("".join(parts))


FILTERS = {
    "number": number,
    "percent": percent,
    "density": density,
    "shade": shade,
    "token": token,
    "highlight": highlight,
}
