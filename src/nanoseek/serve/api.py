"""The DeepSeek/OpenAI-compatible API: /v1/chat/completions with `reasoning_content`,
/v1/completions and /v1/models, over the server's one engine loop (app.py). Beyond plain chat:
function calling (`tools`, `tool_choice`, `role: "tool"` results; serve/tools.py), logit_bias,
chat prefix completion (a last assistant message with `prefix: true`, as DeepSeek's beta API has
it), fill-in-the-middle (`suffix`, for a tokenizer with FIM tokens), and the prompt
cache's hits as DeepSeek (`prompt_cache_hit_tokens`) and OpenAI (`prompt_tokens_details`) name
them. A parameter it does not honour is a 400 that names it.

On the wire: streamed chunks carry `delta.reasoning_content` first, then `delta.content`, never both
in one chunk; the first chunk carries the role; a last chunk per choice has `finish_reason` and an
empty delta; with `stream_options.include_usage` a chunk with `choices: []` and `usage`; then
`[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from nanoseek.infer.engine import Engine, leaves_reasoning_open
from nanoseek.infer.grammar import GrammarError, json_grammar
from nanoseek.infer.sampling import SamplingParams
from nanoseek.infer.sequence import Delta, Usage
from nanoseek.serve.http import (
    KEEP_ALIVE,
    TOP_P,
    APIError,
    Backend,
    ServerConfig,
    event_stream,
    json_body,
    json_object,
    number,
    range_schema,
    refuse_unknown,
    sse,
    unless_disconnected,
)
from nanoseek.serve.tools import (
    CallStream,
    call_grammar,
    message_fields,
    parse_answer,
    system_text,
    tools_from,
)
from nanoseek.tokenizer import THINK_END, THINK_START, TOOL_CALLS_BEGIN, Tokenizer, TokenizerError


def add_api_routes(app: FastAPI, backend: Backend) -> None:
    config = backend.config

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model",
                                            "created": 0, "owned_by": "nanoseek"}]}

    @app.post("/v1/chat/completions", openapi_extra=CHAT_COMPLETIONS_BODY)
    async def chat_completions(request: Request):
        return await _chat_completion(backend, request, await _body(config, request, CHAT_KNOWN))

    @app.post("/v1/completions", openapi_extra=COMPLETIONS_BODY)
    async def completions(request: Request):
        return await _completion(backend, request, await _body(config, request, COMPLETIONS_KNOWN))


# ---------------------------------------------------------------------------------------------
# request parsing: every problem is a 400 that names the field


async def _body(config: ServerConfig, request: Request, known: frozenset[str]) -> dict:
    """The request's JSON (parsed in a worker thread: up to max_body_bytes of it), once its model
    is this server's and it has no parameter this server does not honour."""
    body = await asyncio.to_thread(json_object, await request.body())
    refuse_unknown(body, known)
    model = body.get("model", config.model_name)
    if model != config.model_name:
        raise APIError(404, f"model {model!r} does not exist; this server has "
                            f"{config.model_name!r}", type="not_found_error", param="model",
                       code="model_not_found")
    return body


