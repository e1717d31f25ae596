"""The chat app: a page at / and the JSON + SSE routes under /api it talks to.

Conversations live server-side (store.py), so a reload or a restart loses nothing. A reply streams
as server-sent events: `reasoning` text, then `content` text with the answer so far rendered to
sanitised HTML (render.py), then `done` with the saved message. A client that goes away (the stop
button) aborts the generation and what was generated is saved, marked `aborted`, as DeepSeek's app
keeps a stopped answer.

Two tabs on one conversation: each reply names the conversation's version it was asked from (the
page has it from the conversation and from each reply's `start` event), a reply asked from an older
version, or while another is being written, is a 409, and the page then reloads the conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from nanoseek.infer.sampling import SamplingParams
from nanoseek.serve.http import (
    KEEP_ALIVE,
    TOP_P,
    APIError,
    Backend,
    event_stream,
    json_body,
    json_object,
    number,
    range_schema,
    refuse_unknown,
    sse,
)
from nanoseek.serve.render import code_css, render
from nanoseek.serve.store import Conflict, ConversationStore, NotFound, StoreError

STATIC = files("nanoseek.serve") / "static"
RENDER_EVERY_S = 0.1  # re-render the streaming answer at most this often (and once at the end)

# The bodies these routes read, as /openapi.json describes them (see http.json_body); an empty body
# is {}.
NON_BLANK = {"type": "string", "pattern": r"\S"}
RENAME_BODY = json_body({"title": NON_BLANK}, required=("title",), body_required=False)
REPLY_BODY = json_body({
    "content": NON_BLANK | {"type": ["string", "null"], "description":
                            "the new question; absent or null: regenerate the last answer"},
    "thinking": {"type": "boolean"}, "temperature": range_schema("number", 0, 2), "top_p": TOP_P,
    "max_tokens": range_schema("integer", 1),
    "version": range_schema("integer", 0) | {"description": "the conversation's version the page "
                                             "shows; another is a 409 (absent: not checked)"}},
    body_required=False)


REPLY_KNOWN = frozenset({"content", "thinking", "temperature", "top_p", "max_tokens", "version"})


def add_chat_routes(app: FastAPI, backend: Backend) -> None:
    """The page, its static files, and the conversations it reads and answers."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/static/code.css", include_in_schema=False)
    async def css():
        return Response(code_css(), media_type="text/css")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/info")
    def server_info():
        """The model's name, a notice for the page (e.g. that the model is untrained) and what to
        ask it (the shipped model's skills), each maybe ""."""
        config = backend.config
        return {"model": config.model_name, "notice": config.notice, "hint": config.hint}

    _add_conversation_routes(app, backend.store)
    answering: set[str] = set()  # conversations whose reply is being written

    @app.post("/api/conversations/{cid}/reply", openapi_extra=REPLY_BODY)
    async def reply(cid: str, request: Request):
        """{"content": the user's new message (absent: regenerate the last answer), "thinking":
        bool, "temperature", "top_p", "max_tokens", "version"} -> an event stream of the
        answer."""
        return await _reply(backend, cid, await _json(request), answering)


def _add_conversation_routes(app: FastAPI, store: ConversationStore) -> None:
    """List, create, read, rename and delete conversations."""

    @app.get("/api/conversations")
    def list_conversations(q: str = ""):
        return {"data": [c.to_json() for c in store.list(q)]}

    @app.post("/api/conversations")
    def create_conversation():
        return store.create().to_json()

    @app.get("/api/conversations/{cid}")
    def get_conversation(cid: str):
        try:
            c = store.get(cid)
        except StoreError as e:
            raise _fail(e) from None
        out = c.to_json()
        for m in out["messages"]:
            m["html"] = render(m["content"]) if m["role"] == "assistant" else None
        return out

    @app.patch("/api/conversations/{cid}", openapi_extra=RENAME_BODY)
    async def rename_conversation(cid: str, request: Request):
        body = await _json(request)
        try:
            return store.rename(cid, body.get("title")).to_json() | {"messages": None}
        except StoreError as e:
            raise _fail(e) from None

    @app.delete("/api/conversations/{cid}")
    def delete_conversation(cid: str):
        try:
            store.delete(cid)
        except StoreError as e:
            raise _fail(e) from None
        return {"id": cid, "deleted": True}


