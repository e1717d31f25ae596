"""Rejection sampling keeps exactly the correct, finished samples, and writes them as SFT chats."""

import json

from nanoseek.cli import main
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tasks.load import load_task
from nanoseek.tasks.rewards import format_reward
from nanoseek.train.rejection import rejection_sample, write_samples

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}


def test_keeps_exactly_the_correct_samples(tiny_chat_dir, tmp_path):
    task = load_task("gym:basic_arithmetic", size=20, seed=5, config=ARITH)
    engine = Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="float32", max_batch=16,
                                    max_seq_len=128)
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=0)
    samples = list(rejection_sample(engine, task, 8, params, batch_prompts=5))
    assert len(samples) == 160 and [s.example for s in samples[::8]] == task.examples
    for s in samples:  # kept <=> the task scores it 1, it ended on its own, and it is well formed
        assert s.score == task.score(s.text, s.example)
        # the format reward, tested on a table in test_rewards
        assert s.formatted == (format_reward(s.text) == 1.0)
        assert s.kept == (s.score == 1.0 and s.finish_reason == "stop" and s.formatted)
    kept = sum(s.kept for s in samples)
    assert 0 < kept < 160  # a model that solves some: both sides are exercised
    counts = write_samples(iter(samples), task.name, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts["kept"] == len(rows) == kept and counts["prompts"] == 20
    for row in rows:
        user, assistant = row["messages"]
        ex = next(e for e in task.examples if e.prompt == user["content"])
        text = f"{assistant['reasoning_content']}\n</think>\n\n{assistant['content']}"
        assert task.score(text, ex) == 1.0 and row["reference"] == ex.reference

    shortest = list(rejection_sample(engine, task, 8, params, shortest=True, batch_prompts=5))
    # the same samples (seeded), one kept per solved prompt
    assert sum(s.kept for s in shortest) <= kept
    for i in range(20):
        group = shortest[i * 8: (i + 1) * 8]
        good = [s for s in group if s.score == 1.0 and s.finish_reason == "stop" and s.formatted]
        assert sum(s.kept for s in group) == (1 if good else 0)
        assert not good or next(s for s in group if s.kept).tokens == min(s.tokens for s in good)


def test_sample_command(tiny_chat_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(tiny_chat_dir), "--task", "gym:basic_arithmetic",
                 "--task-config", json.dumps(ARITH), "--size", "6", "--k", "3", "--out", str(out),
                 "--quiet", "--max-seq-len", "128", "--max-tokens", "40", "--seed", "0"]) == 0
    said = capsys.readouterr().out
    assert "of 18 samples" in said and f"-> {out}" in said
    assert all("reasoning_content" in json.loads(line)["messages"][1]
               for line in out.read_text().splitlines())
    assert main(["sample", str(tiny_chat_dir), "--task", "nope", "--out", str(out)]) == 2
    assert "gym:NAME" in capsys.readouterr().err
    # the default 256 tokens do not fit
    assert main(["sample", str(tiny_chat_dir), "--task", "gym:basic_arithmetic", "--size", "1",
                 "--out", str(out), "--quiet", "--max-seq-len", "128"]) == 2
    assert "max_seq_len 128" in capsys.readouterr().err
