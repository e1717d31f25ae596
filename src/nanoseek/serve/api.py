"""The DeepSeek/OpenAI-compatible API: /v1/chat/completions with `reasoning_content`, /v1/completions,
/v1/models, /health. One engine loop (a thread calling Engine.step) serves every request: continuous
batching; each request's deltas reach its handler through an asyncio queue.

Wire facts (GUIDE §4): streamed chunks carry `delta.reasoning_content` first, then `delta.content`, never
both in one chunk; the first chunk carries the role; a last chunk per choice has `finish_reason` and an
empty delta; with `stream_options.include_usage` a chunk with `choices: []` and `usage`; then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException

from nanoseek.infer.engine import Delta, Engine, Usage
from nanoseek.infer.sampling import SamplingParams
from nanoseek.serve.store import ConversationStore
from nanoseek.tokenizer import render_chat


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status,
                            headers={"Retry-After": "1"} if self.status == 429 else None)


class EngineLoop:
    """Runs engine.step() in one background thread while there is work; hands each delta to the queue of
    its request on the event loop."""

    def __init__(self, engine: Engine, on_abort=None):
        self.engine, self.on_abort = engine, on_abort
        self.queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.aborts: collections.deque[str] = collections.deque()  # cancelled on the event loop, aborted here
        self.wake = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="nanoseek-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt, params: SamplingParams) -> tuple[str, asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        rid = f"req-{uuid.uuid4().hex[:24]}"
        self.queues[rid] = (asyncio.get_running_loop(), queue)
        try:
            self.engine.add_request(prompt, params, request_id=rid)
        except Exception:
            self.queues.pop(rid, None)
            raise
        self.wake.set()
        return rid, queue

    def cancel(self, rid: str) -> None:
        """The client went away: its slots are freed before the next step. The abort itself runs on the
        engine thread, so the event loop never waits for a step to finish."""
        if self.queues.pop(rid, None) is not None:
            self.aborts.append(rid)
            self.wake.set()

    def _run(self) -> None:
        while not self.stopped:
            while self.aborts:
                rid = self.aborts.popleft()
                if rid in self.engine.requests:  # else it finished: nothing to free
                    self.engine.abort(rid)
                    if self.on_abort is not None:
                        self.on_abort()
            if not self.engine.has_unfinished():
                self.wake.wait(timeout=0.5)
                self.wake.clear()
                continue
            try:
                deltas = self.engine.step()
            except Exception as e:  # noqa: BLE001 (a failed step fails its requests, not the server)
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


# ---------------------------------------------------------------------------------------------
# request parsing: every problem is a 400 that names the field


def json_object(raw: bytes) -> dict:
    """A request body that must be a JSON object of valid text, or a 400 that says why."""
    try:
        body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode()  # JSON may escape a lone surrogate ("\ud800"); text can't
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested past Python's recursion limit
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def number(body: dict, name: str, default, kind=float, lo=None, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise APIError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, got {v!r}", param=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if hi is None else f"<= {hi}"
        raise APIError(400, f"{name} must be {bounds}, got {v}", param=name)
    return kind(v)


def sampling_from(body: dict, legacy: bool = False) -> SamplingParams:
    """The request's sampling settings. legacy: /v1/completions, whose `logprobs` is how many alternatives
    to return with each token's log-probability (0: the chosen token's alone), not a switch."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "stop must be a string or a list of non-empty strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
    logprobs, ignore_eos = body.get("logprobs"), body.get("ignore_eos") or False  # ignore_eos: as vLLM
    top = 0
    if legacy:
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= 20):
            raise APIError(400, f"logprobs must be an integer in [0, 20] (alternatives per token), got {logprobs!r}",
                           param="logprobs")
        top, logprobs = logprobs or 0, logprobs is not None
    logprobs = logprobs or False
    for name, v in (("logprobs", logprobs), ("ignore_eos", ignore_eos)):
        if not isinstance(v, bool):
            raise APIError(400, f"{name} must be true or false", param=name)
    if logprobs and not legacy:
        top = number(body, "top_logprobs", 0, int, lo=0, hi=20)
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=number(body, "temperature", 1.0, lo=0, hi=2),
            top_p=number(body, "top_p", 1.0, lo=0, hi=1), top_k=number(body, "top_k", 0, int, lo=0),
            min_p=number(body, "min_p", 0.0, lo=0, hi=1),
            presence_penalty=number(body, "presence_penalty", 0.0, lo=-2, hi=2),
            frequency_penalty=number(body, "frequency_penalty", 0.0, lo=-2, hi=2),
            repetition_penalty=number(body, "repetition_penalty", 1.0, lo=0.01, hi=10),
            seed=number(body, "seed", None, int), n=number(body, "n", 1, int, lo=1, hi=16),
            stop=tuple(stop or ()), logprobs=logprobs, ignore_eos=ignore_eos, top_logprobs=top)
    except ValueError as e:  # what only SamplingParams checks (e.g. top_p 0)
        field, _, rest = str(e).removeprefix("SamplingParams.").partition(" ")
        raise APIError(400, f"{field} {rest}", param=field) from None


