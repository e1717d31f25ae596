"""The chat app: a page at / and the JSON + SSE routes under /api it talks to.

Conversations live server-side (store.py), so a reload or a restart loses nothing. A reply streams as
server-sent events: `reasoning` text, then `content` text with the answer so far rendered to sanitised
HTML (render.py), then `done` with the saved message. A client that goes away (the stop button) aborts
the generation and what was generated is saved, marked `aborted`, as DeepSeek's app keeps a stopped
answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from nanoseek.infer.sampling import SamplingParams
from nanoseek.serve.api import RENAME_BODY, REPLY_BODY, APIError, EventStream, json_object, number
from nanoseek.serve.render import code_css, render
from nanoseek.serve.store import ConversationStore, NotFound, StoreError
from nanoseek.tokenizer import render_chat

STATIC = files("nanoseek.serve") / "static"
RENDER_EVERY_S = 0.1  # re-render the streaming answer at most this often (and once at the end)


def add_chat_app(app: FastAPI, store: ConversationStore, run: Callable, deltas: Callable, cancel: Callable,
                 info: dict) -> None:
    """Routes of the page. `run(prompt, params)` queues a generation, `deltas(rid, queue, n)` yields it and
    `cancel(rid)` drops it, all from the API server, so the app shares its engine loop, queue limit, timeout
    and metrics."""

    def fail(e: StoreError) -> APIError:
        return APIError(404, str(e), type="not_found_error") if isinstance(e, NotFound) else APIError(400, str(e))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/static/code.css", include_in_schema=False)
    async def css():
        return Response(code_css(), media_type="text/css")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/info")
    def server_info():
        """The model's name and a notice for the page (e.g. that the model is untrained), or ""."""
        return info

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
            raise fail(e) from None
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
            raise fail(e) from None

    @app.delete("/api/conversations/{cid}")
    def delete_conversation(cid: str):
        try:
            store.delete(cid)
        except StoreError as e:
            raise fail(e) from None
        return {"id": cid, "deleted": True}

    @app.post("/api/conversations/{cid}/reply", openapi_extra=REPLY_BODY)
    async def reply(cid: str, request: Request):
        """{"content": the user's new message (absent: regenerate the last answer), "thinking": bool,
        "temperature", "top_p", "max_tokens"} -> an event stream of the answer."""
        body = await _json(request)
        params = _params(body)
        thinking = body.get("thinking", True)
        content = body.get("content")
        if not isinstance(thinking, bool):
            raise APIError(400, "thinking must be true or false", param="thinking")
        if content is not None and (not isinstance(content, str) or not content.strip()):
            raise APIError(400, "content must be a non-empty string", param="content")
        try:
            if content is None:
                store.drop_last_reply(cid)
                asked = None
            else:
                asked = store.add_message(cid, "user", content)
            history = store.get(cid).messages
        except StoreError as e:
            raise fail(e) from None
        if not history or history[-1].role != "user":
            raise APIError(400, "nothing to answer: the conversation has no question after its last answer")
        prompt = render_chat([{"role": m.role, "content": m.content} for m in history], thinking=thinking)
        try:
            rid, queue = await run(prompt, params)
        except APIError:  # refused (too long, queue full): the question was not asked
            if asked is not None:
                store.delete_message(asked.id)
            raise
        return EventStream(_events(store, cid, deltas(rid, queue, 1)), media_type="text/event-stream",
                           on_close=lambda: cancel(rid),
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(store: ConversationStore, cid: str, source: AsyncIterator) -> AsyncIterator[bytes]:
    def event(obj: dict) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    start, thought, rendered_at = time.monotonic(), None, 0.0
    reasoning, content, finish, saved = "", "", None, False

    def save() -> Any:
        return store.add_message(cid, "assistant", content, reasoning, thought, finish or "aborted")

    try:
        async for d in source:
            if d is None:
                yield b": keep-alive\n\n"
                continue
            if d.reasoning:
                reasoning += d.reasoning
                yield event({"type": "reasoning", "text": d.reasoning})
            if d.content:
                if thought is None:
                    thought = round(time.monotonic() - start, 1)
                content += d.content
                now = time.monotonic()
                out = {"type": "content", "text": d.content, "thought_s": thought}
                if now - rendered_at >= RENDER_EVERY_S:
                    out["html"], rendered_at = render(content), now
                yield event(out)
            finish = d.finish_reason or finish
        message = save()
        saved = True
        yield event({"type": "done", "message": {**message.__dict__, "html": render(content)}})
    except Exception as e:  # noqa: BLE001 (e.g. the server's timeout): the stream says so, the part is saved
        yield event({"type": "error", "message": getattr(e, "message", "generation failed")})
    finally:
        if not saved:  # stopped by the user, or failed: keep what was generated
            try:
                save()
            except StoreError:  # the conversation was deleted meanwhile
                pass


async def _json(request: Request) -> dict:
    return json_object(await request.body() or b"{}")


def _params(body: dict) -> SamplingParams:
    """The app's settings: temperature, top_p, max_tokens; R1's recommended 0.6 and 0.95 by default."""
    try:
        return SamplingParams(temperature=number(body, "temperature", 0.6, lo=0, hi=2),
                              top_p=number(body, "top_p", 0.95, lo=0, hi=1),
                              max_tokens=number(body, "max_tokens", None, int, lo=1))
    except ValueError as e:  # what only SamplingParams checks (e.g. top_p 0)
        raise APIError(400, str(e).removeprefix("SamplingParams.")) from None
