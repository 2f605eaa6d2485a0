"""One error type for the app and one handler that renders it for whoever asked.

A browser gets an HTML page, an HTMX request a fragment to swap in, and anything under
`/api/` a JSON body `{"detail": ...}`. Validation errors and unknown routes go through the
same handler so that no request ends in a bare 500 or a framework page.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("atlas")


class AtlasAppError(Exception):
    """Something the user asked for cannot be served; `status` is the HTTP status."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return render_error(request, AtlasAppError("internal error", status=500))

    handlers: dict[Any, Any] = {
        AtlasAppError: on_app_error,
        RequestValidationError: on_validation,
        StarletteHTTPException: on_http,
        Exception: on_unexpected,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