def chat_prompt(body: dict) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}]: role must be system, user or assistant", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}]: content must be a string or a list of text parts", param="messages")
        # reasoning_content / reasoning sent back is dropped: R1 sees only earlier answers
        clean.append({"role": m["role"], "content": content})
    thinking = body.get("thinking", True)
    if isinstance(thinking, dict):  # {"type": "enabled" | "disabled"}
        thinking = thinking.get("type", "enabled") != "disabled"
    if not isinstance(thinking, bool):
        raise APIError(400, "thinking must be true/false or {\"type\": \"enabled\"|\"disabled\"}", param="thinking")
    return render_chat(clean, thinking=thinking)


# The request bodies in the OpenAPI schema (/openapi.json), for clients and fuzzers. The routes read the raw
# body (every problem a 400 in the OpenAI envelope, never FastAPI's 422), so these only describe what
# sampling_from, chat_prompt and the routes accept; null means the default wherever the type allows it.
def _range(kind: str, lo=None, hi=None) -> dict:
    return {"type": [kind, "null"]} | ({"minimum": lo} if lo is not None else {}) | (
        {"maximum": hi} if hi is not None else {})


def _json_body(properties: dict, required: tuple[str, ...] = (), body_required: bool = True) -> dict:
    """An `openapi_extra` for a route that reads a JSON object itself."""
    schema = {"type": "object", "properties": properties} | ({"required": list(required)} if required else {})
    return {"requestBody": {"required": body_required, "content": {"application/json": {"schema": schema}}}}


