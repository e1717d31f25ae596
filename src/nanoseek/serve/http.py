"""What the API's routes and the chat app's share: the server's settings and the handle that carries
them with the engine, the error envelope, server-sent events, and the JSON and schema helpers.

Every error is OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with the
status it names; a 429 also says `Retry-After: 1`. A request body is read as raw JSON (never
FastAPI's model validation and its 422), so every problem is a 400 that names its field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from nanoseek.infer.engine import Engine
from nanoseek.infer.sequence import Delta
from nanoseek.serve.store import ConversationStore


@dataclass
class ServerConfig:
    model_name: str = "nanoseek"
    api_keys: tuple[str, ...] = ()  # Bearer keys every /v1 and /api route needs; none: open
    reasoning_alias: bool = False  # reasoning_content also as "reasoning" (some clients read that)
    max_queue: int = 256  # requests waiting for a slot; beyond, 429 with Retry-After
    keepalive_s: float = 10.0  # an SSE comment this often while a streamed request waits
    timeout_s: float = 600.0  # a request running longer is cancelled (504)
    max_body_bytes: int = 1 << 20  # on every route, however the body is sent
    cors_origins: tuple[str, ...] = ()  # pages elsewhere that may call the server; none by default
    # Host names the server answers to; none: any. A loopback server names its loopback names, so
    # that a DNS-rebinding page (its own name, resolving to 127.0.0.1) is refused
    allowed_hosts: tuple[str, ...] = ()
    client_timeout_s: float = 20.0  # for a request's headers, and again for its body
    notice: str = ""  # a line the chat app shows above every conversation (e.g. an untrained model)
    hint: str = ""  # what the chat app invites a user to ask (the shipped model's skills)


@dataclass(frozen=True)
class Backend:
    """The one handle app.create_app passes to both route groups, so the chat app shares the API's
    engine loop, queue limit, timeout and metrics.

    submit(prompt, params, param="messages") queues a generation (429 when the queue is full, 400
    naming `param` when the prompt does not fit) and returns its id and queue; deltas(id, queue,
    n) yields its deltas until its n samples finish, None each keepalive_s without one;
    cancel(id) drops it (a no-op once it finished)."""

    engine: Engine  # its tokenizer spells out logprobs
    store: ConversationStore
    config: ServerConfig
    submit: Callable[..., Awaitable[tuple[str, asyncio.Queue]]]
    deltas: Callable[[str, asyncio.Queue, int], AsyncIterator[Delta | None]]
    cancel: Callable[[str], None]


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code

    def response(self) -> JSONResponse:
        """The error as the client sees it (also an ASGI app: guard.py sends it itself)."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status,
                            headers={"Retry-After": "1"} if self.status == 429 else None)


async def until_disconnected(request: Request) -> None:
    """Returns when the client hangs up. The body has been read (guard.Guard reads it whole), so the
    next message receive() gives is the hang-up, or the end of the response."""
    if (await request.receive())["type"] != "http.disconnect":
        # a server that answers with more (empty) body instead, as some test transports do, never
        # reports a hang-up this way: wait for nothing rather than spin
        await asyncio.Event().wait()


async def unless_disconnected(request: Request, work: Awaitable):
    """`work`'s result; or, should the client hang up first, `work` is cancelled (its generation
    with it: a request nobody waits for must not hold its slots) and the answer is a 499 (nginx's
    "client closed request", which only the metrics see)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return Response(status_code=499)


# ---------------------------------------------------------------------------------------------
# request parsing: every problem is a 400 that names the field


def json_object(raw: bytes) -> dict:
    """A request body that must be a JSON object of valid text, or a 400 that says why."""
    try:
        body = json.loads(raw)
        # JSON may escape a lone surrogate ("\ud800"); text can't hold one
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested too deep
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def refuse_unknown(body: dict, known: frozenset[str]) -> None:
    """A 400 naming the first parameter, unless null, that is not in `known`: a client must never
    believe a setting took effect when it did not (OpenAI answers the same way)."""
    for name, value in body.items():
        if name not in known and value is not None:
            raise APIError(400, f"{name} is not supported by this server", param=name,
                           code="unsupported_parameter")


def number(body: dict, name: str, default, kind=float, lo=None, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if (isinstance(v, bool) or not isinstance(v, (int, float))
            or (kind is int and not isinstance(v, int))):
        what = "an integer" if kind is int else "a number"
        raise APIError(400, f"{name} must be {what}, got {v!r}", param=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = (f"in [{lo}, {hi}]" if lo is not None and hi is not None
                  else f">= {lo}" if hi is None else f"<= {hi}")
        raise APIError(400, f"{name} must be {bounds}, got {v}", param=name)
    return kind(v)


# The request bodies in the OpenAPI schema (/openapi.json), for clients and fuzzers. The routes read
# the raw body, so these only describe what they accept; null means the default wherever the type
# allows it.
def range_schema(kind: str, lo=None, hi=None) -> dict:
    return {"type": [kind, "null"]} | ({"minimum": lo} if lo is not None else {}) | (
        {"maximum": hi} if hi is not None else {})


def json_body(properties: dict, required: tuple[str, ...] = (), body_required: bool = True) -> dict:
    """An `openapi_extra` for a route that reads a JSON object itself."""
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": body_required, "content": content}}


TOP_P = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1}


# ---------------------------------------------------------------------------------------------
# server-sent events

KEEP_ALIVE = b": keep-alive\n\n"  # a comment: keeps proxies from closing an idle connection


def sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class EventStream(StreamingResponse):
    """Closes its generator however the response ends, then calls on_close (which cancels its
    request). Starlette cancels a response whose client hung up, possibly while it awaits a send;
    the generator would then be closed (and its request aborted) only when the garbage collector
    found it. And a client gone before the first byte leaves the generator unstarted: closing it
    runs none of its code, so its own `finally` cannot be what cancels the request."""

    def __init__(self, *args, on_close: Callable[[], None] | None = None, **kw):
        super().__init__(*args, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                if self.on_close is not None:
                    self.on_close()


def event_stream(events: AsyncIterator[bytes], on_close: Callable[[], None]) -> EventStream:
    """An SSE response that no proxy buffers or caches."""
    return EventStream(events, media_type="text/event-stream", on_close=on_close,
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