async def _reply(backend: Backend, cid: str, body: dict, answering: set[str]) -> Response:
    store = backend.store
    params = _params(body)
    refuse_unknown(body, REPLY_KNOWN)
    thinking, content = body.get("thinking", True), body.get("content")
    version = body.get("version")
    if not isinstance(thinking, bool):
        raise APIError(400, "thinking must be true or false", param="thinking")
    if content is not None and (not isinstance(content, str) or not content.strip()):
        raise APIError(400, "content must be a non-empty string", param="content")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise APIError(400, "version must be an integer", param="version")
    try:
        c = store.get(cid)
    except StoreError as e:
        raise _fail(e) from None
    if version is not None and version != c.version:
        raise _conflict(f"this conversation changed elsewhere (version {c.version}, not "
                        f"{version})")
    if cid in answering:
        raise _conflict("this conversation is being answered elsewhere")
    messages = [{"role": m.role, "content": m.content} for m in c.messages]
    if content is None:  # regenerate: without the last answer
        messages = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    else:
        messages.append({"role": "user", "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise APIError(400, "nothing to answer: the conversation has no question after its last "
                            "answer")
    prompt = await asyncio.to_thread(backend.engine.tok.encode_chat, messages, True, thinking)
    # queued before anything is stored: a refused request (too long, queue full) changes nothing
    rid, queue = await backend.submit(prompt, params)
    try:
        new_version, _ = store.begin_turn(cid, c.version, content)
    except StoreError as e:  # another reply began meanwhile, or the conversation was deleted
        backend.cancel(rid)
        raise (_conflict(str(e)) if isinstance(e, Conflict) else _fail(e)) from None
    answering.add(cid)

    def close() -> None:
        backend.cancel(rid)
        answering.discard(cid)

    return event_stream(_events(store, cid, new_version, backend.deltas(rid, queue, 1)),
                        on_close=close)


async def _events(store: ConversationStore, cid: str, version: int,
                  source: AsyncIterator) -> AsyncIterator[bytes]:
    start, thought, rendered_at = time.monotonic(), None, 0.0
    reasoning, content, finish, saved = "", "", None, False

    def save() -> Any:
        # a reply stopped in its reasoning keeps how long it thought
        took = thought if thought is not None else round(time.monotonic() - start, 1)
        return store.add_message(cid, "assistant", content, reasoning, took, finish or "aborted")

    yield sse({"type": "start", "version": version})
    try:
        async for d in source:
            if d is None:
                yield KEEP_ALIVE
                continue
            if d.reasoning:
                reasoning += d.reasoning
                yield sse({"type": "reasoning", "text": d.reasoning})
            if d.content:
                if thought is None:
                    thought = round(time.monotonic() - start, 1)
                content += d.content
                now = time.monotonic()
                out = {"type": "content", "text": d.content, "thought_s": thought}
                if now - rendered_at >= RENDER_EVERY_S:
                    out["html"], rendered_at = render(content), now
                yield sse(out)
            finish = d.finish_reason or finish
        message = save()
        saved = True
        yield sse({"type": "done", "message": {**message.__dict__, "html": render(content)}})
    except Exception as e:  # noqa: BLE001 (e.g. the server's timeout)
        # the stream says so; what was generated is saved below
        yield sse({"type": "error", "message": getattr(e, "message", "generation failed")})
    finally:
        if not saved:  # stopped by the user, or failed: keep what was generated
            try:
                save()
            except StoreError:  # the conversation was deleted meanwhile
                pass


def _conflict(message: str) -> APIError:
    return APIError(409, message + "; reload it", code="conversation_changed")


def _fail(e: StoreError) -> APIError:
    if isinstance(e, NotFound):
        return APIError(404, str(e), type="not_found_error")
    return APIError(400, str(e))


async def _json(request: Request) -> dict:
    return json_object(await request.body() or b"{}")


def _params(body: dict) -> SamplingParams:
    """The app's settings: temperature, top_p, max_tokens; R1's recommended 0.6 and 0.95 by
    default."""
    try:
        return SamplingParams(temperature=number(body, "temperature", 0.6, lo=0, hi=2),
                              top_p=number(body, "top_p", 0.95, lo=0, hi=1),
                              max_tokens=number(body, "max_tokens", None, int, lo=1))
    except ValueError as e:  # what only SamplingParams checks (e.g. top_p 0)
        raise APIError(400, str(e).removeprefix("SamplingParams.")) from None
