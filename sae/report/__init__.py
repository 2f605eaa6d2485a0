"""Reports on a sweep or one SAE: figures as hand-drawn SVG, and a self-contained HTML page."""

from sae.report.figures import Figure, sae_figures, sweep_figures
from sae.report.html import render_figures_html, render_html
from sae.report.svg import Series, bars, chart

__all__ = [
    "Figure",
    "Series",
    "bars",
    "chart",
    "render_figures_html",
    "render_html",
    "sae_figures",
    "sweep_figures",
]
