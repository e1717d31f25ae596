"""The API server as clients see it: a real `nanoseek serve` process on a free loopback port, driven
by the real `openai` client and by raw HTTP for what the client hides (chunk order, [DONE], status
codes)."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt, *flags, db=None, env=None):
    """A real `nanoseek serve` of `ckpt` (None: the default model) on a free port; its conversations
    in `db` (else a new temporary file). Later flags override earlier ones (e.g. a second
    --max-seq-len)."""
    port = free_port()
    db = db or Path(tempfile.mkdtemp()) / "conversations.db"
    proc = subprocess.Popen([sys.executable, "-m", "nanoseek", "serve",
                             *([str(ckpt)] if ckpt else []), "--port", str(port),
                             "--max-seq-len", "256", "--db", str(db), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
    return proc, base


def wait_idle(server, tries=100):
    """/health once the server has noticed hang-ups and freed their slots (or after tries x 0.1
    s)."""
    for _ in range(tries):
        h = httpx.get(server + "/health", timeout=5).json()
        if h["running"] == 0 and h["waiting"] == 0:
            break
        time.sleep(0.1)
    return h


@pytest.fixture(scope="module")
def server(tiny_chat_dir):
    proc, base = start(tiny_chat_dir, "--max-batch", "8", "--reasoning-alias")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


Q = [{"role": "user", "content": "Calculate 12 + 7."}]
JSON = {"Content-Type": "application/json"}


def test_chat_completion_has_reasoning_content_and_usage(client):
    r = client.chat.completions.create(model="nanoseek", messages=Q, temperature=0, max_tokens=60)
    msg = r.choices[0].message
    extra = msg.model_extra
    assert extra["reasoning_content"] and msg.content and "</think>" not in msg.content
    assert extra["reasoning"] == extra["reasoning_content"]  # the opt-in alias
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    hit, miss = u.model_extra["prompt_cache_hit_tokens"], u.model_extra["prompt_cache_miss_tokens"]
    assert hit + miss == u.prompt_tokens
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens


def test_streaming_sends_reasoning_then_content_then_done(server):
    body = {"model": "nanoseek", "messages": Q, "temperature": 0, "max_tokens": 60, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    kinds = []
    for c in chunks[1:]:
        for ch in c["choices"]:
            d = ch["delta"]
            assert not ("reasoning_content" in d and "content" in d)  # never both in one chunk
            kinds += ["r"] * ("reasoning_content" in d) + ["c"] * ("content" in d)
    assert kinds and kinds == sorted(kinds, key=lambda k: k == "c")
    assert "r" in kinds and "c" in kinds
    last = chunks[-2]["choices"][0]
    assert last["finish_reason"] == "stop" and last["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    # streamed text equals the non-streamed answer
    whole = httpx.post(server + "/v1/chat/completions", json={**body, "stream": False},
                       timeout=60).json()
    streamed = "".join(ch["delta"].get("content", "") for c in chunks[1:] for ch in c["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]


def test_n_seed_stop_and_completions(client):
    kw = dict(model="nanoseek", messages=Q, n=3, temperature=1.0, seed=5, max_tokens=30)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.model_extra["reasoning_content"] for c in a.choices] == \
        [c.message.model_extra["reasoning_content"] for c in b.choices]
    kw = dict(model="nanoseek", prompt="12 + 3 = 15\n\n40 - 1", temperature=0, max_tokens=12)
    full = client.completions.create(**kw)
    text = full.choices[0].text
    assert text and full.usage.completion_tokens <= 12
    stop = text.strip()[:2]
    cut = client.completions.create(**kw, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list().data] == ["nanoseek"]


@pytest.mark.parametrize("body, status, needle", [
    ({"messages": Q, "temperature": 5}, 400, "temperature must be in [0, 2]"),
    ({"messages": Q, "max_tokens": "ten"}, 400, "max_tokens must be a positive integer"),
    ({"messages": []}, 400, "messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role must be"),
    ({"messages": Q, "model": "gpt-4"}, 404, "model 'gpt-4' does not exist"),
    ({"messages": [{"role": "user", "content": "1 + 1 = 2 " * 80}]}, 400,
     "the prompt has 406 tokens; the engine's max_seq_len is 256"),
    ({"messages": Q, "max_tokens": 1000}, 400, "> the engine's max_seq_len 256"),
])
def test_errors_use_the_openai_envelope(server, body, status, needle):
    r = httpx.post(server + "/v1/chat/completions", json={"model": "nanoseek", **body}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}


def test_malformed_bodies_are_400_not_422(server):
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers=JSON, timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(server + "/health", timeout=5).json()["status"] == "ok"


@pytest.mark.parametrize("body, needle", [
    # once read after the request was queued: a 500, and a generation nobody read
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": [true]}',
     "stream_options must be an object"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
     "a list of text parts"),
    # valid JSON, but no text: the tokenizer failed
    (b'{"prompt": "\\ud800"}', "surrogates not allowed"),
    # past the recursion limit
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
])
def test_bodies_that_were_500s_are_400s(server, body, needle):
    path = "/v1/completions" if b"prompt" in body else "/v1/chat/completions"
    r = httpx.post(server + path, content=body, headers=JSON, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_a_top_k_past_the_vocabulary_keeps_every_token(client):
    """top_k 2**63 used to overflow building the k tensor, failing every request in the batch."""
    kw = dict(model="nanoseek", messages=Q, max_tokens=8, seed=3)
    huge = client.chat.completions.create(**kw, extra_body={"top_k": 2**63})
    assert huge.choices[0].message.model_extra["reasoning_content"] == \
        client.chat.completions.create(**kw).choices[0].message.model_extra["reasoning_content"]


def test_streamed_completions_equal_the_unstreamed(client):
    kw = dict(model="nanoseek", prompt="<｜User｜>Calculate 2 + 3.<｜Assistant｜>", max_tokens=12,
              temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks
            if c.choices and c.choices[0].finish_reason] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_echo_puts_the_prompt_before_the_completion(client):
    """echo (OpenAI's legacy /v1/completions): each choice's text starts with the prompt, streamed
    in its first chunk; the prompt's log-probabilities are not computed, so echo with logprobs is
    a 400 naming echo."""
    prompt = "<｜User｜>Calculate 2 + 3.<｜Assistant｜>"
    kw = dict(model="nanoseek", prompt=prompt, max_tokens=12, temperature=0, n=2, seed=3)
    plain = client.completions.create(**kw)
    echoed = client.completions.create(**kw, echo=True)
    assert [c.text for c in echoed.choices] == [prompt + c.text for c in plain.choices]
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens
    firsts, texts = {}, {0: "", 1: ""}
    for c in client.completions.create(**kw, echo=True, stream=True):
        for ch in c.choices:
            firsts.setdefault(ch.index, ch.text)
            texts[ch.index] += ch.text
    assert all(t.startswith(prompt) for t in firsts.values()) and len(firsts) == 2
    assert [texts[i] for i in (0, 1)] == [c.text for c in echoed.choices]
    with pytest.raises(openai.BadRequestError, match="echo with logprobs") as e:
        client.completions.create(**kw, echo=True, logprobs=1)
    assert e.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError, match="echo must be true or false"):
        client.completions.create(**kw, extra_body={"echo": "yes"})


def test_streamed_logprobs_equal_the_unstreamed(client):
    """Every generated token's logprob arrives in the stream too, </think> included (on an empty
    delta)."""
    kw = dict(model="nanoseek", messages=Q, max_tokens=16, temperature=0, logprobs=True,
              top_logprobs=2)
    whole = client.chat.completions.create(**kw)
    streamed = [lp for c in client.chat.completions.create(**kw, stream=True)
                if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    expect = whole.choices[0].logprobs.content
    assert len(expect) == whole.usage.completion_tokens
    def seen(lps):
        return [(lp.token, round(lp.logprob, 4), [t.token for t in lp.top_logprobs]) for lp in lps]

    assert seen(streamed) == seen(expect)


def test_completions_logprobs_in_the_legacy_format(client):
    """/v1/completions' logprobs=N: parallel lists of tokens, their log-probabilities, N
    alternatives each (and the chosen token, always) and text offsets, the same streamed;
    logprobs=true (the chat API's form) is a 400 there."""
    kw = dict(model="nanoseek", prompt="12 + 3 = 15\n\n40 - 1", max_tokens=10, temperature=0,
              logprobs=2)
    whole = client.completions.create(**kw)
    lp = whole.choices[0].logprobs
    n = whole.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n
    assert "".join(lp.tokens) == whole.choices[0].text  # skipped special tokens are ""
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(n)]
    # greedy: each chosen token is the likeliest, so it heads its two alternatives
    assert all(len(top) == 2 and max(top.values()) == pytest.approx(x)
               for top, x in zip(lp.top_logprobs, lp.token_logprobs))
    chunks = [c.choices[0].logprobs for c in client.completions.create(**kw, stream=True)
              if c.choices and c.choices[0].logprobs]
    assert sum((c.tokens for c in chunks), []) == lp.tokens
    assert sum((c.text_offset for c in chunks), []) == lp.text_offset
    assert ([round(x, 4) for c in chunks for x in c.token_logprobs]
            == [round(x, 4) for x in lp.token_logprobs])
    # the chosen token only
    zero = client.completions.create(**{**kw, "logprobs": 0}).choices[0].logprobs
    assert [list(t.values()) for t in zero.top_logprobs] == [[x] for x in zero.token_logprobs]
    with pytest.raises(openai.BadRequestError, match="logprobs must be an integer in"):
        client.completions.create(**{**kw, "logprobs": True})


