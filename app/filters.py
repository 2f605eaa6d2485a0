"""Jinja2 filters: number formats and how a token is shown. Output is escaped by Jinja2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from markupsafe import Markup, escape

from app.records import ExampleToken

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


@lru_cache(maxsize=65_536)
def _escaped_token(text: str) -> str:
    # A vocabulary's worth of tokens: each is shown and escaped once, not once per occurrence.
    return str(escape(token(text)))


def highlight(tokens: Sequence[ExampleToken], *, position: int, maximum: float | None) -> Markup:
    """A context as markup: each token where the latent fires is tinted by its activation and
    titled with the value; the others are plain text. Built here rather than in a template
    loop because a latent page holds thousands of tokens. Every text is escaped."""
    parts = []
    for i, item in enumerate(tokens):
        text = _escaped_token(item.text)
        if item.activation <= 0:
            parts.append(text)
            continue
        peak = " peak" if i == position else ""
        parts.append(
            f'<span class="tok {shade(item.activation, maximum)}{peak}" '
            f'title="{text}: {item.activation:.4g}">{text}</span>'
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
