"""Rejection sampling keeps exactly the correct, finished samples, and writes them as SFT chats."""

import json

from nanoseek.cli import main
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tasks.task import load_task
from nanoseek.train.rejection import rejection_sample, write_samples

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}


def test_keeps_exactly_the_correct_samples(tiny_chat_dir, tmp_path):
    task = load_task("gym:basic_arithmetic", size=12, seed=5, config=ARITH)
    engine = Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="float32", max_batch=16, max_seq_len=128)
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=0)
    samples = list(rejection_sample(engine, task, 4, params, batch_prompts=5))
    assert len(samples) == 48 and [s.example for s in samples[::4]] == task.examples
    for s in samples:  # kept <=> the task scores it 1 and it ended on its own
        assert s.score == task.score(s.text, s.example)
        assert s.kept == (s.score == 1.0 and s.finish_reason == "stop")
    kept = sum(s.kept for s in samples)
    assert 0 < kept < 48  # a model that solves some: both sides are exercised
    counts = write_samples(iter(samples), task.name, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts["kept"] == len(rows) == kept and counts["prompts"] == 12
    for row in rows:
        user, assistant = row["messages"]
        ex = next(e for e in task.examples if e.prompt == user["content"])
        text = f"{assistant['reasoning_content']}\n</think>\n\n{assistant['content']}"
        assert task.score(text, ex) == 1.0 and row["reference"] == ex.reference

    shortest = list(rejection_sample(engine, task, 4, params, shortest=True, batch_prompts=5))
    for i in range(12):
        group = shortest[i * 4: (i + 1) * 4]
        good = [s for s in group if s.score == 1.0 and s.finish_reason == "stop"]
        assert sum(s.kept for s in group) == (1 if good else 0)
        assert not good or next(s for s in group if s.kept).tokens == min(s.tokens for s in good)


def test_sample_command(tiny_chat_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(tiny_chat_dir), "--task", "gym:basic_arithmetic", "--task-config", json.dumps(ARITH),
                 "--size", "6", "--k", "3", "--out", str(out), "--quiet", "--max-seq-len", "128", "--max-tokens", "40",
                 "--seed", "0"]) == 0
    said = capsys.readouterr().out
    assert "of 18 samples" in said and f"-> {out}" in said
    assert all("reasoning_content" in json.loads(line)["messages"][1] for line in out.read_text().splitlines())
    assert main(["sample", str(tiny_chat_dir), "--task", "nope", "--out", str(out)]) == 2
    assert "use gym:NAME" in capsys.readouterr().err
    assert main(["sample", str(tiny_chat_dir), "--task", "gym:basic_arithmetic", "--size", "1", "--out", str(out),
                 "--quiet", "--max-seq-len", "128"]) == 2  # the default 256 tokens do not fit
    assert "max_seq_len 128" in capsys.readouterr().err