def test_concurrent_streams_and_disconnects_leave_the_engine_idle(tiny_chat_dir, request):
    """Eight streaming clients at once, two of them hanging up after their first chunks: the others
    finish, the two are cancelled (they asked for 1000 tokens, EOS ignored), and every slot is free
    afterwards."""
    import threading

    proc, server = start(tiny_chat_dir, "--max-batch", "8", "--max-seq-len", "1024")
    request.addfinalizer(proc.terminate)

    body = {"model": "nanoseek", "messages": Q, "temperature": 0.7, "max_tokens": 80,
            "stream": True}
    results = {}

    def run(i):
        long = {"max_tokens": 1000, "ignore_eos": True} if i < 2 else {}
        with httpx.stream("POST", server + "/v1/chat/completions",
                          json={**body, "seed": i, **long}, timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if i < 2 and len(lines) >= 6:
                    return  # hang up mid-stream
            results[i] = lines

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(2, 8))
    assert all([x for x in lines if x][-1] == "data: [DONE]" for lines in results.values())
    assert wait_idle(server) == {"status": "ok", "running": 0, "waiting": 0}
    assert "nanoseek_aborted_requests_total 2.0" in httpx.get(server + "/metrics", timeout=5).text


def test_api_keys_guard_every_v1_route(tiny_chat_dir):
    proc, base = start(tiny_chat_dir, "--api-key", "sekret", "--max-batch", "2")
    try:
        r = httpx.get(base + "/v1/models", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert r.status_code == 401
        ok = openai.OpenAI(base_url=base + "/v1", api_key="sekret")
        assert [m.id for m in ok.models.list().data] == ["nanoseek"]
        assert httpx.get(base + "/health", timeout=10).status_code == 200  # health stays open
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_readme_client_example_runs(server, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "127.0.0.1:8000" in b)
    exec(compile(block.replace("http://127.0.0.1:8000", server), "README.md", "exec"), {})
    assert " -> " in capsys.readouterr().out


# ---- in-process: the app over an engine whose slots a test can fill deterministically


@pytest.fixture
def busy_app(tiny_chat_dir):
    """An app whose single slot is held by a long request, so that what comes next has to wait."""
    from fastapi.testclient import TestClient

    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.serve.app import create_app
    from nanoseek.serve.http import ServerConfig

    def make(**config):
        engine = Engine.from_checkpoint(str(tiny_chat_dir), max_batch=1, max_seq_len=256,
                                        speculative=False)
        engine.add_request("12 + 3 =", SamplingParams(max_tokens=240, ignore_eos=True,
                                                      temperature=0))
        return engine, TestClient(create_app(engine, ServerConfig(**config)))

    return make


def test_a_full_queue_answers_429_with_retry_after(busy_app):
    engine, client = busy_app(max_queue=1)
    r = client.post("/v1/chat/completions", json={"messages": Q})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_a_waiting_stream_gets_keepalives_and_a_slow_request_times_out(busy_app):
    engine, client = busy_app(keepalive_s=0.02, timeout_s=60)
    body = {"messages": Q, "stream": True, "max_tokens": 5, "temperature": 0}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines)
                      if line.startswith("data: {") and "reasoning" in line
                      or line.startswith("data: {") and '"content": "' in line
                      and '"role"' not in line)
    assert any(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    engine2, client2 = busy_app(timeout_s=0.05)
    r = client2.post("/v1/chat/completions", json={"messages": Q})
    assert r.status_code == 504 and "timeout of 0.05 s" in r.json()["error"]["message"]


def test_body_limit_cors_and_metrics(busy_app):
    engine, client = busy_app(max_body_bytes=2000, cors_origins=("http://app.example",))
    r = client.post("/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413 and "limit is 2,000" in r.json()["error"]["message"]
    preflight = {"Access-Control-Request-Method": "POST"}
    pre = client.options("/v1/chat/completions",
                         headers={"Origin": "http://app.example", **preflight})
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    other = client.options("/v1/chat/completions",
                           headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    ok = client.post("/v1/chat/completions",
                     json={"messages": Q, "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200
    text = client.get("/metrics").text
    for name in ("nanoseek_requests_total", "nanoseek_completion_tokens_total",
                 "nanoseek_queue_depth", "nanoseek_time_to_first_token_seconds_bucket",
                 "nanoseek_prompt_cache_hit_ratio"):
        assert name in text, name
    assert 'nanoseek_requests_total{route="/v1/chat/completions",status="413"} 1.0' in text
    assert 'nanoseek_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text


def test_64_concurrent_clients_a_quarter_hanging_up(tiny_chat_dir, request):
    """Every other request completes, the hang-ups are cancelled, no slot leaks, the server stays
    healthy, and concurrent throughput is well above one request at a time."""
    import threading

    proc, server = start(tiny_chat_dir, "--max-batch", "32", "--max-seq-len", "1024",
                         "--max-queue", "64")
    request.addfinalizer(proc.terminate)
    body = {"model": "nanoseek", "messages": Q, "temperature": 0.7, "max_tokens": 40,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

    def one(i, hang_up=False, out=None):
        extra = {"max_tokens": 1000} if hang_up else {}
        with httpx.stream("POST", server + "/v1/chat/completions",
                          json={**body, "seed": i, **extra}, timeout=120) as r:
            assert r.status_code == 200
            lines = []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if hang_up and len(lines) >= 4:
                    return
        if out is not None:
            out[i] = lines

    t0 = time.perf_counter()
    for i in range(4):  # one at a time
        one(100 + i)
    sequential = 4 * 40 / (time.perf_counter() - t0)
    results = {}
    threads = [threading.Thread(target=one, args=(i, i % 4 == 0, results)) for i in range(64)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    concurrent = 48 * 40 / (time.perf_counter() - t0)
    assert sorted(results) == [i for i in range(64) if i % 4]
    for lines in results.values():
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 40
    assert wait_idle(server) == {"status": "ok", "running": 0, "waiting": 0}
    assert "nanoseek_aborted_requests_total 16.0" in httpx.get(server + "/metrics", timeout=5).text
    # with margin even on 2 cores that also run the 64 clients
    assert concurrent > 1.5 * sequential, (concurrent, sequential)


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": Q}),
                                        ("/v1/completions", {"prompt": "7 +"})])
def test_a_client_gone_before_the_first_byte_frees_its_request(tiny_chat_dir, path, body):
    """In process, as an ASGI server drives it: the client hangs up before the response starts, so
    the stream's body is never started, and closing it runs none of its code (its own `finally`
    cannot cancel). The request is still cancelled: it stops long before its 200 tokens."""
    import asyncio

    from nanoseek.infer.engine import Engine
    from nanoseek.serve.app import create_app

    engine = Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="float32", max_batch=4,
                                    max_seq_len=256, speculative=False)
    app = create_app(engine)
    payload = json.dumps({**body, "stream": True, "max_tokens": 200, "ignore_eos": True}).encode()

    async def hang_up() -> None:
        messages = [{"type": "http.request", "body": payload, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            raise OSError("the client is gone")

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
                 "server": ("test", 80), "client": ("test", 1)}
        try:
            await app(scope, receive, send)
        except Exception:  # noqa: BLE001 (the failed send, maybe in an exception group)
            pass
        for _ in range(200):  # the engine thread frees it at its next step
            if not engine.has_unfinished():
                break
            await asyncio.sleep(0.05)

    asyncio.run(hang_up())
    assert not engine.has_unfinished() and engine.stats.generated_tokens < 100


# ---- DeepSeek's API beyond plain chat: logit_bias, cache details, prefix completion, FIM


def test_logit_bias_bans_and_forces_tokens(client, tiny_chat_dir):
    from nanoseek.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_chat_dir)
    seven = tok.encode("7")[0]
    forced = client.completions.create(model="nanoseek", prompt="12 + 3 =", max_tokens=6,
                                       temperature=1.0, logit_bias={str(seven): 100},
                                       extra_body={"ignore_eos": True})
    assert forced.choices[0].text == "7" * 6
    greedy = client.completions.create(model="nanoseek", prompt="12 + 3 =", max_tokens=6,
                                       temperature=0, logprobs=0)
    first = tok.encode(greedy.choices[0].logprobs.tokens[0])[0]
    banned = client.completions.create(model="nanoseek", prompt="12 + 3 =", max_tokens=6,
                                       temperature=0, logprobs=0, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != greedy.choices[0].logprobs.tokens[0]
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.chat.completions.create(model="nanoseek", messages=Q, logit_bias={"x": 1})


def test_cached_tokens_are_reported_under_both_names(client):
    system = {"role": "system", "content": "You add numbers. " * 5}
    kw = dict(model="nanoseek", messages=[system, *Q], max_tokens=2, temperature=0)
    client.chat.completions.create(**kw)
    u = client.chat.completions.create(**kw).usage
    hit = u.model_extra["prompt_cache_hit_tokens"]
    assert 0 < hit < u.prompt_tokens and u.prompt_tokens_details.cached_tokens == hit


def test_chat_prefix_completion_continues_the_answer_or_the_reasoning(server, tiny_chat_dir):
    from nanoseek.serve.api import chat_ids
    from nanoseek.tokenizer import Tokenizer, render_chat

    tok = Tokenizer.load(tiny_chat_dir)

    def post(last):
        r = httpx.post(server + "/v1/chat/completions", timeout=60,
                       json={"messages": [*Q, last], "max_tokens": 30, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()

    answer = post({"role": "assistant", "content": "12 + 7 =", "prefix": True})
    msg = answer["choices"][0]["message"]
    assert msg["reasoning_content"] == "" and msg["content"]  # the answer goes on
    whole = render_chat(Q, thinking=False) + "12 + 7 ="
    assert answer["usage"]["prompt_tokens"] == len(tok.encode(whole))
    thought = post({"role": "assistant", "content": None, "reasoning_content": "12 + 7",
                    "prefix": True})
    msg = thought["choices"][0]["message"]
    assert msg["reasoning_content"]  # the reasoning goes on, then (maybe) the answer
    ids = chat_ids(tok, Q, True, {"reasoning": "12 + 7", "content": ""})
    assert thought["usage"]["prompt_tokens"] == len(ids)
    assert tok.decode(ids) == render_chat(Q) + "12 + 7"
    r = httpx.post(server + "/v1/chat/completions", timeout=30, json={"messages": [
        {"role": "assistant", "content": "x", "prefix": True}, *Q]})
    assert r.status_code == 400 and "only the last message may be a prefix" in r.text


def test_fim_needs_a_tokenizer_with_fim_tokens(client):
    with pytest.raises(openai.BadRequestError, match="suffix: this tokenizer has no fill-in"):
        client.completions.create(model="nanoseek", prompt="def f(", suffix="    return x\n")


def test_json_output_through_the_sdks_parse(client):
    """The openai SDK's parse() with a pydantic response_format: the answer after </think> is held
    to the schema, so even the tiny model's parses; json_object holds it to an object."""
    from pydantic import BaseModel, Field

    class Sum(BaseModel):  # (bounded: unbounded, the tiny model writes digits to its last token)
        answer: int = Field(ge=-999, le=999)
        sure: bool

    ask = [{"role": "user", "content": "Calculate 12 + 7. Answer in JSON."}]
    for thinking in (False, True):
        r = client.chat.completions.parse(model="nanoseek", messages=ask, response_format=Sum,
                                          max_tokens=150, temperature=0,
                                          extra_body={"thinking": thinking})
        assert isinstance(r.choices[0].message.parsed, Sum), r.choices[0].message.content
        assert bool(r.choices[0].message.model_extra["reasoning_content"]) == thinking
    r = client.chat.completions.create(model="nanoseek", messages=ask, max_tokens=20,
                                       response_format={"type": "json_object"}, temperature=0,
                                       extra_body={"thinking": False})
    assert r.choices[0].message.content.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError, match="response_format: the grammar does not"):
        client.chat.completions.create(model="nanoseek", messages=ask, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}})
