"""Line, scatter, bar and histogram charts as hand-written SVG, for reports that render offline.

Pure functions: the same data give byte-identical markup, so reports diff cleanly. Colours and
dashes are presentation attributes, never `style=`, so the same SVG passes the app's
Content-Security-Policy. All text goes through `html.escape`, and the output parses as XML.
There is no `xmlns`: HTML5 does not need it inline, and it would put a URL into pages promised
to have none.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Literal, NamedTuple, Protocol

Style = Literal["line", "points", "line+points", "dashed"]

# Okabe & Ito (2008), "Color Universal Design": distinct under common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 30, 44
LEGEND_WIDTH = 132
GRID, AXIS, MUTED = "#e3e7ec", "#888888", "#555555"
LIMIT = 1e100  # larger magnitudes (and smaller, on a log axis) are not drawn


class Series(NamedTuple):
    """One set of (x, y) points drawn in one colour."""

    label: str
    points: Sequence[tuple[float, float]]
    style: Style = "line+points"
    color: str | None = None  # None: the palette colour for the series' position
    annotations: Sequence[tuple[float, float, str]] = ()  # (x, y, text) labels next to points


class Axis(NamedTuple):
    """A data range [lo, hi] mapped onto pixels [pixel_lo, pixel_hi], linear or log10."""

    lo: float
    hi: float
    log: bool
    ticks: list[float]
    pixel_lo: float
    pixel_hi: float

    def at(self, value: float) -> float:
        f: Callable[[float], float] = math.log10 if self.log else float
        share = (f(value) - f(self.lo)) / (f(self.hi) - f(self.lo))
        return self.pixel_lo + share * (self.pixel_hi - self.pixel_lo)


def _clean(value: float) -> float:
    """Drop float noise such as 0.6000000000000001, and -0.0."""
    return float(f"{value:.12g}") + 0.0


def _nice_step(raw: float) -> float:
    """The smallest 1-2-5 step at least `raw`."""
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def linear_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Multiples of a 1-2-5 step inside [lo, hi], about `count` of them."""
    if not hi > lo:
        return [_clean(lo)]
    step = _nice_step((hi - lo) / count)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [_clean(i * step) for i in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades inside [lo, hi]; also 2x and 5x when the range spans under two decades."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    multiples = (1, 2, 5) if hi / lo < 100 else (1,)
    for tries in (multiples, range(1, 10)):  # a range inside one decade needs every multiple
        ticks = [_clean(m * 10.0**e) for e in decades for m in tries]
        inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(inside) >= 2:
            break
    step = max(1, math.ceil(len(inside) / 8))  # at most ~8 labels on a very wide range
    return inside[::step] or [float(f"{math.sqrt(lo * hi):.3g}")]


def nice_ticks(lo: float, hi: float, *, log: bool = False) -> list[float]:
    return log_ticks(lo, hi) if log else linear_ticks(lo, hi)


def tick_label(value: float) -> str:
    """Short numbers: 1000, 16.4k, 1.05M, 0.25, 1e-05."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= size:
            return f"{value / (1e3 if suffix == 'k' else size):.3g}{suffix}"
    return f"{value:.4g}"


def finite(value: object) -> float | None:
    """`value` as a finite float, or None for anything else (None, NaN, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past the float range
        return None
    return number if math.isfinite(number) else None


def _usable(x: object, y: object, x_log: bool, y_log: bool) -> bool:
    """Finite, within ±1e100 (so ranges cannot overflow), and positive on a log axis."""
    a, b = finite(x), finite(y)
    if a is None or b is None or max(abs(a), abs(b)) > LIMIT:
        return False
    return (not x_log or a >= 1 / LIMIT) and (not y_log or b >= 1 / LIMIT)


def _axis(
    values: list[float], *, log: bool, ticks: Sequence[float] | None, pixels: tuple[float, float]
) -> Axis:
    values = values + [t for t in ticks or () if _usable(t, t, log, log)]
    lo, hi = min(values), max(values)
    if log:
        lo, hi = (lo / 2, hi * 2) if hi / lo < 1.001 else (lo, hi)
        pad = (hi / lo) ** 0.04  # 4% of the range on each side keeps marks off the frame
        lo, hi = lo / pad, hi * pad
    else:
        if hi - lo <= 1e-12 * max(1.0, abs(hi)) and lo >= 0:  # e.g. no dead latents at all
            lo, hi = 0.0, (hi * 2 or 1.0)
        elif hi - lo <= 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - (abs(lo) or 1.0) / 2, hi + (abs(hi) or 1.0) / 2
        pad = (hi - lo) * 0.03  # keeps marks off the frame, but a range from 0 starts at 0
        lo, hi = (lo - pad if lo < 0 or lo - pad >= 0 else 0.0), hi + pad
        step = _nice_step((hi - lo) / 5)
        lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    chosen = [t for t in ticks if lo <= t <= hi] if ticks else nice_ticks(lo, hi, log=log)
    return Axis(lo, hi, log, chosen, *pixels)


def _attr(value: float | str) -> str:
    """An attribute's value as written: floats are pixels; a number's digits need no escaping."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value) if isinstance(value, int) else escape(str(value))


@functools.cache
def _attr_name(key: str) -> str:
    return key.rstrip("_").replace("_", "-")


def _el(
    name: str, text: str | None = None, *, children: str | None = None, **attrs: float | str | None
) -> str:
    """One element, attributes and text escaped; `class_` is class, `_` in names becomes `-`.

    `children` is markup already built by these functions, placed inside after the text.
    """
    pairs = "".join(
        [f' {_attr_name(key)}="{_attr(v)}"' for key, v in attrs.items() if v is not None]
    )
    if text is None and not children:
        return f"<{name}{pairs}/>"
    return f"<{name}{pairs}>{escape(text or '')}{children or ''}</{name}>"


def _text(
    x: float, y: float, text: str, *, css: str, anchor: str = "middle", **more: str | None
) -> str:
    return _el("text", text, class_=css, x=float(x), y=float(y), text_anchor=anchor, **more)


def _open(width: int, height: int, *, title: str, desc: str, css: str) -> str:
    return (
        f'<svg class="{css}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" font-family="system-ui, sans-serif" font-size="11" fill="{MUTED}">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
        + _el("rect", x=0, y=0, width=width, height=height, fill="#ffffff")
        + _text(width / 2, 18, title, css="chart-title", font_size="13", fill="#1d232b")
    )


def _frame(
    x: Axis,
    y: Axis,
    *,
    x_label: str,
    y_label: str,
    height: int,
    y_format: Callable[[float], str] = tick_label,
) -> str:
    parts = []
    for t in x.ticks:
        px = x.at(t)
        parts.append(_el("line", x1=px, y1=y.pixel_hi, x2=px, y2=y.pixel_lo, stroke=GRID))
        parts.append(_text(px, y.pixel_lo + 14, tick_label(t), css="tick"))
    for t in y.ticks:
        py = y.at(t)
        parts.append(_el("line", x1=x.pixel_lo, y1=py, x2=x.pixel_hi, y2=py, stroke=GRID))
        parts.append(_text(x.pixel_lo - 5, py + 4, y_format(t), css="tick", anchor="end"))
    d = f"M{x.pixel_lo:.1f},{y.pixel_hi:.1f} V{y.pixel_lo:.1f} H{x.pixel_hi:.1f}"
    parts.append(_el("path", class_="axis", d=d, fill="none", stroke=AXIS))
    if x_label:
        parts.append(_text((x.pixel_lo + x.pixel_hi) / 2, height - 8, x_label, css="axis-label"))
    middle = (y.pixel_lo + y.pixel_hi) / 2
    turn = f"rotate(-90 14 {middle:.1f})"
    parts.append(_text(14, middle, y_label, css="axis-label", transform=turn))
    return "".join(parts)


def _stroke(color: str, style: Style) -> dict[str, str | None]:
    dash = "6 4" if style == "dashed" else None
    return {"fill": "none", "stroke": color, "stroke_width": "1.6", "stroke_dasharray": dash}


def _marks(s: Series, color: str, x: Axis, y: Axis) -> str:
    pixels = [(x.at(a), y.at(b)) for a, b in s.points]
    draws_line = s.style != "points" and len(pixels) > 1
    out = [f'<g class="series" data-series="{escape(s.label)}" data-style="{s.style}">']
    if draws_line:
        d = "M" + " L".join(f"{px:.1f},{py:.1f}" for px, py in pixels)
        out.append(_el("path", class_="line", d=d, **_stroke(color, s.style)))
    if s.style in ("points", "line+points") or not draws_line:  # a lone point still shows
        out += [
            _el("circle", class_="mark", cx=px, cy=py, r="3.2", fill=color) for px, py in pixels
        ]
    for a, b, note in s.annotations:
        px, py = min(x.at(a) + 5, x.pixel_hi - 4), max(y.at(b) - 6, y.pixel_hi + 9)
        out.append(
            _text(px, py, note, css="annotation", anchor="start", font_size="10", fill=color)
        )
    return "".join(out) + "</g>"


def _legend(series: list[tuple[Series, str]], left: float) -> str:
    out = ['<g class="legend">']
    for i, (s, color) in enumerate(series):
        y = float(TOP + 8 + 16 * i)
        if s.style != "points":
            out.append(_el("line", x1=left, y1=y, x2=left + 18, y2=y, **_stroke(color, s.style)))
        if s.style in ("points", "line+points"):
            out.append(_el("circle", cx=left + 9, cy=y, r="3.2", fill=color))
        label = s.label if len(s.label) <= 18 else s.label[:17] + "…"
        out.append(_text(left + 24, y + 4, label, css="legend-label", anchor="start"))
    return "".join(out) + "</g>"


def _describe(series: Sequence[Series], dropped: int) -> str:
    lines = []
    for s in series:
        points = "; ".join(f"({a:.4g}, {b:.4g})" for a, b in s.points) or "no points"
        lines.append(f"{s.label} ({s.style}): {points}.")
    if dropped:
        lines.append(f"{dropped} points not drawn (missing, not finite, or not positive on log).")
    return " ".join(lines) or "No data."


def chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool = False,
    y_log: bool = False,
    width: int = 560,
    height: int = 340,
    x_ticks: Sequence[float] | None = None,
    y_ticks: Sequence[float] | None = None,
) -> str:
    """A line/scatter chart; points that cannot be drawn are dropped and counted in <desc>."""
    kept: list[tuple[Series, str]] = []
    for i, s in enumerate(series):
        points = [(float(a), float(b)) for a, b in s.points if _usable(a, b, x_log, y_log)]
        notes = [
            (float(a), float(b), str(t)) for a, b, t in s.annotations if _usable(a, b, x_log, y_log)
        ]
        kept.append(
            (s._replace(points=points, annotations=notes), s.color or PALETTE[i % len(PALETTE)])
        )
    dropped = sum(len(s.points) for s in series) - sum(len(s.points) for s, _ in kept)
    desc = _describe([s for s, _ in kept], dropped)
    svg = _open(width, height, title=title, desc=desc, css="chart")
    drawn = [(s, color) for s, color in kept if s.points]
    if not drawn:
        return svg + _text(width / 2, height / 2, "no data", css="empty") + "</svg>"
    right = width - RIGHT - (LEGEND_WIDTH if len(drawn) > 1 else 0)
    xs = [a for s, _ in drawn for a, _ in s.points]
    ys = [b for s, _ in drawn for _, b in s.points]
    x = _axis(xs, log=x_log, ticks=x_ticks, pixels=(LEFT, right))
    y = _axis(ys, log=y_log, ticks=y_ticks, pixels=(height - BOTTOM, TOP))
    parts = [svg, _frame(x, y, x_label=x_label, y_label=y_label, height=height)]
    parts += [_marks(s, color, x, y) for s, color in drawn]
    if len(drawn) > 1:
        parts.append(_legend(drawn, right + 14))
    return "".join(parts) + "</svg>"


def bars(
    categories: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    y_label: str,
    value_format: Callable[[float], str] = lambda v: f"{v:.3g}",
    width: int = 560,
    height: int = 300,
    color: str | None = None,
) -> str:
    """One bar per category with its value written on it; None (or NaN) shows as "n/a"."""
    cleaned = [v if _usable(v, v, False, False) else None for v in map(finite, values)]
    shown = ["n/a" if v is None else value_format(v) for v in cleaned]
    desc = "; ".join(f"{c}: {v}" for c, v in zip(categories, shown, strict=False))
    svg = _open(width, height, title=title, desc=desc or "No data.", css="chart bars")
    if not categories:
        return svg + _text(width / 2, height / 2, "no data", css="empty") + "</svg>"
    slot = (width - LEFT - RIGHT) / len(categories)
    tilt = len(categories) > 5 or max(len(c) for c in categories) * 6 > slot
    bottom = BOTTOM + (46 if tilt else 0)
    known = [v for v in cleaned if v is not None]
    y = _axis(
        [0.0, *known] if known else [0.0, 1.0], log=False, ticks=None, pixels=(height - bottom, TOP)
    )
    x = Axis(0, len(categories), False, [], LEFT, width - RIGHT)
    parts = [svg, _frame(x, y, x_label="", y_label=y_label, height=height, y_format=value_format)]
    zero, below = y.at(0.0), height - bottom + 14.0
    for i, (category, value, label) in enumerate(zip(categories, cleaned, shown, strict=False)):
        middle = LEFT + slot * (i + 0.5)
        parts.append(f'<g class="bar" data-category="{escape(category)}">')
        if value is None:
            parts.append(_text(middle, zero - 5, label, css="value"))
        else:
            top = y.at(value)
            parts.append(
                _el(
                    "rect",
                    x=middle - slot * 0.3,
                    y=min(top, zero),
                    width=slot * 0.6,
                    height=abs(zero - top),
                    fill=color or PALETTE[0],
                )
            )
            label_y = top - 5 if value >= 0 else top + 13
            parts.append(_text(middle, label_y, label, css="value", fill="#1d232b"))
        name = category if len(category) <= 24 else category[:23] + "…"
        turn = f"rotate(-30 {middle:.1f} {below:.1f})" if tilt else None
        anchor = "end" if tilt else "middle"
        parts.append(_text(middle, below, name, css="category", anchor=anchor, transform=turn))
        parts.append("</g>")
    return "".join(parts) + "</svg>"


class Bin(Protocol):
    """One histogram bar: `count` values fell in [lower, upper)."""

    @property
    def lower(self) -> float: ...
    @property
    def upper(self) -> float: ...
    @property
    def count(self) -> int: ...


def _bin_range(b: Bin) -> str:
    return f"{b.lower:.3g} to {b.upper:.3g}: {b.count:,}"


def histogram(
    bins: Sequence[Bin],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool = False,
    bar_label: Callable[[Bin], str] = _bin_range,
    width: int = 560,
    height: int = 220,
    color: str | None = None,
) -> str:
    """One bar per bin, its `bar_label` as hover text; bins an axis cannot show are dropped."""
    kept = [
        b for b in bins if _usable(b.lower, b.upper, x_log, x_log) and finite(b.count) is not None
    ]
    labels = [bar_label(b) for b in kept]
    desc = "; ".join(labels) or "No data."
    if dropped := len(bins) - len(kept):
        desc += f" {dropped} bins not drawn (not finite, or not positive on log)."
    svg = _open(width, height, title=title, desc=desc, css="chart histogram")
    if not kept:
        return svg + _text(width / 2, height / 2, "no data", css="empty") + "</svg>"
    edges = [float(b.lower) for b in kept] + [float(b.upper) for b in kept]
    x = _axis(edges, log=x_log, ticks=None, pixels=(LEFT, width - RIGHT))
    y = _axis(
        [0.0, *(float(b.count) for b in kept)], log=False, ticks=None, pixels=(height - BOTTOM, TOP)
    )
    y = y._replace(ticks=[t for t in y.ticks if t.is_integer()])  # no "0.5 latents"
    parts = [svg, _frame(x, y, x_label=x_label, y_label=y_label, height=height)]
    zero = y.at(0.0)
    for b, label in zip(kept, labels, strict=True):
        left, right, top = x.at(b.lower), x.at(b.upper), y.at(b.count)
        parts.append(
            _el(
                "rect",
                children=_el("title", label),
                class_="bar",
                x=left,
                y=top,
                width=max(right - left - 0.5, 0.5),  # a hairline gap between neighbours
                height=zero - top,
                fill=color or PALETTE[0],
            )
        )
    return "".join(parts) + "</svg>"
