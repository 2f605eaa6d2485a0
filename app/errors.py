"""One error type for the app and one handler that renders it for whoever asked.

A browser gets an HTML page, an HTMX request a fragment to swap in, and anything under
`/api/` a JSON body `{"detail": ...}`. Validation errors, unknown routes, a damaged index
file and unexpected errors go through the same renderer so that no request ends in a bare
500 or a framework page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("atlas")


class AtlasAppError(Exception):
    """Something the user asked for cannot be served; `status` is the HTTP status."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# What DuckDB raises when it cannot read the file (a failed block checksum, a short read),
# bare or wrapped by SQLAlchemy. The queries are the app's own and the schema is checked
# at start, so while serving these mean the file, not the request.
STORAGE_ERRORS = (duckdb.Error, sa.exc.DBAPIError)


def damaged_index(path: Path, exc: BaseException) -> AtlasAppError:
    """The message for an index file DuckDB cannot read, with the driver's own first line."""
    cause = getattr(exc, "orig", None) or exc  # the driver's message, not SQLAlchemy's
    text = str(cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    return AtlasAppError(
        f"the index file {path} is damaged and cannot be read ({first}): "
        "rebuild it with `indexer build`",
        status=500,
    )


def render_error(request: Request, error: AtlasAppError) -> Response:
    if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
        return JSONResponse({"detail": error.message}, status_code=error.status)
    templates = request.app.state.templates
    name = "_error.html" if request.headers.get("HX-Request") else "error.html"
    response: HTMLResponse = templates.TemplateResponse(
        request,
        name,
        {"status": error.status, "message": error.message},
        status_code=error.status,
    )
    if request.headers.get("HX-Request"):
        # htmx does not swap 4xx responses by default; retarget so the message is seen.
        response.headers["HX-Retarget"] = "#messages"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts[:5])


def install_error_handlers(app: FastAPI) -> None:
    async def on_app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AtlasAppError)
        return render_error(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render_error(request, AtlasAppError(_validation_message(exc), status=422))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = "page not found" if exc.status_code == 404 else str(exc.detail)
        return render_error(request, AtlasAppError(message, status=exc.status_code))

    async def on_storage(request: Request, exc: Exception) -> Response:
        error = damaged_index(request.app.state.settings.index, exc)
        log.error("%s %s: %s", request.method, request.url.path, error.message)  # no traceback
        return render_error(request, error)

    handlers: dict[Any, Any] = {
        AtlasAppError: on_app_error,
        RequestValidationError: on_validation,
        StarletteHTTPException: on_http,
    }
    handlers |= {kind: on_storage for kind in STORAGE_ERRORS}
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


class UnexpectedErrors:
    """Any other exception: logged with its traceback, answered with the app's 500 page.

    An ASGI middleware rather than an `Exception` handler: Starlette runs that handler
    outside every middleware, so its response would miss the security headers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            if started:  # too late for an error page: the server drops the connection
                raise
            request = Request(scope, receive)
            log.exception("unexpected error on %s", request.url.path)
            response = render_error(request, AtlasAppError("internal error", status=500))
            await response(scope, receive, send)
