"""Function calling through the API: OpenAI's `tools` and `tool_choice` (as DeepSeek's API takes
them), tool calls sent back in assistant messages, `role: "tool"` results, and the model's calls
parsed out of its answer into `tool_calls`.

The model writes a call as DeepSeek-V3 does, after its reasoning (tokenizer.py's template):
`<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` + "\\n```json\\n" +
ARGUMENTS + "\\n```" + `<｜tool▁call▁end｜>`, further calls one per line, then
`<｜tool▁calls▁end｜>` and EOS.

How the model learns which tools it has: V3's chat template renders no tool definitions, and
DeepSeek's API puts them in the system prompt; so does this server, as one system text after the
client's, each function's name, description and parameter schema as JSON. The conversation is then
rendered exactly as V3's template renders it, and the definitions, client text, are encoded as
plain text (a description cannot forge a control token).

`tool_choice`: "none" offers no tools (and bans the call token), "auto" lets the model choose,
"required" and a named function force a call by constrained decoding (grammar.py): the answer is
exactly one call, of an offered function (the named one), its arguments JSON of the function's
`parameters` schema, so even a tiny model makes a valid call every time.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from nanoseek.serve.http import APIError
from nanoseek.tokenizer import (
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_BEGIN,
    TOOL_CALLS_END,
    TOOL_SEP,
    Tokenizer,
)

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a function's name
FENCE_OPEN, FENCE_CLOSE = "\n```json\n", "\n```"


@dataclass
class Tools:
    """A request's tools: its functions by name, and the choice ("auto", "required", or the name
    of the function it must call; "none" is no Tools at all)."""

    functions: dict[str, dict]
    choice: str


def tools_from(body: dict, tok: Tokenizer) -> tuple[Tools | None, bool]:
    """The request's tools (None: none offered) and whether calls are banned (tools given with
    tool_choice "none"); every problem is a 400 naming `tools` or `tool_choice`."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if not isinstance(tools, list):
        raise APIError(400, "tools must be a list of {type: function, function: {name, "
                            "description, parameters}}", param="tools")
    functions, strict = {}, False
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(f, dict) or t.get("type") != "function":
            raise APIError(400, f"tools[{i}] must be {{type: function, function: {{...}}}}",
                           param="tools")
        name, params = f.get("name"), f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in functions:
            raise APIError(400, f"tools[{i}].function.name must be a new name of 1-64 letters, "
                                f"digits, _ or -, got {name!r}", param="tools")
        if not isinstance(f.get("description", ""), str) or not isinstance(params, dict):
            raise APIError(400, f"tools[{i}].function: description must be a string and "
                                "parameters a JSON Schema object", param="tools")
        unknown = set(f) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise APIError(400, f"tools[{i}].function.{min(unknown)} is not supported by this "
                                "server", param="tools", code="unsupported_parameter")
        functions[name] = {"name": name, "description": f.get("description", ""),
                           "parameters": params}
        strict |= f.get("strict") is True
    if choice is None:
        choice = "auto" if functions else "none"
    if isinstance(choice, dict):
        f = choice.get("function") if choice.get("type") == "function" else None
        choice = f.get("name") if isinstance(f, dict) else None
        if choice not in functions:
            raise APIError(400, "tool_choice must name one of the tools ({type: function, "
                                "function: {name}})", param="tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise APIError(400, f"tool_choice must be none, auto, required or {{type: function, "
                            f"function: {{name}}}}, got {choice!r}", param="tool_choice")
    elif choice == "required" and not functions:
        raise APIError(400, "tool_choice 'required' needs tools, and the request has none",
                       param="tool_choice")
    if functions and not tok.has_tool_tokens:
        raise APIError(400, "tools: this model's tokenizer has no tool-call tokens, so it cannot "
                            "call tools", param="tools", code="unsupported_parameter")
    if choice == "none" or not functions:
        return None, bool(functions)
    if strict and choice == "auto":  # (only a forced call is held to its schema)
        raise APIError(400, "tools: strict function calls need tool_choice required or a named "
                            "function; with auto the model's calls are not held to the schema",
                       param="tools", code="unsupported_parameter")
    return Tools(functions, choice), False


def system_text(tools: Tools) -> str:
    """The tool definitions as the model reads them (a system text)."""
    lines = [json.dumps(f, ensure_ascii=False) for f in tools.functions.values()]
    return ("## Tools\nYou can call these functions (each with its description and the JSON "
            "Schema of its arguments):\n" + "\n".join(lines))


def call_grammar(tools: Tools, tok: Tokenizer) -> str | None:
    """For a forced choice, the grammar (grammar.py's lark) of the answer: one call of an offered
    function (the named one) with arguments of its schema; None when the model chooses."""
    if tools.choice == "auto":
        return None
    names = list(tools.functions) if tools.choice == "required" else [tools.choice]
    ids = {t: f"<[{tok.token_to_id(t)}]>" for t in (TOOL_CALLS_BEGIN, TOOL_CALLS_END,
                                                     TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_SEP)}
    rules = [f'start: WS? {ids[TOOL_CALLS_BEGIN]} {ids[TOOL_CALL_BEGIN]} "function" '
             f'{ids[TOOL_SEP]} ({" | ".join(f"f{i}" for i in range(len(names)))}) '
             f'{ids[TOOL_CALL_END]} {ids[TOOL_CALLS_END]}',
             "WS: /[ \\t\\r\\n]{1,3}/"]
    for i, name in enumerate(names):
        # arguments as json.dumps writes them (", ", ": "), the spelling of V3's own calls; no
        # free whitespace, which a small model would spend its tokens on
        schema = tools.functions[name]["parameters"] | {"x-guidance": {
            "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
        rules += [f"f{i}: {json.dumps(name + FENCE_OPEN)} a{i} {json.dumps(FENCE_CLOSE)}",
                  f"a{i}: %json {json.dumps(schema)}"]
    return "\n".join(rules)


def message_fields(i: int, m: dict) -> dict:
    """A tool turn's own fields of message i, for the template: an assistant's tool_calls
    ({type, function: {name, arguments}}, ids dropped: the template does not write them) or a tool
    result's tool_call_id, checked."""
    where = f"messages[{i}]"
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise APIError(400, f"{where}.tool_call_id must be the string id of the call it "
                                "answers", param="messages")
        return {}
    calls = m.get("tool_calls")
    if calls in (None, []):
        return {}
    if m["role"] != "assistant" or not isinstance(calls, list):
        raise APIError(400, f"{where}.tool_calls must be a list, and only an assistant's",
                       param="messages")
    out = []
    for k, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(f, dict) and c.get("type", "function") == "function"
                and isinstance(f.get("name"), str) and isinstance(f.get("arguments"), str)):
            raise APIError(400, f"{where}.tool_calls[{k}] must be {{id, type: function, function:"
                                " {name, arguments: a JSON string}}", param="messages")
        out.append({"type": "function",
                    "function": {"name": f["name"], "arguments": f["arguments"]}})
    return {"tool_calls": out}


@dataclass
class CallParser:
    """One sample's answer, fed as it streams, split into plain content and tool calls; each
    feed() returns what became certain: ("content", text), ("call", {index, id, name}) and
    ("arguments", (index, text)) events. Text that may yet be the start of a call is held back
    until it is not, so a streamed answer never shows a tool token."""

    buf: str = ""
    state: str = "text"  # text | between (calls) | head (of a call) | args | done
    calls: list[dict] = field(default_factory=list)  # {id, name, arguments}, as parsed so far
    held: str = ""  # the raw text from <｜tool▁calls▁begin｜> on, given back if no call comes

    def feed(self, text: str) -> list[tuple[str, object]]:
        self.buf += text
        if self.state != "text":
            self.held += text
        out = []
        while True:
            if self.state == "text":
                at = self.buf.find(TOOL_CALLS_BEGIN)
                if at < 0:
                    keep = _partial_suffix(self.buf, TOOL_CALLS_BEGIN)
                    if len(self.buf) > keep:
                        out.append(("content", self.buf[:len(self.buf) - keep]))
                        self.buf = self.buf[len(self.buf) - keep:]
                    return out
                if at:
                    out.append(("content", self.buf[:at]))
                self.held, self.buf = self.buf[at:], self.buf[at + len(TOOL_CALLS_BEGIN):]
                self.state = "between"
            elif self.state == "between":
                rest = self.buf.lstrip("\n")
                if rest.startswith(TOOL_CALL_BEGIN):
                    self.buf, self.state = rest[len(TOOL_CALL_BEGIN):], "head"
                elif rest.startswith(TOOL_CALLS_END) or (rest and not TOOL_CALL_BEGIN.startswith(
                        rest[:len(TOOL_CALL_BEGIN)])):
                    self.state = "done"
                else:
                    return out
            elif self.state == "head":  # "function<｜tool▁sep｜>NAME\n```json\n"
                sep, end = self.buf.find(TOOL_SEP), self.buf.find(FENCE_OPEN)
                if sep < 0 or end < sep:
                    return out
                name = self.buf[sep + len(TOOL_SEP):end]
                self.calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "name": name,
                                   "arguments": ""})
                out.append(("call", {"index": len(self.calls) - 1, "id": self.calls[-1]["id"],
                                     "name": name}))
                self.buf, self.state = self.buf[end + len(FENCE_OPEN):], "args"
            elif self.state == "args":
                close = FENCE_CLOSE + TOOL_CALL_END
                at = self.buf.find(close)
                cut = at if at >= 0 else len(self.buf) - _partial_suffix(self.buf, close)
                if cut:
                    self.calls[-1]["arguments"] += self.buf[:cut]
                    out.append(("arguments", (len(self.calls) - 1, self.buf[:cut])))
                if at < 0:
                    self.buf = self.buf[cut:]
                    return out
                self.buf, self.state = self.buf[at + len(close):], "between"
            else:  # done: what follows the calls is dropped
                self.buf = ""
                return out

    def finish(self) -> list[tuple[str, object]]:
        """The text still held: content, unless it began calls (then, with no call parsed, the raw
        text goes back as content)."""
        if self.state == "text":
            out, self.buf = ([("content", self.buf)] if self.buf else []), ""
            return out
        if not self.calls:
            self.state = "done"
            return [("content", self.held)]
        return []


def _partial_suffix(text: str, mark: str) -> int:
    """The length of the longest end of `text` that `mark` starts with (it may be completed)."""
    for n in range(min(len(text), len(mark) - 1), 0, -1):
        if mark.startswith(text[-n:]):
            return n
    return 0


def parse_answer(content: str) -> tuple[str | None, list[dict]]:
    """A whole answer as (the content before its calls, None when that is blank; its tool calls,
    in OpenAI's shape). An answer without a call comes back as it is."""
    p = CallParser()
    events = p.feed(content) + p.finish()
    text = "".join(e for kind, e in events if kind == "content")
    if not p.calls:
        return text, []
    return text.rstrip() or None, [{"id": c["id"], "type": "function", "function": {
        "name": c["name"], "arguments": c["arguments"]}} for c in p.calls]


class CallStream:
    """One streamed sample's content deltas as OpenAI streams an answer with calls: content
    deltas, then per call a first delta with its index, id, type and name (arguments "") and then
    its arguments in pieces. Whitespace before a call is held back and dropped, as parse_answer
    drops it, so the streamed content is the whole answer's."""

    def __init__(self):
        self.parser, self.blank = CallParser(), ""

    def deltas(self, content: str, last: bool = False) -> list[dict]:
        events = self.parser.feed(content) + (self.parser.finish() if last else [])
        out = []
        for kind, e in events:
            if kind == "content":
                text = self.blank + e
                self.blank = text[len(text.rstrip()):]
                if text := text.rstrip():
                    out.append({"content": text})
            elif kind == "call":
                out.append({"tool_calls": [{"index": e["index"], "id": e["id"], "type": "function",
                                            "function": {"name": e["name"], "arguments": ""}}]})
            else:
                index, text = e
                out.append({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        if last and self.blank and not self.parser.calls:
            out.append({"content": self.blank})
        return out

    def finish_reason(self, reason: str) -> str:
        """'tool_calls' for an answer that ended (not cut short) with calls."""
        return "tool_calls" if reason == "stop" and self.parser.calls else reason
