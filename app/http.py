"""HTTP guards around every request, as plain ASGI middleware so that they see every
response, the error pages included:

- `SecurityHeaders`: the Content-Security-Policy, nosniff and referrer policy on everything;
- `HeadAsGet`: HEAD is answered as GET would be, without the body (one rule for all routes);
- `HostCheck`: the Host header must name this server, so that a page on another site cannot
  reach it through DNS rebinding (a name the attacker controls, resolving to 127.0.0.1);
- `BodyTimeout`: a request body must arrive within a bounded time, else 408 and a close.
"""

from __future__ import annotations

import ipaddress

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import AtlasAppError, render_error
from app.settings import AppSettings

# No inline script or style anywhere: a token that smuggles markup past escaping still
# could not run. Histograms are inline SVG elements, which this allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds the security headers a response does not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class HeadAsGet:
    """Runs a HEAD request as GET and drops the body: same status and headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            elif message["type"] == "http.response.pathsend":  # a file sent by the server
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


def host_name(header: str) -> str:
    """The name in a Host header: lower case, without port, brackets or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8000
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        value = value.split(":")[0]
    return value.rstrip(".")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuses a Host header that names neither this server nor an allowed host.

    Accepted: localhost, any IP literal (a browser sends one only when the user typed the
    address, so it cannot be a rebinding), the `--host` served and `allowed_hosts`.
    """

    def __init__(self, app: ASGIApp, *, settings: AppSettings) -> None:
        self.app = app
        self.any_host = "*" in settings.allowed_hosts
        self.names = {"localhost", host_name(settings.host)}
        self.names |= {host_name(name) for name in settings.allowed_hosts}

    def allows(self, header: str) -> bool:
        # No Host at all names no site to rebind (HTTP/1.0); uvicorn refuses it on 1.1.
        name = host_name(header)
        return not header or name in self.names or _is_ip_literal(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("host", "") if scope["type"] == "http" else ""
        if self.any_host or self.allows(header):
            await self.app(scope, receive, send)
            return
        name = host_name(header)
        error = AtlasAppError(
            f"this server does not serve the host {name!r} named by the request; if that "
            f"name is yours, restart with `atlas serve --allow-host {name}`",
            status=400,
        )
        await render_error(Request(scope), error)(scope, receive, send)


class BodyTimeout:
    """A 408, and the connection closed, when the body is not all there within `seconds`.

    A client that promises a Content-Length and sends less would otherwise hold a worker
    and a connection for as long as it likes. The clock starts when the request arrives.
    """

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        body_done = timed_out = False

        async def bounded_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:  # later calls wait for a disconnect: no deadline on those
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as waited:
                message = await receive()
            if waited.cancelled_caught:
                timed_out = True
                detail = f"the request body did not arrive within {self.seconds:g} s"
                raise HTTPException(408, detail)
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def closing_send(message: Message) -> None:
            if timed_out and message["type"] == "http.response.start":
                # The rest of the body may still come: this connection cannot be reused.
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, bounded_receive, closing_send)
