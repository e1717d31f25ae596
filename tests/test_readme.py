"""The README's code is run, so that it cannot drift from the package."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    # the API client's block: test_serve.py runs it
    blocks = [b for b in blocks if "127.0.0.1:8000" not in b]
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    sums = (f"{a} + {b} = {a + b}" for a in range(60) for b in range(60))
    (tmp_path / "corpus.txt").write_text("\n".join(sums))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_main_command_runs():
    """`nanoseek chat` as written: the shipped, trained model answers with its reasoning shown
    (dimmed)."""
    cmd = re.search(r"pip install -e \. && (nanoseek [^\n]+)", README.read_text()).group(1).split()
    assert cmd == ["nanoseek", "chat"]
    out = subprocess.run([sys.executable, "-m", "nanoseek", *cmd[1:]],
                         input="Calculate 7 + 8 - 3.\n/quit\n", capture_output=True, text=True,
                         check=True, timeout=120)
    assert "UNTRAINED" not in out.stderr  # the bundled model, not the fallback
    # not a terminal: the reasoning comes labelled (test_chat.py checks it dimmed on a
    # pseudo-terminal)
    reasoning = out.stdout.split("thinking:", 1)[1]
    assert re.search(r"\d+ [+-] \d+ = \d+", reasoning)  # it works the sum out, step by step


def test_readme_info_command_runs():
    cmd = re.search(r"`(nanoseek info deepseek-v3)`", README.read_text()).group(1).split()
    out = subprocess.run([sys.executable, "-m", "nanoseek", *cmd[1:]], capture_output=True,
                         text=True, check=True)
    assert "70,272" in out.stdout and "671.0B" in out.stdout


def test_readme_shell_journey_runs(tmp_path):
    """The pretraining commands as written (a few steps fewer), torchrun line included."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(nanoseek data gym.*?)```", text, flags=re.S)
    blocks += re.findall(r"```bash\n(torchrun --standalone.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANOSEEK_CACHE": str(tmp_path / "cache")}
    bindir = Path(sys.executable).parent
    for line in "".join(blocks).strip().splitlines():
        argv = line.replace("--max-steps 150", "--max-steps 30").split()
        if argv[0] == "nanoseek" and argv[1] == "train":
            argv.append("--no-progress")
        argv[0] = str(bindir / argv[0])
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, (line, r.stderr[-2000:])
    runs = tmp_path / "runs"
    assert (runs / "tiny" / "checkpoints" / "step_000030" / "model.safetensors").exists()
    assert (runs / "ddp" / "checkpoints" / "step_000020" / "model.safetensors").exists()
    # SFT of that checkpoint on the same chats
    sft = re.findall(r"```bash\n(nanoseek sft .*?)```", text, flags=re.S)
    assert len(sft) == 1
    argv = (sft[0].replace("step_000150", "step_000030")
            .replace("--max-steps 100", "--max-steps 10").split())
    r = subprocess.run([str(bindir / "nanoseek"), *argv[1:], "--no-progress"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (runs / "sft" / "checkpoints" / "step_000010" / "model.safetensors").exists()
    # GRPO from the SFT checkpoint, as written (a few short steps)
    grpo = re.findall(r"```bash\n(nanoseek grpo .*?)```", text, flags=re.S)
    assert len(grpo) == 1
    argv = (grpo[0].replace("step_000100", "step_000010").replace("--steps 50", "--steps 2").split()
            + ["--prompts-per-step", "4", "--group-size", "4", "--max-tokens", "16",
               "--task-size", "40", "--held-out", "8", "--no-progress"])
    r = subprocess.run([str(bindir / "nanoseek"), *argv[1:]], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (runs / "grpo" / "checkpoints" / "step_000002" / "model.safetensors").exists()
    # then generation from that checkpoint, through a shell as written (echo, redirection)
    gen = re.findall(r"```bash\n(echo .*?)```", text, flags=re.S)
    assert len(gen) == 1 and "nanoseek generate" in gen[0]
    script = (gen[0].replace("step_000150", "step_000030")
              .replace("nanoseek ", f"{bindir}/nanoseek "))
    r = subprocess.run(["bash", "-euc", script.strip() + " --quiet"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = (tmp_path / "runs" / "out.jsonl").read_text().splitlines()
    assert len(out) == 1 and len(json.loads(out[0])["completions"]) == 4


def test_readme_example_prompts_get_the_answers_it_gives():
    """The README's table of things to ask the shipped model, asked as written at temperature 0
    with DeepThink on and off: each number or list as the table gives it, and for "Who are you?"
    the honest self-description (no number)."""
    from nanoseek.infer.bundled import BUNDLED
    from nanoseek.infer.chat import split_stray_reasoning
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tasks.persona import honest
    from nanoseek.tasks.skills import final_line
    from nanoseek.tokenizer import THINK_END, render_chat

    table = README.read_text().split("| ask it | it answers |")[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \|$", table, re.M)
    assert len(rows) >= 6
    engine = Engine.from_checkpoint(str(BUNDLED), device="cpu", max_batch=16, max_seq_len=1024)
    greedy = SamplingParams(temperature=0, max_tokens=600)
    for thinking in (True, False):
        prompts = [render_chat([{"role": "user", "content": ask}], thinking=thinking)
                   for ask, _ in rows]
        for (ask, answer), done in zip(rows, engine.generate(prompts, greedy)):
            # what chat shows: with DeepThink off, working the model closes with a </think> of its
            # own is shown as reasoning (infer/chat.py), never in the answer
            stray, content = split_stray_reasoning(done.content)
            assert THINK_END not in content and (thinking or not done.reasoning_content)
            if answer[0].isdigit() or answer[0] == "-":
                assert final_line(content) == answer, (ask, thinking, done.text)
                if thinking:
                    assert done.reasoning_content.strip(), ask
            else:
                assert honest(content), (ask, thinking, done.text)
