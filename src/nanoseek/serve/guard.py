"""The server's walls, in front of every route: which hosts and origins may call it, the API key,
the body's size and type, how long a client may take to send a request, and the count of requests
by route.

Guard is plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which hides a client's
hang-up from the route behind it). It reads the whole body itself, never past max_body_bytes
whatever Content-Length says (a chunked body has none, and a lying one counts for nothing), then
hands the route a receive() that replays it and afterwards reports the client's hang-up, which is
how a route that does not stream notices a client gone (http.until_disconnected).

A server that browsers can reach must not be driven by pages it did not serve: a page elsewhere may
POST to 127.0.0.1 (text/plain and form bodies need no CORS preflight), and a DNS-rebinding page
talks to it under its own host name. So a request from a browser (it carries Origin) must come from
the server's own origin or a --cors-origin, a body must be JSON (which no form can send), and on a
loopback address the Host must be one of the loopback names.

Slow clients: uvicorn times out an idle kept-alive connection, but not a client that sends its
headers a byte at a time, so slow_client_protocol adds a deadline for the headers; the body's
deadline is Guard's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import h11
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from nanoseek.serve.http import APIError, ServerConfig

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
OTHER_ROUTE = "(other)"  # the metrics label of every path no route serves
_BODY_METHODS = ("POST", "PUT", "PATCH")


def loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def _host_name(netloc: str) -> str:
    """The host of a Host header or an origin's netloc, without port and IPv6 brackets."""
    try:
        return (urlsplit("//" + netloc).hostname or "").lower()
    except ValueError:  # e.g. an unclosed "["
        return ""


def _same(origin: str, host: str) -> bool:
    """Whether a page at `origin` is this server's own (served under the Host it calls)."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc == host


class Guard:
    """The checks, in order: the Host, the Origin, the key (/v1 and /api), the body (JSON, bounded,
    in time). A request that fails one is answered here, in OpenAI's envelope. count(route,
    status) is called once per request, with the template of the one of `routes` that serves it
    (one label per route, whatever the path) or OTHER_ROUTE."""

    def __init__(self, app: ASGIApp, config: ServerConfig, routes: list,
                 count: Callable[[str, int], None]):
        self.app, self.config, self.routes, self.count = app, config, routes, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                body, refusal = await self._read_body(scope, receive)
            if refusal is not None:
                await refusal.response()(scope, receive, counted)
            else:
                await self.app(scope, _replay(body, receive), counted)
        finally:
            self.count(self._route(scope), status)

    def _refusal(self, scope: Scope) -> APIError | None:
        """What the headers alone refuse, if anything."""
        config = self.config
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if config.allowed_hosts and _host_name(host) not in config.allowed_hosts:
            return APIError(400, f"Host {host!r} is not a name of this server (allowed: "
                                 f"{', '.join(config.allowed_hosts)}; --allowed-host adds one)",
                            code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and origin not in config.cors_origins and not _same(origin, host):
            return APIError(403, f"a page at {origin} may not call this server; start it with "
                                 f"--cors-origin {origin} to allow that", type="permission_error",
                            code="origin_not_allowed")
        path = scope["path"]
        if config.api_keys and path.startswith(("/v1", "/api")):
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in config.api_keys:
                return APIError(401, "invalid API key", type="authentication_error",
                                code="invalid_api_key")
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > config.max_body_bytes:
            return _too_large(config, int(size))
        has_body = (size.isdigit() and int(size) > 0) or "transfer-encoding" in headers
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] in _BODY_METHODS and has_body and kind != "application/json":
            return APIError(415, f"the request body must be JSON, sent as Content-Type: "
                                 f"application/json, not {kind or 'untyped'}",
                            code="unsupported_media_type")
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, APIError | None]:
        """The whole body, or the refusal: past max_body_bytes (counted as it arrives), or not all
        there within client_timeout_s."""
        config = self.config
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.client_timeout_s
        while True:
            try:  # (asyncio.timeout, not wait_for, which on 3.11 may swallow a cancel)
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return b"", APIError(408, "the request body did not arrive within "
                                          f"{config.client_timeout_s:g} s", code="timeout")
            if message["type"] == "http.disconnect":
                return b"", APIError(400, "the client went away")  # (nobody reads this)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > config.max_body_bytes:
                return b"", _too_large(config, None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _route(self, scope: Scope) -> str:
        """The template of the route that serves this path (e.g. /api/conversations/{cid})."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route.path
        return OTHER_ROUTE


def _too_large(config: ServerConfig, size: int | None) -> APIError:
    said = f"is {size:,} bytes" if size is not None else "is over the limit"
    return APIError(413, f"the request body {said}; the limit is {config.max_body_bytes:,} bytes",
                    code="request_too_large")


def _replay(body: bytes, receive: Receive) -> Receive:
    """receive() for the route: the body read already, then whatever the client does next (its
    hang-up)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def slow_client_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    header_timeout_s of its first byte (or of the connection, for the first request)."""

    class SlowClientGuard(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a request's headers are still coming
                if self._deadline is None:
                    self._arm()
            elif self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return SlowClientGuard
