"""Function calling through the real server and the real `openai` client: tools offered, calls
forced by tool_choice (required, named) valid every time even from the tiny model, streamed as
OpenAI streams them, a tool result sent back in, refusals naming the field; and the call parser
and request checks on their own."""

import json
import random

import pytest

from nanoseek.serve.http import APIError
from nanoseek.serve.tools import CallParser, CallStream, parse_answer, system_text, tools_from
from nanoseek.tokenizer import (
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_BEGIN,
    TOOL_CALLS_END,
    TOOL_SEP,
    TOOL_TOKENS,
    Tokenizer,
    train_tokenizer,
)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from test_serve import start  # noqa: E402  (the real `nanoseek serve` on a free port)

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99},
        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1,
                                                       "maximum": 7}},
        "required": ["city"], "additionalProperties": False}}}
TOOLS = [ADD, WEATHER]
Q = [{"role": "user", "content": "Calculate 12 + 7."}]


def check_arguments(name: str, arguments: str) -> None:
    """The arguments are JSON of the function's schema (the two above, checked by hand)."""
    args = json.loads(arguments)
    if name == "add":
        assert set(args) == {"a", "b"}, args
        assert all(type(v) is int and 0 <= v <= 99 for v in args.values()), args
    else:
        assert name == "weather" and args["city"] in ("Paris", "Rome"), (name, args)
        assert set(args) <= {"city", "days"} and 1 <= args.get("days", 1) <= 7, args


def call_text(name: str, arguments: str) -> str:
    return (f"{TOOL_CALL_BEGIN}function{TOOL_SEP}{name}\n```json\n{arguments}\n```"
            f"{TOOL_CALL_END}")


ANSWER = ("Let me add.\n" + TOOL_CALLS_BEGIN + call_text("add", '{"a": 1, "b": 2}') + "\n"
          + call_text("weather", '{"city": "Rome"}') + TOOL_CALLS_END)


# ---- the parser and the request checks, without a server


def test_answers_parse_into_openai_tool_calls():
    content, calls = parse_answer(ANSWER)
    assert content == "Let me add."
    assert [(c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("function", "add", '{"a": 1, "b": 2}'), ("function", "weather", '{"city": "Rome"}')]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)
    assert parse_answer("\n" + TOOL_CALLS_BEGIN + call_text("add", "{}") + TOOL_CALLS_END)[0] \
        is None
    # no call: the answer as it is, tool-like text and a lone begin token included
    for text in ("The sum is 19. <｜tool", "a < b\n", TOOL_CALLS_BEGIN + "oops", ""):
        assert parse_answer(text) == (text, [])
    # cut short inside the arguments: the call so far
    content, calls = parse_answer(ANSWER[:ANSWER.index('"b"')])
    assert [c["function"]["arguments"] for c in calls] == ['{"a": 1, ']


@pytest.mark.parametrize("seed", range(20))
def test_streamed_pieces_add_up_to_the_parsed_answer(seed):
    rng = random.Random(seed)
    answer = rng.choice([ANSWER, "plain < text <｜ marks", ANSWER.replace("Let me add.\n", "")])
    if rng.random() < 0.3:
        answer = answer[:rng.randrange(len(answer))]
    cut = sorted(rng.sample(range(1, len(answer)), min(8, len(answer) - 1))) if answer else []
    pieces = [answer[i:j] for i, j in zip([0] + cut, cut + [len(answer)])]
    s, deltas = CallStream(), []
    for k, piece in enumerate(pieces):
        deltas += s.deltas(piece, last=k == len(pieces) - 1)
    content, calls = parse_answer(answer)
    assert "".join(d.get("content", "") for d in deltas) == (content or "")
    streamed = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            if "id" in c:  # a call's first delta: id, type, name, empty arguments
                assert c["index"] == len(streamed) and c["function"]["arguments"] == ""
                streamed[c["index"]] = [c["function"]["name"], ""]
            else:
                assert set(c) == {"index", "function"} and set(c["function"]) == {"arguments"}
                streamed[c["index"]][1] += c["function"]["arguments"]
    assert list(streamed.values()) == [[c["function"]["name"], c["function"]["arguments"]]
                                       for c in calls]
    if calls:  # no tool token ever shows in the content
        assert not any(t in d.get("content", "") for d in deltas for t in TOOL_TOKENS)
    assert s.finish_reason("stop") == ("tool_calls" if calls else "stop")
    assert s.finish_reason("length") == "length"


