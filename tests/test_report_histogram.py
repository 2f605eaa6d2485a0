"""`sae.report.svg.histogram`: one bar per bin, hover text, log axis, empty state, escaping."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import NamedTuple

import pytest

from sae.report.svg import histogram

HOSTILE = "<script>alert(1)</script>"


class Bin(NamedTuple):
    lower: float
    upper: float
    count: int


def _bars(svg: str) -> list[ET.Element]:
    return [el for el in ET.fromstring(svg).iter("rect") if el.get("class") == "bar"]


def _ticks(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter("text") if t.get("class") == "tick"]


def test_one_bar_per_bin_with_its_hover_text_and_height_by_count() -> None:
    bins = [Bin(0.0, 1.0, 4), Bin(1.0, 2.0, 0), Bin(2.0, 3.0, 2)]
    svg = histogram(
        bins,
        title="t",
        x_label="x",
        y_label="n",
        bar_label=lambda b: f"{b.lower:g} to {b.upper:g}: {b.count} things",
    )
    bars = _bars(svg)
    assert [bar.findtext("title") for bar in bars] == [
        "0 to 1: 4 things",
        "1 to 2: 0 things",
        "2 to 3: 2 things",
    ]
    heights = [float(bar.get("height", "nan")) for bar in bars]
    assert heights[1] == 0 and heights[0] == pytest.approx(2 * heights[2], abs=0.1)
    bottoms = {
        round(float(bar.get("y", "nan")) + h, 1) for bar, h in zip(bars, heights, strict=True)
    }
    assert len(bottoms) == 1  # every bar stands on the same baseline
    assert all(float(t).is_integer() for t in _ticks(svg)[-3:])  # counts: no "0.5" tick
    desc = ET.fromstring(svg).findtext("desc")
    assert desc == "0 to 1: 4 things; 1 to 2: 0 things; 2 to 3: 2 things"


def test_log_axis_gives_log_spaced_bins_equal_widths_and_drops_what_it_cannot_show() -> None:
    edges = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    bins = [Bin(a, b, 3) for a, b in itertools.pairwise(edges)] + [Bin(0.0, 0.1, 5)]
    svg = histogram(bins, title="t", x_label="x", y_label="n", x_log=True)
    bars = _bars(svg)
    assert len(bars) == 5  # the bin from 0 has no place on a log axis
    widths = {round(float(bar.get("width", "nan")), 1) for bar in bars}
    assert max(widths) - min(widths) <= 0.1
    assert {"0.1", "1"} <= set(_ticks(svg))
    assert "1 bins not drawn" in (ET.fromstring(svg).findtext("desc") or "")


@pytest.mark.parametrize("bins", [[], [Bin(float("nan"), 1.0, 2)]])
def test_without_drawable_bins_it_says_no_data(bins: list[Bin]) -> None:
    svg = histogram(bins, title="t", x_label="x", y_label="n")
    assert not _bars(svg)
    assert [t.text for t in ET.fromstring(svg).iter("text") if t.get("class") == "empty"] == [
        "no data"
    ]
    assert "nan" not in svg.lower()


def test_every_text_is_escaped() -> None:
    svg = histogram(
        [Bin(1.0, 2.0, 3)],
        title=f'{HOSTILE} & "t"',
        x_label=HOSTILE,
        y_label=HOSTILE,
        bar_label=lambda b: HOSTILE,
    )
    assert "<script>" not in svg
    root = ET.fromstring(svg)  # well-formed XML
    assert root.findtext("title") == f'{HOSTILE} & "t"'
    assert _bars(svg)[0].findtext("title") == HOSTILE
    labels = [t.text for t in root.iter("text") if t.get("class") == "axis-label"]
    assert labels == [HOSTILE, HOSTILE]
    assert "histogram" in (root.get("class") or "").split()