def sampling_from(body: dict, legacy: bool = False) -> SamplingParams:
    """The request's sampling settings. legacy: /v1/completions, whose `logprobs` is how many
    alternatives to return with each token's log-probability (0: the chosen token's alone), not a
    switch."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list)
                             or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "stop must be a string or a list of non-empty strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens!r}",
                       param="max_tokens")
    logprobs = body.get("logprobs")
    ignore_eos = body.get("ignore_eos") or False  # as vLLM's
    top = 0
    if legacy:
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= 20):
            raise APIError(400, "logprobs must be an integer in [0, 20] (alternatives per token), "
                                f"got {logprobs!r}", param="logprobs")
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
            stop=tuple(stop or ()), logprobs=logprobs, ignore_eos=ignore_eos, top_logprobs=top,
            logit_bias=_logit_bias(body))
    except ValueError as e:  # what only SamplingParams checks (e.g. top_p 0)
        field, _, rest = str(e).removeprefix("SamplingParams.").partition(" ")
        raise APIError(400, f"{field} {rest}", param=field) from None


# What each route honours. Any other parameter, unless null, is a 400 that names it: a client
# must never believe a setting took effect when it did not (OpenAI answers the same way).
SAMPLING_KNOWN = frozenset({
    "model", "stream", "stream_options", "n", "seed", "stop", "max_tokens", "temperature",
    "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logprobs", "ignore_eos", "logit_bias"})
CHAT_KNOWN = SAMPLING_KNOWN | {"messages", "thinking", "top_logprobs", "max_completion_tokens",
                               "response_format", "tools", "tool_choice"}
COMPLETIONS_KNOWN = SAMPLING_KNOWN | {"prompt", "echo", "suffix"}
# a message's keys; reasoning sent back is dropped, as R1 must not see it (DeepSeek's rule), except
# in a last assistant message with prefix: true, whose answer (and reasoning) the model continues
MESSAGE_KNOWN = frozenset({"role", "content", "reasoning_content", "reasoning", "prefix",
                           "tool_calls", "tool_call_id"})


def response_grammar(body: dict) -> str | None:
    """The grammar of response_format (OpenAI's): none for text, any JSON object for json_object,
    the schema's JSON for json_schema ({"json_schema": {"name", "schema", "strict"}})."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return json_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema must be an object with a schema "
                                "object", param="response_format")
        return json_grammar(schema)
    raise APIError(400, f"response_format type must be text, json_object or json_schema, got "
                        f"{kind if kind is not None else fmt!r}", param="response_format")


def _logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's logit_bias: {"token id": bias in [-100, 100]} (JSON keys are strings)."""
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise APIError(400, "logit_bias must be an object of token ids to numbers",
                       param="logit_bias")
    out = {}
    for key, value in bias.items():
        if not key.isdigit() or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: {key!r}: {value!r} must be a token id and a number "
                                "in [-100, 100]", param="logit_bias")
        out[int(key)] = float(value)
    return out


