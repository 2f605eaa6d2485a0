"""Histograms as inline SVG, drawn on the server: no plotting library, no script.

Every piece of text that ends up in the markup goes through `markupsafe.escape`, so labels
built from index data cannot inject markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

from app.records import HistogramBin

WIDTH, HEIGHT = 560, 180
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 44, 30, 8


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = (hi - lo) / (count - 1)
    return [lo + i * step for i in range(count)]


def histogram_svg(
    bins: Sequence[HistogramBin],
    *,
    title: str,
    x_label: str,
    x_of: Callable[[float], float] = lambda v: v,
    tick_label: Callable[[float], str] = lambda v: f"{v:.3g}",
    bar_label: Callable[[HistogramBin], str] | None = None,
) -> Markup:
    """A bar chart of `bins` (x mapped through `x_of`, e.g. log10) with a hover title per bar."""
    if not bins:
        return Markup('<p class="empty">{}</p>').format(f"{title}: no data")
    xs = [x_of(b.lower) for b in bins] + [x_of(b.upper) for b in bins]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    top = max(b.count for b in bins) or 1
    # 24 px on the right leave room for the last tick label.
    plot_w, plot_h = WIDTH - MARGIN_LEFT - 24, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    parts = [
        Markup(
            '<svg class="histogram" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
            'xmlns="http://www.w3.org/2000/svg"><title>{t}</title>'
        ).format(w=WIDTH, h=HEIGHT, t=title)
    ]
    for b in bins:
        x0 = MARGIN_LEFT + (x_of(b.lower) - lo) / span * plot_w
        x1 = MARGIN_LEFT + (x_of(b.upper) - lo) / span * plot_w
        bar_h = b.count / top * plot_h
        label = bar_label(b) if bar_label else f"{b.lower:.3g} to {b.upper:.3g}: {b.count:,}"
        parts.append(
            Markup(
                '<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}">'
                "<title>{label}</title></rect>"
            ).format(
                x=x0, y=MARGIN_TOP + plot_h - bar_h, w=max(x1 - x0 - 0.5, 0.5), h=bar_h, label=label
            )
        )
    parts.append(_axes(lo, hi, plot_w, plot_h, x_label=x_label, tick_label=tick_label, top=top))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _axes(
    lo: float,
    hi: float,
    plot_w: float,
    plot_h: float,
    *,
    x_label: str,
    tick_label: Callable[[float], str],
    top: int,
) -> Markup:
    base = MARGIN_TOP + plot_h
    parts = [
        Markup('<line class="axis" x1="{a}" y1="{b}" x2="{c}" y2="{b}"/>').format(
            a=MARGIN_LEFT, b=base, c=MARGIN_LEFT + plot_w
        ),
        Markup('<text class="tick" x="{x}" y="{y}" text-anchor="end">{v}</text>').format(
            x=MARGIN_LEFT - 4, y=MARGIN_TOP + 10, v=f"{top:,}"
        ),
    ]
    span = (hi - lo) or 1.0
    for tick in _ticks(lo, hi):
        x = MARGIN_LEFT + (tick - lo) / span * plot_w
        parts.append(
            Markup('<text class="tick" x="{x:.1f}" y="{y}" text-anchor="middle">{v}</text>').format(
                x=x, y=base + 13, v=tick_label(tick)
            )
        )
    parts.append(
        Markup('<text class="label" x="{x:.1f}" y="{y}" text-anchor="middle">{t}</text>').format(
            x=MARGIN_LEFT + plot_w / 2, y=HEIGHT - 3, t=escape(x_label)
        )
    )
    return Markup("").join(parts)


def density_histogram_svg(bins: Sequence[HistogramBin]) -> Markup:
    """Latents by log10 density (the bins are already in log10 units)."""
    return histogram_svg(
        [b for b in bins if b.count > 0] or bins,
        title="Density of all live latents",
        x_label="log10 density (share of tokens a latent fires on)",
        bar_label=lambda b: f"density 1e{b.lower:.2f} to 1e{b.upper:.2f}: {b.count:,} latents",
    )


def activation_histogram_svg(bins: Sequence[HistogramBin]) -> Markup:
    """A latent's activations on log-spaced bins, drawn on a log axis."""
    return histogram_svg(
        bins,
        title="Activations where the latent fires",
        x_label="activation (log scale)",
        x_of=lambda v: math.log10(max(v, 1e-12)),
        tick_label=lambda v: f"{10**v:.3g}",
        bar_label=lambda b: f"activation {b.lower:.3g} to {b.upper:.3g}: {b.count:,} tokens",
    )
