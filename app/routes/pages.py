"""Server-rendered pages. Each HTMX swap target has its own `_partial.html` template.

A request from htmx (`HX-Request`) gets only the partial; a history restore or a plain
browser request gets the whole page, so every URL works on its own and can be shared.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from app import records as r
from app.db import IndexDB
from app.live import LiveEncoder
from app.routes.params import db_of, latent_query, live_of, search_query
from indexer import schema
from sae.report import render_figures_html, sae_figures
from sae.report.svg import histogram

router = APIRouter(include_in_schema=False)
LATENT_ID_BOUND = 2**31 - 1


def _partial_wanted(request: Request) -> bool:
    return bool(request.headers.get("HX-Request")) and not request.headers.get(
        "HX-History-Restore-Request"
    )


def _render(
    request: Request, page: str, partial: str | None, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    name = partial if partial and _partial_wanted(request) else page
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, name, context, status_code=status
    )
    return response


def table_url(query: r.LatentQuery, **changes: Any) -> str:
    """The /latents URL of `query` with `changes`, leaving defaults out so links stay short."""
    state = asdict(query) | changes
    pairs: list[tuple[str, Any]] = []
    defaults = asdict(r.LatentQuery())
    for key in ("sort", "order", "offset", "limit", "q", "min_density", "max_density"):
        if state[key] not in (None, "") and state[key] != defaults[key]:
            pairs.append((key, state[key]))
    pairs += [("flag", f) for f in state["flags"]] + [("not_flag", f) for f in state["not_flags"]]
    return "/latents" + ("?" + urlencode(pairs) if pairs else "")


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, db: Annotated[IndexDB, Depends(db_of)]) -> HTMLResponse:
    build = db.build
    context = {
        "build": build,
        "density_svg": density_histogram_svg(db.density_histogram()),
        "sae_eval": {
            key: value
            for key, value in (build.sae_eval or {}).items()
            if key not in ("probe", "acts")  # the probe's tasks are a figure; acts a path
        },
        "report_figures": report_figures(db),
    }
    return _render(request, "overview.html", None, context)


@functools.lru_cache(maxsize=8)
def report_figures(db: IndexDB) -> Markup:
    """The `sae report` figures of the served SAE: the index never changes, so drawn once."""
    report = db.build.report
    return Markup(render_figures_html(sae_figures(report))) if report else Markup("")


def density_histogram_svg(bins: list[r.HistogramBin]) -> Markup:
    """Live latents by log10 density (the bins are in log10 units); empty bins left out."""
    return Markup(
        histogram(
            [b for b in bins if b.count > 0] or bins,
            title="Density of all live latents",
            x_label="log10 density (share of tokens a latent fires on)",
            y_label="latents",
            bar_label=lambda b: f"density 1e{b.lower:.2f} to 1e{b.upper:.2f}: {b.count:,} latents",
        )
    )


def activation_histogram_svg(bins: list[r.HistogramBin]) -> Markup:
    """A latent's activations on log-spaced bins, drawn on a log axis."""
    return Markup(
        histogram(
            bins,
            title="Activations where the latent fires",
            x_label="activation (log scale)",
            y_label="tokens",
            x_log=True,
            bar_label=lambda b: f"activation {b.lower:.3g} to {b.upper:.3g}: {b.count:,} tokens",
        )
    )


@router.get("/latents", response_class=HTMLResponse)
def latent_table(
    request: Request,
    db: Annotated[IndexDB, Depends(db_of)],
    query: Annotated[r.LatentQuery, Depends(latent_query)],
) -> HTMLResponse:
    context = {
        "page": db.latent_page(query),
        "query": query,
        "flags": schema.FLAGS,
        "table_url": table_url,
    }
    return _render(request, "latents.html", "_latent_table.html", context)


def _by_band(examples: list[r.Example]) -> dict[int | None, list[r.Example]]:
    grouped: dict[int | None, list[r.Example]] = {}
    for example in examples:
        grouped.setdefault(example.band, []).append(example)
    return grouped


@router.get("/latents/{latent_id}", response_class=HTMLResponse)
async def latent_page(  # a few ms of CPU from memory: no threadpool hop (it cannot overlap)
    request: Request, db: Annotated[IndexDB, Depends(db_of)], latent_id: int
) -> HTMLResponse:
    detail = db.latent_detail(max(-LATENT_ID_BOUND, min(LATENT_ID_BOUND, latent_id)))
    context = {
        "detail": detail,
        "n_latents": db.build.n_latents,
        "histogram_svg": activation_histogram_svg(detail.histogram),
        "vocab_html": db.vocab_html(),
        "by_band": _by_band(detail.quantile_examples),
    }
    return _render(request, "latent.html", None, context)


def search_url(query: r.SearchQuery, **changes: Any) -> str:
    """The /search URL of `query` with `changes`, defaults left out."""
    state = asdict(query) | changes
    defaults = asdict(r.SearchQuery())
    pairs = [("q", state["q"])] + [
        (key, state[key]) for key in ("mode", "offset", "limit") if state[key] != defaults[key]
    ]
    return "/search?" + urlencode(pairs)


@router.get("/search", response_class=HTMLResponse)
def search(
    request: Request,
    db: Annotated[IndexDB, Depends(db_of)],
    query: Annotated[r.SearchQuery, Depends(search_query)],
) -> HTMLResponse:
    # Nothing asked yet (no `q` at all): the form alone; an empty `q` is told why it finds none.
    results = db.search(query) if "q" in request.query_params else None
    context = {
        "q": query.q,
        "query": query,
        "results": results,
        "notice": db.search_notice,
        "search_url": search_url,
    }
    return _render(request, "search.html", "_search_results.html", context)


@router.get("/live", response_class=HTMLResponse)
def live_form(request: Request) -> HTMLResponse:
    return _render(request, "live.html", None, {"text": "", "result": None})


@router.post("/live", response_class=HTMLResponse)
def live_run(
    request: Request,
    db: Annotated[IndexDB, Depends(db_of)],
    live: Annotated[LiveEncoder, Depends(live_of)],
    text: Annotated[str, Form(max_length=1_000_000)] = "",
) -> HTMLResponse:
    result = live.encode(text, explanations=db.explanations)
    context = {"text": text, "result": result}
    return _render(request, "live.html", "_live_result.html", context)