TOP_P = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1}
SAMPLING_FIELDS = {
    "model": {"type": "string", "description": "this server's model (GET /v1/models); another is a 404"},
    "n": _range("integer", 1, 16), "seed": _range("integer"),
    "stop": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"},
                       {"type": "array", "items": {"type": "string", "minLength": 1}}]},
    "max_tokens": _range("integer", 1), "max_completion_tokens": _range("integer", 1),
    "temperature": _range("number", 0, 2), "top_p": TOP_P, "top_k": _range("integer", 0),
    "min_p": _range("number", 0, 1), "presence_penalty": _range("number", -2, 2),
    "frequency_penalty": _range("number", -2, 2), "repetition_penalty": _range("number", 0.01, 10),
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": _range("integer", 0, 20) | {"description": "read only with logprobs"},
    "ignore_eos": {"type": ["boolean", "null"]},
}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "user", "assistant"]},
    "content": {"anyOf": [{"type": "string"}, {
        "type": "array", "description": "content parts: the text ones are joined, others skipped",
        "items": {"type": "object", "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}}]}}}
CHAT_COMPLETIONS_BODY = _json_body(SAMPLING_FIELDS | {
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": ["boolean", "null"]}}},
    "thinking": {"anyOf": [{"type": "boolean"}, {"type": "object", "properties": {
        "type": {"enum": ["enabled", "disabled"]}}}]},
}, required=("messages",))
COMPLETIONS_BODY = _json_body({k: v for k, v in SAMPLING_FIELDS.items() if k != "top_logprobs"} | {
    "prompt": {"type": "string", "minLength": 1},
    "logprobs": _range("integer", 0, 20) | {"description": "alternatives returned with each token's log-probability"},
}, required=("prompt",))
# the chat app's (webapp.py): an empty body is {}
NON_BLANK = {"type": "string", "pattern": r"\S"}
RENAME_BODY = _json_body({"title": NON_BLANK}, required=("title",), body_required=False)
REPLY_BODY = _json_body({
    "content": NON_BLANK | {"type": ["string", "null"],
                            "description": "the new question; absent or null: regenerate the last answer"},
    "thinking": {"type": "boolean"}, "temperature": _range("number", 0, 2), "top_p": TOP_P,
    "max_tokens": _range("integer", 1)}, body_required=False)


def usage_json(usages: list[Usage]) -> dict:
    first = usages[0]
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion,
            "total_tokens": first.prompt_tokens + completion,
            "prompt_cache_hit_tokens": first.cached_tokens, "prompt_cache_miss_tokens": first.uncached_tokens,
            "completion_tokens_details": {"reasoning_tokens": sum(u.reasoning_tokens for u in usages)}}


@dataclass
class ServerConfig:
    model_name: str = "nanoseek"
    api_keys: tuple[str, ...] = ()  # Bearer keys every /v1 route needs; none: open
    reasoning_alias: bool = False  # also send reasoning_content as "reasoning", for clients that read that name
    max_queue: int = 256  # requests waiting for a slot; beyond, 429 with Retry-After
    keepalive_s: float = 10.0  # an SSE comment this often while a streamed request waits
    timeout_s: float = 600.0  # a request running longer is cancelled (504)
    max_body_bytes: int = 1 << 20
    cors_origins: tuple[str, ...] = ()  # closed by default
    notice: str = ""  # a line the chat app shows above every conversation (e.g. that the model is untrained)


class Metrics:
    """Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nanoseek_requests", "HTTP requests", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("nanoseek_prompt_tokens", "prompt tokens", registry=r)
        self.cached_tokens = Counter("nanoseek_prompt_cache_hit_tokens", "prompt tokens from the prefix cache",
                                     registry=r)
        self.completion_tokens = Counter("nanoseek_completion_tokens", "generated tokens", registry=r)
        self.aborted = Counter("nanoseek_aborted_requests", "requests cancelled before they finished (the client "
                               "went away, or a timeout)", registry=r)
        self.ttft = Histogram("nanoseek_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tpot = Histogram("nanoseek_time_per_output_token_seconds", "time per output token after the first",
                              registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        Gauge("nanoseek_queue_depth", "requests waiting for a slot", registry=r).set_function(
            lambda: len(engine.waiting))
        Gauge("nanoseek_running", "sequences being decoded", registry=r).set_function(lambda: len(engine.rows))
        Gauge("nanoseek_prompt_cache_hit_ratio", "cached share of all prompt tokens", registry=r).set_function(
            lambda: engine.stats.cached_tokens / max(1, engine.stats.cached_tokens + engine.stats.prefill_tokens))

    def finished(self, usage: Usage, start: float, first: float | None, end: float) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.cached_tokens.inc(usage.cached_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if first is not None:
            self.ttft.observe(first - start)
            if usage.completion_tokens > 1:
                self.tpot.observe((end - first) / (usage.completion_tokens - 1))


def create_app(engine: Engine, config: ServerConfig | None = None, store: ConversationStore | None = None) -> FastAPI:
    """The API, and the chat app at / over `store` (an in-memory one, gone at exit, when none is given)."""
    from nanoseek.serve.webapp import add_chat_app  # it builds on this module

    config = config or ServerConfig()
    loop_holder: dict[str, EngineLoop] = {}
    metrics = Metrics(engine)
    app = FastAPI(title="nanoseek", version="1", docs_url=None, redoc_url=None)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def engine_loop() -> EngineLoop:
        if "loop" not in loop_holder:
            loop_holder["loop"] = EngineLoop(engine, on_abort=metrics.aborted.inc)
        return loop_holder["loop"]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):  # never FastAPI's 422
        return APIError(400, str(e.errors()[:1])).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        return APIError(e.status_code, str(e.detail), type="not_found_error" if e.status_code == 404
                        else "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):  # no stack trace to the client
        return APIError(500, "internal server error", type="server_error").response()

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if config.api_keys and path.startswith(("/v1", "/api")):
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in config.api_keys:
                response = APIError(401, "invalid API key", type="authentication_error",
                                    code="invalid_api_key").response()
                metrics.requests.labels(path, "401").inc()
                return response
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > config.max_body_bytes:
            response = APIError(413, f"the request body is {int(size):,} bytes; the limit is "
                                     f"{config.max_body_bytes:,}", code="request_too_large").response()
        else:
            response = await call_next(request)
        if path.startswith("/v1") and request.method != "OPTIONS":  # CORS preflights are not requests
            metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > config.max_body_bytes:  # a chunked body has no content-length to check up front
            raise APIError(413, f"the request body is over the limit of {config.max_body_bytes:,} bytes",
                           code="request_too_large")
        body = json_object(raw)
        model = body.get("model", config.model_name)
        if model != config.model_name:
            raise APIError(404, f"model {model!r} does not exist; this server has {config.model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(engine.rows), "waiting": len(engine.waiting)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "nanoseek"}]}

    submitted: dict[str, float] = {}  # request id -> when it arrived (TTFT counts from there)

    async def run(prompt, params: SamplingParams, param: str = "messages") -> tuple[str, asyncio.Queue]:
        if len(engine.waiting) >= config.max_queue:
            raise APIError(429, f"the server is busy: {len(engine.waiting)} requests are waiting; retry shortly",
                           type="rate_limit_error", code="queue_full")
        arrived = time.monotonic()
        try:
            rid, queue = engine_loop().submit(prompt, params)
        except ValueError as e:
            raise APIError(400, str(e), param=param, code="context_length_exceeded"
                           if "max_seq_len" in str(e) else None) from None
        submitted[rid] = arrived
        return rid, queue

    async def deltas(rid: str, queue: asyncio.Queue, n: int) -> AsyncIterator[Delta | None]:
        """The request's deltas; None each keepalive_s without one (a stream sends a comment then)."""
        done, start, first = 0, submitted.pop(rid, time.monotonic()), None
        try:
            while done < n:
                left = config.timeout_s - (time.monotonic() - start)
                if left <= 0:
                    raise APIError(504, f"the request ran past the server's timeout of {config.timeout_s:g} s",
                                   type="timeout_error", code="timeout")
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(config.keepalive_s, left))
                except TimeoutError:
                    yield None
                    continue
                if isinstance(item, Exception):
                    raise APIError(500, "generation failed", type="server_error")
                first = first or time.monotonic()
                done += item.finish_reason is not None
                if item.finish_reason is not None:
                    metrics.finished(item.usage, start, first, time.monotonic())
                yield item
        finally:
            cancel(rid)

    def cancel(rid: str) -> None:
        """A no-op once the request finished; frees its slots if the client left."""
        submitted.pop(rid, None)  # (left there when the client went before its stream started)
        engine_loop().cancel(rid)

    @app.post("/v1/chat/completions", openapi_extra=CHAT_COMPLETIONS_BODY)
    async def chat_completions(request: Request):
        body = await body_of(request)
        params = sampling_from(body)
        prompt = chat_prompt(body)
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):  # checked before the request is queued: it would run unread
            raise APIError(400, "stream_options must be an object", param="stream_options")
        rid, queue = await run(prompt, params)
        cid, created = f"chatcmpl-{rid[4:]}", int(time.time())
        alias = config.reasoning_alias
        if body.get("stream"):
            chunk = _chunker(cid, "chat.completion.chunk", created, config.model_name)
            logprob = (lambda lp: _logprob(engine, lp)) if params.logprobs else None
            head = [_sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
                    for i in range(params.n)]
            return _event_response(head, _event_stream(deltas(rid, queue, params.n), params.n,
                                                       _chat_chunks(chunk, alias, logprob), chunk,
                                                       bool(stream_options.get("include_usage"))),
                                   lambda: cancel(rid))
        choices: dict[int, dict] = {i: {"text": "", "reasoning": "", "content": "", "lp": []} for i in range(params.n)}
        usages = {}
        async for d in deltas(rid, queue, params.n):
            if d is None:
                continue
            c = choices[d.index]
            c["reasoning"] += d.reasoning
            c["content"] += d.content
            if d.logprobs:
                c["lp"] += d.logprobs
            if d.finish_reason:
                c["finish"], usages[d.index] = d.finish_reason, d.usage
        out = []
        for i, c in choices.items():
            message = {"role": "assistant", "content": c["content"], "reasoning_content": c["reasoning"]}
            if alias:
                message["reasoning"] = c["reasoning"]
            choice = {"index": i, "message": message, "finish_reason": c["finish"], "logprobs": None}
            if params.logprobs:
                choice["logprobs"] = {"content": [_logprob(engine, lp) for lp in c["lp"]]}
            out.append(choice)
        return {"id": cid, "object": "chat.completion", "created": created, "model": config.model_name,
                "choices": out, "usage": usage_json([usages[i] for i in range(params.n)])}

    @app.post("/v1/completions", openapi_extra=COMPLETIONS_BODY)
    async def completions(request: Request):
        body = await body_of(request)
        params = sampling_from(body, legacy=True)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "prompt must be a non-empty string", param="prompt")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise APIError(400, "stream_options must be an object", param="stream_options")
        rid, queue = await run(prompt, params, param="prompt")
        if body.get("stream"):
            chunk = _chunker(f"cmpl-{rid[4:]}", "text_completion", int(time.time()), config.model_name)

            offsets = [0] * params.n

            def chunks_of(d: Delta) -> list[dict]:
                if not d.text and not d.finish_reason and not d.logprobs:
                    return []
                lp = None
                if params.logprobs:
                    lp, offsets[d.index] = _legacy_logprobs(engine, d.logprobs or [], offsets[d.index],
                                                            params.skip_special_tokens)
                return [chunk([{"index": d.index, "text": d.text, "logprobs": lp,
                                "finish_reason": d.finish_reason}])]

            return _event_response([], _event_stream(deltas(rid, queue, params.n), params.n, chunks_of, chunk,
                                                     bool(stream_options.get("include_usage"))), lambda: cancel(rid))
        texts, finish, usages, lps = [""] * params.n, [None] * params.n, {}, [[] for _ in range(params.n)]
        async for d in deltas(rid, queue, params.n):
            if d is None:
                continue
            texts[d.index] += d.text
            lps[d.index] += d.logprobs or []
            if d.finish_reason:
                finish[d.index], usages[d.index] = d.finish_reason, d.usage
        return {"id": f"cmpl-{rid[4:]}", "object": "text_completion", "created": int(time.time()),
                "model": config.model_name,
                "choices": [{"index": i, "text": t, "finish_reason": f,
                             "logprobs": _legacy_logprobs(engine, lps[i], 0, params.skip_special_tokens)[0]
                             if params.logprobs else None}
                            for i, (t, f) in enumerate(zip(texts, finish))],
                "usage": usage_json([usages[i] for i in range(params.n)])}

    add_chat_app(app, store or ConversationStore(":memory:"), run, deltas, cancel,
                 info={"model": config.model_name, "notice": config.notice})
    return app