def test_a_parser_holds_back_only_what_may_begin_a_call():
    p = CallParser()
    assert p.feed("a <｜tool▁ca") == [("content", "a ")]
    assert p.feed("t") == [("content", "<｜tool▁cat")]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Calculate 12 + 7. add weather Paris Rome"] * 20, vocab_size=300)


@pytest.mark.parametrize("body, param, needle", [
    ({"tools": {"type": "function"}}, "tools", "tools must be a list"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools", "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0] must be"),
    ({"tools": [ADD, ADD]}, "tools", "must be a new name"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "'a b'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools",
     "parameters a JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]}, "tools",
     "tools[0].function.examples"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tool_choice": "always", "tools": TOOLS}, "tool_choice", "got 'always'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "tools",
     "strict function calls need tool_choice required"),
    ({"tool_choice": {"type": "function", "function": {"name": "mul"}}, "tools": TOOLS},
     "tool_choice", "name one of the tools"),
])
def test_bad_tools_are_400s_naming_the_field(tok, body, param, needle):
    with pytest.raises(APIError) as e:
        tools_from(body, tok)
    assert (e.value.status, e.value.param) == (400, param) and needle in e.value.message


def test_tools_need_a_tokenizer_with_tool_tokens(tok):
    tools, banned = tools_from({"tools": TOOLS, "tool_choice": {"type": "function", "function": {
        "name": "weather"}}}, tok)
    assert tools.choice == "weather" and list(tools.functions) == ["add", "weather"] and not banned
    assert tools_from({"tools": TOOLS, "tool_choice": "none"}, tok) == (None, True)
    assert tools_from({"tools": [], "tool_choice": "none"}, tok) == (None, False)
    text = system_text(tools)
    assert '"name": "add"' in text and '"maximum": 99' in text and "Add two numbers." in text
    state = json.loads(tok.tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in TOOL_TOKENS]
    import tokenizers

    old = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(state)))
    with pytest.raises(APIError, match="this model's tokenizer has no tool-call tokens") as e:
        tools_from({"tools": TOOLS}, old)
    assert e.value.param == "tools"
    assert tools_from({"tools": [], "tool_choice": "auto"}, old) == (None, False)


# ---- through the server


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def server(tiny_chat_dir):
    # the tool definitions make long prompts for a 512-token vocabulary
    proc, base = start(tiny_chat_dir, "--max-batch", "8", "--max-seq-len", "1024")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


NAMED = {"type": "function", "function": {"name": "weather"}}


@pytest.mark.parametrize("choice", ["required", NAMED])
def test_forced_calls_are_valid_every_time(client, choice):
    for thinking in (False, True):
        r = client.chat.completions.create(model="nanoseek", messages=Q, tools=TOOLS,
                                           tool_choice=choice, n=4, temperature=1.0, seed=1,
                                           max_tokens=160, extra_body={"thinking": thinking})
        for c in r.choices:
            assert c.finish_reason == "tool_calls", c
            assert c.message.content is None and len(c.message.tool_calls) == 1
            call = c.message.tool_calls[0]
            assert call.type == "function" and call.id.startswith("call_")
            if choice == NAMED:
                assert call.function.name == "weather"
            check_arguments(call.function.name, call.function.arguments)
            assert bool(c.message.model_extra["reasoning_content"]) == thinking


def test_forced_calls_stream_as_openai_streams_them(client):
    for choice in ("required", NAMED):
        stream = client.chat.completions.create(model="nanoseek", messages=Q, tools=TOOLS,
                                                tool_choice=choice, temperature=0.7, seed=3, n=2,
                                                max_tokens=160, stream=True,
                                                extra_body={"thinking": False})
        calls, finish = {}, {}
        for chunk in stream:
            for ch in chunk.choices:
                assert not ch.delta.content  # a call only
                for tc in ch.delta.tool_calls or []:
                    key = (ch.index, tc.index)
                    if key not in calls:  # first delta: id, type and name; arguments after
                        assert tc.id and tc.type == "function" and tc.function.name
                        calls[key] = [tc.function.name, tc.function.arguments or ""]
                    else:
                        assert tc.id is None and tc.function.name is None
                        calls[key][1] += tc.function.arguments
                if ch.finish_reason:
                    finish[ch.index] = ch.finish_reason
        assert sorted(calls) == [(0, 0), (1, 0)] and finish == {0: "tool_calls", 1: "tool_calls"}
        for name, arguments in calls.values():
            check_arguments(name, arguments)
    # streamed, the same call as unstreamed (greedy)
    kw = dict(model="nanoseek", messages=Q, tools=TOOLS, tool_choice=NAMED, temperature=0,
              max_tokens=160, extra_body={"thinking": False})
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0].function
    args = "".join(tc.function.arguments or "" for chunk in
                   client.chat.completions.create(**kw, stream=True)
                   for ch in chunk.choices for tc in ch.delta.tool_calls or [])
    assert args == whole.arguments


