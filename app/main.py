"""The app factory: `create_app(settings)` wires the index, templates, routes and errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import sae
from app import filters
from app.db import IndexDB
from app.errors import install_error_handlers
from app.live import LiveEncoder
from app.routes import api, pages
from app.settings import AppSettings

log = logging.getLogger("atlas")
HTMX_PATH = "vendor/htmx.min.js"

# No inline script or style anywhere: a token that smuggles markup past escaping still
# could not run. Histograms are inline SVG elements, which this allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _templates(settings: AppSettings, *, has_htmx: bool) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(settings.templates_dir))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension
    env.globals.update(has_htmx=has_htmx, version=sae.__version__, settings=settings)
    env.filters.update(filters.FILTERS)
    return templates


def _check_htmx(settings: AppSettings) -> bool:
    if (settings.static_dir / HTMX_PATH).is_file():
        return True
    log.warning(
        "htmx is missing (%s): pages work as plain links and forms; run `make setup` to vendor it",
        settings.static_dir / HTMX_PATH,
    )
    return False


def create_app(settings: AppSettings) -> FastAPI:
    """The browser over `settings.index`; raises AtlasAppError naming a bad index file."""
    db = IndexDB(settings.index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        db.close()

    app = FastAPI(
        title="Latent Atlas",
        version=sae.__version__,
        description="Browse the latents of a TopK sparse autoencoder indexed by `indexer build`.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: left out, offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.live = LiveEncoder(build=db.build, settings=settings)
    app.state.templates = _templates(settings, has_htmx=_check_htmx(settings))
    install_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(api.router)
    app.mount("/static", StaticFiles(directory=str(settings.static_dir)), name="static")

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return app
