"""The server: one engine loop (a thread calling Engine.step) serves every request of the API and
the chat app, so both batch together: continuous batching; each request's deltas reach its handler
through an asyncio queue. Here too are the server's Prometheus metrics, its error handlers and the
assembly of the guards (guard.py) and the routes (api.py, webapp.py) into one app.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.infer.sequence import Delta, Usage
from nanoseek.serve.api import add_api_routes
from nanoseek.serve.guard import Guard
from nanoseek.serve.http import APIError, Backend, ServerConfig
from nanoseek.serve.store import ConversationStore
from nanoseek.serve.webapp import add_chat_routes


class Metrics:
    """Prometheus metrics of one server (its own registry, so several apps in one process stay
    apart)."""

    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nanoseek_requests", "HTTP requests", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("nanoseek_prompt_tokens", "prompt tokens", registry=r)
        self.cached_tokens = Counter("nanoseek_prompt_cache_hit_tokens",
                                     "prompt tokens from the prefix cache", registry=r)
        self.completion_tokens = Counter("nanoseek_completion_tokens", "generated tokens",
                                         registry=r)
        self.aborted = Counter("nanoseek_aborted_requests", "requests cancelled before they "
                               "finished (the client went away, or a timeout)", registry=r)
        self.ttft = Histogram("nanoseek_time_to_first_token_seconds", "time to first token",
                              registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tpot = Histogram("nanoseek_time_per_output_token_seconds",
                              "time per output token after the first", registry=r,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        Gauge("nanoseek_queue_depth", "requests waiting for a slot", registry=r).set_function(
            lambda: len(engine.waiting))
        Gauge("nanoseek_running", "sequences being decoded", registry=r).set_function(
            lambda: len(engine.rows))
        Gauge("nanoseek_prompt_cache_hit_ratio", "cached share of all prompt tokens",
              registry=r).set_function(lambda: _hit_ratio(engine))

    def finished(self, usage: Usage, start: float, first: float | None, end: float) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.cached_tokens.inc(usage.cached_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if first is not None:
            self.ttft.observe(first - start)
            if usage.completion_tokens > 1:
                self.tpot.observe((end - first) / (usage.completion_tokens - 1))


def _hit_ratio(engine: Engine) -> float:
    stats = engine.stats
    return stats.cached_tokens / max(1, stats.cached_tokens + stats.prefill_tokens)


class EngineLoop:
    """Runs engine.step() in one background thread (started by the first request) while there is
    work; hands each delta to the queue of its request on the event loop. submit, deltas and cancel
    are what the routes see of it (http.Backend)."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: Metrics):
        self.engine, self.config, self.metrics = engine, config, metrics
        self.queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.arrived: dict[str, float] = {}  # request id -> when it came (TTFT counts from there)
        self.aborts: collections.deque[str] = collections.deque()  # cancelled on the event loop
        self.wake = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None

    async def submit(self, prompt, params: SamplingParams,
                     param: str = "messages") -> tuple[str, asyncio.Queue]:
        waiting = len(self.engine.waiting)
        if waiting >= self.config.max_queue:
            raise APIError(429, f"the server is busy: {waiting} requests are waiting; retry "
                                "shortly", type="rate_limit_error", code="queue_full")
        arrived = time.monotonic()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="nanoseek-engine", daemon=True)
            self.thread.start()
        queue: asyncio.Queue = asyncio.Queue()
        rid = f"req-{uuid.uuid4().hex[:24]}"
        self.queues[rid] = (asyncio.get_running_loop(), queue)
        try:
            # in a worker thread: a text prompt is tokenized there, and the engine's lock may be
            # held by a step for a while
            adding = asyncio.ensure_future(
                asyncio.to_thread(self.engine.add_request, prompt, params, request_id=rid))
            try:
                await asyncio.shield(adding)
            except asyncio.CancelledError:  # the client left: once the request is in, it goes
                adding.add_done_callback(lambda f: (f.cancelled() or f.exception(),
                                                    self.cancel(rid)))
                raise
        except ValueError as e:
            self.queues.pop(rid, None)
            code = "context_length_exceeded" if "max_seq_len" in str(e) else None
            raise APIError(400, str(e), param=param, code=code) from None
        except Exception:
            self.queues.pop(rid, None)
            raise
        self.wake.set()
        self.arrived[rid] = arrived
        return rid, queue

    async def deltas(self, rid: str, queue: asyncio.Queue, n: int) -> AsyncIterator[Delta | None]:
        """The request's deltas; None each keepalive_s without one (a stream sends a comment
        then)."""
        timeout_s = self.config.timeout_s
        done, start, first = 0, self.arrived.pop(rid, time.monotonic()), None
        try:
            while done < n:
                left = timeout_s - (time.monotonic() - start)
                if left <= 0:
                    raise APIError(504, "the request ran past the server's timeout of "
                                        f"{timeout_s:g} s", type="timeout_error", code="timeout")
                try:  # (not wait_for: on 3.11 it swallows a cancel that meets a delta arriving,
                    # so a request whose client left would run to its end)
                    async with asyncio.timeout(min(self.config.keepalive_s, left)):
                        item = await queue.get()
                except TimeoutError:
                    yield None
                    continue
                if isinstance(item, Exception):
                    raise APIError(500, "generation failed", type="server_error")
                first = first or time.monotonic()
                done += item.finish_reason is not None
                if item.finish_reason is not None:
                    self.metrics.finished(item.usage, start, first, time.monotonic())
                yield item
        finally:
            self.cancel(rid)

    def cancel(self, rid: str) -> None:
        """A no-op once the request finished. Else (the client went away) its slots are freed
        before the next step; the abort itself runs on the engine thread, so the event loop never
        waits for a step to finish."""
        self.arrived.pop(rid, None)  # (left there when the client went before its stream started)
        if self.queues.pop(rid, None) is not None:
            self.aborts.append(rid)
            self.wake.set()

    def _run(self) -> None:
        while not self.stopped:
            while self.aborts:
                rid = self.aborts.popleft()
                if rid in self.engine.requests:  # else it finished: nothing to free
                    self.engine.abort(rid)
                    self.metrics.aborted.inc()
            if not self.engine.has_unfinished():
                self.wake.wait(timeout=0.5)
                self.wake.clear()
                continue
            try:
                deltas = self.engine.step()
            except Exception as e:  # noqa: BLE001 (a failed step fails its requests, not the app)
                for rid in list(self.queues):
                    if rid not in self.engine.requests:
                        self._send(rid, e)
                continue
            for d in deltas:
                self._send(d.request_id, d)

    def _send(self, rid: str, item) -> None:
        target = self.queues.get(rid)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def close(self) -> None:
        self.stopped = True
        self.wake.set()


def create_app(engine: Engine, config: ServerConfig | None = None,
               store: ConversationStore | None = None) -> FastAPI:
    """The API, and the chat app at / over `store` (an in-memory one, gone at exit, when none is
    given)."""
    config = config or ServerConfig()
    metrics = Metrics(engine)
    loop = EngineLoop(engine, config, metrics)
    backend = Backend(engine, store or ConversationStore(":memory:"), config,
                      loop.submit, loop.deltas, loop.cancel)
    app = FastAPI(title="nanoseek", version="1", docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    app.add_middleware(Guard, config=config, routes=app.router.routes,
                       count=lambda route, status: metrics.requests.labels(route, status).inc())
    if config.cors_origins:  # added last, so outermost: a preflight never meets the key check
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(engine.rows), "waiting": len(engine.waiting)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_api_routes(app, backend)
    add_chat_routes(app, backend)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's envelope: never FastAPI's 422, never a stack trace to the client."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        return APIError(400, str(e.errors()[:1])).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return APIError(500, "internal server error", type="server_error").response()