def _logprob(engine: Engine, lp) -> dict:
    def entry(tid: int, value: float) -> dict:
        token = engine.tok.decode([tid])
        return {"token": token, "logprob": value, "bytes": list(token.encode())}

    return {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}


def _legacy_logprobs(engine: Engine, lps: list, offset: int, skip_special: bool) -> tuple[dict, int]:
    """/v1/completions' log-probabilities: parallel lists of the tokens' text, their log-probabilities, their
    alternatives ({text: log-probability}: the N likeliest and, as OpenAI's, always the token chosen) and
    where each starts in the completion's text (the offset after the last one is returned, for the next
    chunk of a stream). A token's text is what it adds to the completion (a skipped special token: ""), so
    the tokens join into the text, except where a character's bytes span tokens: each token alone then
    decodes to U+FFFD, as in vLLM. The alternatives name every token in full."""
    tokens, offsets, tops = [], [], []
    for lp in lps:
        tokens.append(engine.tok.decode([lp.token_id], skip_special_tokens=skip_special))
        offsets.append(offset)
        offset += len(tokens[-1])
        tops.append({engine.tok.decode([t]): v for t, v in lp.top} | {engine.tok.decode([lp.token_id]): lp.logprob})
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps], "top_logprobs": tops,
            "text_offset": offsets}, offset