def chat_messages(body: dict) -> tuple[list[dict], bool, dict | None]:
    """The conversation as the template takes it, whether the model thinks first, and the prefix
    the model continues ({"reasoning", "content"}), if the last message is one."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    clean, prefix = [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant",
                                                             "tool"):
            raise APIError(400, f"messages[{i}]: role must be system, user, assistant or tool",
                           param="messages")
        for name, value in m.items():
            if name not in MESSAGE_KNOWN and value not in (None, False, []):
                raise APIError(400, f"messages[{i}].{name} is not supported by this server",
                               param="messages", code="unsupported_parameter")
        content, tool = m.get("content"), message_fields(i, m)
        if content is None and m["role"] == "assistant" and not tool:  # (as the llm CLI sends)
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text", "") for p in content
                     if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        if not isinstance(content, str) and not (content is None and tool):
            raise APIError(400, f"messages[{i}]: content must be a string or a list of text parts",
                           param="messages")
        if m.get("prefix") not in (None, False):
            if m["prefix"] is not True or m["role"] != "assistant" or i != len(messages) - 1:
                raise APIError(400, f"messages[{i}].prefix: only the last message may be a "
                                    "prefix (true), and only the assistant's", param="messages")
            reasoning = m.get("reasoning_content", m.get("reasoning")) or ""
            if not isinstance(reasoning, str):
                raise APIError(400, f"messages[{i}].reasoning_content must be a string",
                               param="messages")
            prefix = {"reasoning": reasoning, "content": content}
            break
        # reasoning_content / reasoning sent back is dropped: R1 sees only earlier answers
        clean.append({"role": m["role"], "content": content, **tool})
    thinking = body.get("thinking", True)
    if isinstance(thinking, dict):  # {"type": "enabled" | "disabled"}
        thinking = thinking.get("type", "enabled") != "disabled"
    if not isinstance(thinking, bool):
        raise APIError(400, "thinking must be true/false or {\"type\": \"enabled\"|\"disabled\"}",
                       param="thinking")
    return clean, thinking, prefix


def chat_ids(tok: Tokenizer, messages: list[dict], thinking: bool, prefix: dict | None
             ) -> list[int]:
    """The prompt's token ids; with a prefix, what the template writes before an assistant turn
    and then the turn's start: its reasoning, open, when there is no answer text yet and thinking
    is on (the model goes on reasoning), else the reasoning closed and the answer so far (the model
    goes on answering), spelled as R1 writes a turn (`<think>\n...\n</think>\n\n...`)."""
    if prefix is None:
        return tok.encode_chat(messages, True, thinking)
    if tok.assistant_id is None:  # a foreign template opens the turn itself; think tags are text
        ids, turn = tok.encode_chat(messages, True, thinking), prefix["content"]
        if prefix["reasoning"]:
            # a template whose generation prompt opens the block (`<think>\n`) wrote the tag
            opened = leaves_reasoning_open(ids, tok)
            turn = ("" if opened else f"{THINK_START}\n") + prefix["reasoning"] + (
                f"\n{THINK_END}\n\n{turn}" if turn or not thinking else "")
        return ids + tok.encode_text(turn)
    ids = tok.encode_chat(messages, add_generation_prompt=False) if messages else [tok.bos_id]
    ids += [tok.assistant_id, tok.think_start_id]
    if thinking and not prefix["content"]:
        return ids + tok.encode_text("\n" + prefix["reasoning"])
    return ids + tok.encode_text("\n" + prefix["reasoning"] + "\n") + [tok.think_end_id] + \
        tok.encode_text("\n\n" + prefix["content"])

def _include_usage(body: dict) -> bool:
    """stream_options.include_usage; checked before the request is queued, where it would run
    unread."""
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    return bool(stream_options.get("include_usage"))


# The bodies these routes read, as /openapi.json describes them (see http.json_body).
SAMPLING_FIELDS = {
    "model": {"type": "string",
              "description": "this server's model (GET /v1/models); another is a 404"},
    "n": range_schema("integer", 1, 16), "seed": range_schema("integer"),
    "stop": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"},
                       {"type": "array", "items": {"type": "string", "minLength": 1}}]},
    "max_tokens": range_schema("integer", 1), "max_completion_tokens": range_schema("integer", 1),
    "temperature": range_schema("number", 0, 2), "top_p": TOP_P,
    "top_k": range_schema("integer", 0),
    "min_p": range_schema("number", 0, 1), "presence_penalty": range_schema("number", -2, 2),
    "frequency_penalty": range_schema("number", -2, 2),
    "repetition_penalty": range_schema("number", 0.01, 10),
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": range_schema("integer", 0, 20) | {"description": "read only with logprobs"},
    "ignore_eos": {"type": ["boolean", "null"]},
    "logit_bias": {"type": ["object", "null"], "propertyNames": {"pattern": "^[0-9]+$"},
                   "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                   "description": "token id -> a bias added to its logit"},
}
TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "properties": {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": {"type": "object", "required": ["name", "arguments"], "properties": {
        "name": {"type": "string"}, "arguments": {"type": "string",
                                                  "description": "the arguments' JSON"}}}}}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "user", "assistant", "tool"]},
    "tool_calls": {"type": ["array", "null"], "items": TOOL_CALL,
                   "description": "an assistant's calls (its content may then be null)"},
    "tool_call_id": {"type": "string", "description": "a tool result's: the call it answers"},
    "prefix": {"type": ["boolean", "null"], "description": "the last message only, an "
               "assistant's: the model continues it (its reasoning_content if no content)"},
    "reasoning_content": {"type": ["string", "null"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "null"}, {
        "type": "array", "description": "content parts: the text ones are joined, others skipped",
        "items": {"type": "object", "properties": {"type": {"type": "string"},
                                                   "text": {"type": "string"}}}}]}}}
CHAT_COMPLETIONS_BODY = json_body(SAMPLING_FIELDS | {
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": ["boolean", "null"]}}},
    "tools": {"type": ["array", "null"], "items": {
        "type": "object", "required": ["type", "function"], "properties": {
            "type": {"const": "function"},
            "function": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": {"type": "string"}, "strict": {"type": "boolean"},
                "parameters": {"type": "object", "description": "a JSON Schema"}}}}}},
    "tool_choice": {"anyOf": [
        {"enum": ["none", "auto", "required", None]},
        {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"const": "function"}, "function": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}}}}}]},
    "thinking": {"anyOf": [{"type": "boolean"}, {"type": "object", "properties": {
        "type": {"enum": ["enabled", "disabled"]}}}]},
    "response_format": {"anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["type"],
         "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"], "properties": {
            "type": {"const": "json_schema"},
            "json_schema": {"type": "object", "required": ["schema"], "properties": {
                "name": {"type": "string"}, "strict": {"type": "boolean"},
                "schema": {"type": "object"}}}}}]},
}, required=("messages",))
COMPLETIONS_BODY = json_body({k: v for k, v in SAMPLING_FIELDS.items() if k != "top_logprobs"} | {
    "prompt": {"type": "string", "minLength": 1},
    "suffix": {"type": ["string", "null"], "description": "fill in the middle (FIM tokens needed)"},
    "echo": {"type": ["boolean", "null"],
             "description": "the prompt before the completion in text (not with logprobs)"},
    "logprobs": range_schema("integer", 0, 20) | {
        "description": "alternatives returned with each token's log-probability"},
}, required=("prompt",))


# ---------------------------------------------------------------------------------------------
# the two generating routes


async def _chat_completion(backend: Backend, request: Request, body: dict):
    params = sampling_from(body)
    params.grammar = response_grammar(body)
    if params.grammar is not None:
        try:  # (compiling a schema may take a while: not on the event loop)
            await asyncio.to_thread(backend.engine.grammars.matcher, params.grammar)
        except GrammarError as e:
            raise APIError(400, f"response_format: {e}", param="response_format") from None
    messages, thinking, prefix = chat_messages(body)
    tools = await _tools(backend, body, params, messages, prefix)
    include_usage = _include_usage(body)
    try:
        prompt = await asyncio.to_thread(chat_ids, backend.engine.tok, messages, thinking, prefix)
    # what the template refuses: nanoseek's (a tool result after no call) or the model's own
    except ValueError as e:  # (a TemplateError is one)
        raise APIError(400, f"messages: {e}", param="messages") from None
    rid, queue = await backend.submit(prompt, params)
    engine, model, alias = backend.engine, backend.config.model_name, backend.config.reasoning_alias
    cid, created = f"chatcmpl-{rid[4:]}", int(time.time())
    deltas = backend.deltas(rid, queue, params.n)
    if body.get("stream"):
        chunk = _chunker(cid, "chat.completion.chunk", created, model)
        logprob = (lambda lp: _logprob(engine, lp)) if params.logprobs else None
        head = [sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None}])) for i in range(params.n)]
        calls = [CallStream() for _ in range(params.n)] if tools else None
        events = _event_stream(deltas, params.n, _chat_chunks(chunk, alias, logprob, calls),
                               chunk, include_usage)
        return _event_response(head, events, lambda: backend.cancel(rid))
    return await unless_disconnected(request, _chat_response(backend, deltas, params, cid,
                                                             created, tools))


async def _tools(backend: Backend, body: dict, params: SamplingParams, messages: list[dict],
                 prefix: dict | None) -> bool:
    """Apply the request's tools (serve/tools.py): their definitions added to `messages` as a
    system text, a forced call's grammar, or the call token banned for tool_choice none. Whether
    the answers are parsed for calls."""
    tok = backend.engine.tok
    tools, banned = tools_from(body, tok)
    if banned:  # (over any logit_bias of the client's: "none" means no call)
        params.logit_bias[tok.token_to_id(TOOL_CALLS_BEGIN)] = -100.0
    if tools is None:
        return False
    messages.append({"role": "system", "content": system_text(tools)})
    grammar = call_grammar(tools, tok)
    if grammar is not None:
        if params.grammar is not None or prefix is not None:
            raise APIError(400, f"tool_choice {tools.choice!r} forces a call, which neither "
                                "response_format nor a prefix message can go with",
                           param="tool_choice")
        try:
            await asyncio.to_thread(backend.engine.grammars.matcher, grammar)
        except GrammarError as e:
            raise APIError(400, f"tools: a function's parameters: {e}", param="tools") from None
        params.grammar = grammar
    return True


async def _chat_response(backend: Backend, deltas: AsyncIterator[Delta | None],
                         params: SamplingParams, cid: str, created: int, tools: bool) -> dict:
    engine, model, alias = backend.engine, backend.config.model_name, backend.config.reasoning_alias
    choices = {i: {"text": "", "reasoning": "", "content": "", "lp": []} for i in range(params.n)}
    usages = {}
    async for d in deltas:
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
        content, calls = parse_answer(c["content"]) if tools else (c["content"], [])
        message = {"role": "assistant", "content": content, "reasoning_content": c["reasoning"]}
        if alias:
            message["reasoning"] = c["reasoning"]
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls and c["finish"] == "stop" else c["finish"]
        choice = {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
        if params.logprobs:
            choice["logprobs"] = {"content": [_logprob(engine, lp) for lp in c["lp"]]}
        out.append(choice)
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": out, "usage": usage_json([usages[i] for i in range(params.n)])}


async def _completion(backend: Backend, request: Request, body: dict):
    params = sampling_from(body, legacy=True)
    prompt, suffix = body.get("prompt"), body.get("suffix")
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "prompt must be a non-empty string", param="prompt")
    if suffix is not None:  # fill in the middle, between prompt and suffix
        if not isinstance(suffix, str):
            raise APIError(400, "suffix must be a string", param="suffix")
        try:
            prompt = await asyncio.to_thread(backend.engine.tok.encode_fim, prompt, suffix)
        except TokenizerError as e:
            raise APIError(400, f"suffix: {e}", param="suffix",
                           code="unsupported_parameter") from None
    if body.get("echo") is not None and not isinstance(body["echo"], bool):
        raise APIError(400, f"echo must be true or false, got {body['echo']!r}", param="echo")
    if body.get("echo") and body.get("logprobs") is not None:
        # the engine scores only the tokens it samples, not the prompt's
        raise APIError(400, "echo with logprobs needs the prompt's log-probabilities, which this "
                            "server does not compute: drop one of echo and logprobs", param="echo",
                       code="unsupported_parameter")
    include_usage = _include_usage(body)
    echo = body["prompt"] if body.get("echo") else ""  # the text given, as OpenAI returns it
    rid, queue = await backend.submit(prompt, params, param="prompt")
    engine, model, n = backend.engine, backend.config.model_name, params.n
    skip = params.skip_special_tokens
    deltas = backend.deltas(rid, queue, n)
    if body.get("stream"):
        chunk = _chunker(f"cmpl-{rid[4:]}", "text_completion", int(time.time()), model)
        offsets = [0] * n
        unechoed = set(range(n)) if echo else set()  # choices whose first chunk is still to come

        def chunks_of(d: Delta) -> list[dict]:
            text = d.text
            if d.index in unechoed:  # each choice's first chunk starts with the prompt
                unechoed.discard(d.index)
                text = echo + text
            if not text and not d.finish_reason and not d.logprobs:
                return []
            lp = None
            if params.logprobs:
                lp, offsets[d.index] = _legacy_logprobs(engine, d.logprobs or [],
                                                        offsets[d.index], skip)
            return [chunk([{"index": d.index, "text": text, "logprobs": lp,
                            "finish_reason": d.finish_reason}])]

        events = _event_stream(deltas, n, chunks_of, chunk, include_usage)
        return _event_response([], events, lambda: backend.cancel(rid))
    return await unless_disconnected(
        request, _completion_response(backend, deltas, params, rid, echo))


async def _completion_response(backend: Backend, deltas: AsyncIterator[Delta | None],
                               params: SamplingParams, rid: str, echo: str) -> dict:
    engine, model, n = backend.engine, backend.config.model_name, params.n
    skip = params.skip_special_tokens
    texts, finish, usages, lps = [echo] * n, [None] * n, {}, [[] for _ in range(n)]
    async for d in deltas:
        if d is None:
            continue
        texts[d.index] += d.text
        lps[d.index] += d.logprobs or []
        if d.finish_reason:
            finish[d.index], usages[d.index] = d.finish_reason, d.usage
    choices = [{"index": i, "text": t, "finish_reason": f,
                "logprobs": (_legacy_logprobs(engine, lps[i], 0, skip)[0] if params.logprobs
                             else None)}
               for i, (t, f) in enumerate(zip(texts, finish))]
    return {"id": f"cmpl-{rid[4:]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage_json([usages[i] for i in range(n)])}


# ---------------------------------------------------------------------------------------------
# what goes back


def usage_json(usages: list[Usage]) -> dict:
    first = usages[0]
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion,
            "total_tokens": first.prompt_tokens + completion,
            "prompt_cache_hit_tokens": first.cached_tokens,
            "prompt_cache_miss_tokens": first.uncached_tokens,
            "prompt_tokens_details": {"cached_tokens": first.cached_tokens},  # OpenAI's name
            "completion_tokens_details": {
                "reasoning_tokens": sum(u.reasoning_tokens for u in usages)}}


def _logprob(engine: Engine, lp) -> dict:
    def entry(tid: int, value: float) -> dict:
        token = engine.tok.decode([tid])
        return {"token": token, "logprob": value, "bytes": list(token.encode())}

    return {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}


def _legacy_logprobs(engine: Engine, lps: list, offset: int,
                     skip_special: bool) -> tuple[dict, int]:
    """/v1/completions' log-probabilities: parallel lists of the tokens' text, their
    log-probabilities, their alternatives ({text: log-probability}: the N likeliest and, as
    OpenAI's, always the token chosen) and where each starts in the completion's text (the offset
    after the last one is returned, for the next chunk of a stream). A token's text is what it adds
    to the completion (a skipped special token: ""), so the tokens join into the text, except where
    a character's bytes span tokens: each token alone then decodes to U+FFFD, as in vLLM. The
    alternatives name every token in full."""
    tokens, offsets, tops = [], [], []
    decode = engine.tok.decode
    for lp in lps:
        tokens.append(decode([lp.token_id], skip_special_tokens=skip_special))
        offsets.append(offset)
        offset += len(tokens[-1])
        tops.append({decode([t]): v for t, v in lp.top} | {decode([lp.token_id]): lp.logprob})
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps], "top_logprobs": tops,
            "text_offset": offsets}, offset


def _chunker(cid: str, kind: str, created: int, model: str) -> Callable[..., dict]:
    def chunk(choices: list, **extra) -> dict:
        return {"id": cid, "object": kind, "created": created, "model": model, "choices": choices,
                **extra}
    return chunk


def _event_response(head: list[bytes], events: AsyncIterator[bytes], on_close: Callable[[], None]
                    ) -> StreamingResponse:
    async def body():
        for h in head:
            yield h
        async for e in events:
            yield e
    return event_stream(body(), on_close)


async def _event_stream(source: AsyncIterator[Delta | None], n: int,
                        chunks_of: Callable[[Delta], list[dict]], chunk: Callable[..., dict],
                        include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request: chunks_of(delta) as `data:` events, keep-alive comments
    while it waits, an error event if it fails after the headers went out, the usage chunk if asked,
    [DONE] last."""
    usages = {}
    try:
        async for d in source:
            if d is None:  # still waiting
                yield KEEP_ALIVE
                continue
            for c in chunks_of(d):
                yield sse(c)
            if d.finish_reason:
                usages[d.index] = d.usage
    except APIError as e:  # headers are sent: the error goes in the stream
        yield sse({"error": {"message": e.message, "type": e.type, "code": e.code}})
        yield b"data: [DONE]\n\n"
        return
    finally:  # an abandoned `async for` does not close its source: do it, so a hang-up aborts
        await source.aclose()
    if include_usage and len(usages) == n:
        yield sse(chunk([], usage=usage_json([usages[i] for i in range(n)])))
    yield b"data: [DONE]\n\n"


def _chat_chunks(chunk: Callable[..., dict], alias: bool, logprob: Callable | None,
                 calls: list[CallStream] | None) -> Callable[[Delta], list[dict]]:
    """A delta as chat.completion.chunk objects: reasoning and content never share one (DeepSeek's
    order); its tokens' logprobs ride on the first (on an empty delta if its tokens made no text, as
    </think>). With tools (`calls`, one per sample) the content goes through its CallStream: tool
    calls come out as OpenAI streams them."""

    def chunks_of(d: Delta) -> list[dict]:
        out = []
        if d.reasoning:
            out.append({"reasoning_content": d.reasoning,
                        **({"reasoning": d.reasoning} if alias else {})})
        if calls is not None:
            out += calls[d.index].deltas(d.content, last=bool(d.finish_reason))
        elif d.content:
            out.append({"content": d.content})
        if logprob is not None and d.logprobs and not out:
            out.append({})
        choices = [{"index": d.index, "delta": delta, "finish_reason": None} for delta in out]
        if logprob is not None and d.logprobs:
            choices[0]["logprobs"] = {"content": [logprob(lp) for lp in d.logprobs]}
        if d.finish_reason:
            reason = d.finish_reason if calls is None else calls[d.index].finish_reason(
                d.finish_reason)
            choices.append({"index": d.index, "delta": {}, "finish_reason": reason})
        return [chunk([c]) for c in choices]

    return chunks_of