def test_a_tool_result_goes_back_in(client, tiny_chat_dir):
    """The assistant's call message (as the SDK returns it) and the tool's result go back in, and
    the prompt is the template's rendering of them with the tool definitions as a system text."""
    tok = Tokenizer.load(tiny_chat_dir)
    first = client.chat.completions.create(model="nanoseek", messages=Q, tools=TOOLS,
                                           tool_choice="required", temperature=0, max_tokens=160,
                                           extra_body={"thinking": False})
    message = first.choices[0].message
    call = message.tool_calls[0]
    turn = message.model_dump(exclude_none=True)
    history = Q + [turn, {"role": "tool", "tool_call_id": call.id, "content": "19"}]
    for stream in (False, True):
        r = client.chat.completions.create(model="nanoseek", messages=history, tools=TOOLS,
                                           max_tokens=40, temperature=0, stream=stream,
                                           stream_options={"include_usage": True} if stream
                                           else None)
        usage = list(r)[-1].usage if stream else r.usage
        tools, _ = tools_from({"tools": TOOLS}, tok)
        rendered = Q + [{"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": call.function.name,
                                              "arguments": call.function.arguments}}]},
            {"role": "tool", "content": "19"}, {"role": "system", "content": system_text(tools)}]
        assert usage.prompt_tokens == len(tok.encode_chat(rendered))
    # tool_choice none: nothing offered, so the prompt has no definitions
    r = client.chat.completions.create(model="nanoseek", messages=history, tools=TOOLS,
                                       tool_choice="none", max_tokens=40, temperature=0)
    assert r.usage.prompt_tokens == len(tok.encode_chat(rendered[:-1]))
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls"


def test_auto_offers_the_tools_and_parses_what_comes(client):
    r = client.chat.completions.create(model="nanoseek", messages=Q, tools=TOOLS, n=4, seed=2,
                                       temperature=1.0, max_tokens=60,
                                       extra_body={"thinking": False})
    plain = client.chat.completions.create(model="nanoseek", messages=Q, max_tokens=1)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the definitions
    for c in r.choices:
        for call in c.message.tool_calls or []:
            assert call.function.name and call.id
        assert TOOL_CALLS_BEGIN not in (c.message.content or "") or c.finish_reason == "length"


def test_tool_choice_none_bans_the_call_token(client, tiny_chat_dir):
    """Pushed to a call by logit_bias, the model starts one under auto, never under none."""
    begin = Tokenizer.load(tiny_chat_dir).token_to_id(TOOL_CALLS_BEGIN)
    kw = dict(model="nanoseek", messages=Q, tools=TOOLS, max_tokens=12, temperature=0,
              logit_bias={str(begin): 100}, extra_body={"thinking": False})
    auto = client.chat.completions.create(**kw, tool_choice="auto").choices[0]
    assert auto.message.tool_calls or TOOL_CALLS_BEGIN in auto.message.content
    none = client.chat.completions.create(**kw, tool_choice="none").choices[0]
    assert not none.message.tool_calls and TOOL_CALLS_BEGIN not in none.message.content


@pytest.mark.parametrize("extra, param, needle", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools",
     "parameters"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice", "name one of the tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice", "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "bogus"}}}], "tool_choice": "required"}, "tools", "parameters"),
    ({"messages": Q + [{"role": "tool", "tool_call_id": "c", "content": "1"}]}, "messages",
     "a tool result must follow"),
    ({"messages": Q + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add"}}]}]}, "messages",
     "messages[1].tool_calls[0]"),
    ({"messages": Q + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "content": "3"}]}, "messages", "messages[2].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}]},
     "messages", "only an assistant's"),
])
def test_bad_tool_requests_are_400s_naming_the_field(server, extra, param, needle):
    r = httpx.post(server + "/v1/chat/completions", json={"messages": Q, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"], err


def test_the_readme_tool_example_runs(server, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "127.0.0.1:8000" in b and "tool_calls" in b)
    exec(compile(block.replace("http://127.0.0.1:8000", server), "README.md", "exec"), {})
    name, arguments = capsys.readouterr().out.splitlines()[0].split(" ", 1)
    assert name == "add" and set(json.loads(arguments)) == {"a", "b"}