def _chunker(cid: str, kind: str, created: int, model: str) -> Callable[..., dict]:
    def chunk(choices: list, **extra) -> dict:
        return {"id": cid, "object": kind, "created": created, "model": model, "choices": choices, **extra}
    return chunk


def _event_response(head: list[bytes], events: AsyncIterator[bytes], on_close: Callable[[], None]
                    ) -> StreamingResponse:
    async def body():
        for h in head:
            yield h
        async for e in events:
            yield e
    return EventStream(body(), media_type="text/event-stream", on_close=on_close,
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class EventStream(StreamingResponse):
    """Closes its generator however the response ends, then calls on_close (which cancels its request).
    Starlette cancels a response whose client hung up, possibly while it awaits a send; the generator would
    then be closed (and its request aborted) only when the garbage collector found it. And a client gone
    before the first byte leaves the generator unstarted: closing it runs none of its code, so its own
    `finally` cannot be what cancels the request."""

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


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _event_stream(source: AsyncIterator[Delta | None], n: int, chunks_of: Callable[[Delta], list[dict]],
                        chunk: Callable[..., dict], include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request: chunks_of(delta) as `data:` events, keep-alive comments while it
    waits, an error event if it fails after the headers went out, the usage chunk if asked, [DONE] last."""
    usages = {}
    try:
        async for d in source:
            if d is None:  # still waiting: keep proxies from closing an idle connection
                yield b": keep-alive\n\n"
                continue
            for c in chunks_of(d):
                yield _sse(c)
            if d.finish_reason:
                usages[d.index] = d.usage
    except APIError as e:  # headers are sent: the error goes in the stream
        yield _sse({"error": {"message": e.message, "type": e.type, "code": e.code}})
        yield b"data: [DONE]\n\n"
        return
    finally:  # an abandoned `async for` does not close its source: do it, so a hang-up aborts the request
        await source.aclose()
    if include_usage and len(usages) == n:
        yield _sse(chunk([], usage=usage_json([usages[i] for i in range(n)])))
    yield b"data: [DONE]\n\n"


def _chat_chunks(chunk: Callable[..., dict], alias: bool, logprob: Callable | None) -> Callable[[Delta], list[dict]]:
    """A delta as chat.completion.chunk objects: reasoning and content never share one (DeepSeek's order);
    its tokens' logprobs ride on the first (on an empty delta if its tokens made no text, as </think>)."""

    def chunks_of(d: Delta) -> list[dict]:
        out = []
        if d.reasoning:
            out.append({"reasoning_content": d.reasoning, **({"reasoning": d.reasoning} if alias else {})})
        if d.content:
            out.append({"content": d.content})
        if logprob is not None and d.logprobs and not out:
            out.append({})
        choices = [{"index": d.index, "delta": delta, "finish_reason": None} for delta in out]
        if logprob is not None and d.logprobs:
            choices[0]["logprobs"] = {"content": [logprob(lp) for lp in d.logprobs]}
        if d.finish_reason:
            choices.append({"index": d.index, "delta": {}, "finish_reason": d.finish_reason})
        return [chunk([c]) for c in choices]

    return chunks_of
