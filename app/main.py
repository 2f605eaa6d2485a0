"""The app factory: `create_app(settings)` wires the index, templates, routes and errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import sae
from app import filters
from app.db import IndexDB
from app.errors import STORAGE_ERRORS, UnexpectedErrors, damaged_index, install_error_handlers
from app.http import BodyTimeout, HeadAsGet, HostCheck, SecurityHeaders
from app.live import LiveEncoder
from app.routes import api, pages
from app.settings import AppSettings

log = logging.getLogger("atlas")
HTMX_PATH = "vendor/htmx.min.js"


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
    try:
        db = IndexDB(settings.index)
    except STORAGE_ERRORS as exc:  # a block the start-up check passed, then failed to read
        raise damaged_index(settings.index, exc) from None

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
    _install_middleware(app, settings)
    return app


def _install_middleware(app: FastAPI, settings: AppSettings) -> None:
    # Each one added wraps the ones before: the security headers go on every response,
    # error pages included, and a HEAD request gets no body whatever answers it.
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout)
    app.add_middleware(HostCheck, settings=settings)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)
