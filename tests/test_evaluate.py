"""nanoseek eval: its numbers on hand-made samples, and a real run on the tiny chat model."""

import json

import pytest

from nanoseek.eval.evaluate import EvalConfig, budget_forced, evaluate, score_samples, write_results
from nanoseek.infer.engine import Engine
from nanoseek.infer.sequence import Completion, Usage
from nanoseek.tasks.task import Example, Task, math_scorer


def completion(text: str, tokens: int = 5, finish: str = "stop") -> Completion:
    return Completion("r", 0, [0], list(range(tokens)), text, "", text, finish, Usage(1, tokens))


def test_numbers_by_hand():
    """Two prompts, k = 4. Prompt 1 (answer 12): answers 12, 12.0, 7, none -> 2 correct; majority
    of 4 is 12 (12 and 12.0 vote together). Prompt 2 (answer 5): 3, 3, 5, 4 -> 1 correct; majority
    of 4 is 3 (wrong), of 2 is 3 (wrong), of 1 is 3 (wrong)."""
    task = Task("t", [Example("a", "12"), Example("b", "5")], math_scorer, answers="math")
    texts = ["x\n</think>\n\n12", "y\n</think>\n\n12.0", "z\n</think>\n\n7",
             "w\n</think>\n\nno idea",
             "\n</think>\n\n3", "\n</think>\n\n3", "\n</think>\n\n5", "\n</think>\n\n4"]
    res = score_samples(task, task.examples, [completion(t) for t in texts], k=4)
    assert res["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert res["cons"] == pytest.approx({1: 0.5, 2: 0.5, 4: 0.5})
    # pass@2: prompt 1: 1 - C(2,2)/C(4,2) = 5/6; prompt 2: 1 - C(3,2)/C(4,2) = 1/2
    assert res["pass"][2] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert res["pass"][4] == 1.0 and res["pass"][1] == pytest.approx(res["pass@1"])
    assert res["per_prompt"][0]["answers"] == ["12", "12.0", "7", None]


def test_bad_config():
    with pytest.raises(ValueError, match="budgets must be positive"):
        EvalConfig(budgets=[0, 8])
    with pytest.raises(ValueError, match="k must be >= 1"):
        EvalConfig(k=0)


@pytest.fixture(scope="module")
def engine(tiny_chat_dir):
    return Engine.from_checkpoint(str(tiny_chat_dir), max_batch=32, max_seq_len=128,
                                  speculative=False)


def sums_task(tmp_path) -> Task:
    from nanoseek.tasks.load import jsonl_task

    path = tmp_path / "sums.jsonl"
    rows = [{"prompt": f"Calculate {a} + {b}.", "answer": a + b}
            for a, b in [(3, 4), (12, 7), (20, 5), (8, 8)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl_task(path)


def test_evaluate_writes_every_result(engine, tmp_path):
    task = sums_task(tmp_path)
    res = evaluate(engine, task, EvalConfig(k=4, max_tokens=40, budgets=[2, 16]))
    assert res["prompts"] == 4 and list(res["cons"]) == [1, 2, 4]
    assert 0 <= res["pass@1"] <= res["pass"][4] <= 1
    # each prompt's numbers follow from its own samples
    for p in res["per_prompt"]:
        assert len(p["completions"]) == 4 and p["correct"] == sum(s == 1.0 for s in p["scores"])
    b2, b16 = res["budgets"]
    assert b2["budget"] == 2 and b2["mean_thinking_tokens"] <= 2 and b2["cut"] == 1.0
    # the tiny model's sums think in < 16 tokens
    assert b16["mean_thinking_tokens"] <= 16 and b16["cut"] < 1.0
    files = write_results(res, tmp_path / "out", "tiny on sums")
    names = {f.name for f in files}
    assert {"eval.json", "eval.md", "samples.jsonl", "accuracy_vs_k.png",
            "accuracy_vs_budget.png"} <= names
    summary = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert summary["pass@1"] == res["pass@1"] and "per_prompt" not in summary
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| pass@1 (mean over 4 samples) |" in md and "| cons@4 |" in md and "| 16 |" in md
    assert "| well-formed samples" in md and 0 <= res["well_formed"] <= 1
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 4


def test_a_converted_models_own_chat_format(chatml_student_dir, tmp_path):
    """A student in a foreign chat format (conftest: ChatML, R1's think tags as text it writes
    itself) is prompted in its own template and its R1-format samples count as well-formed; the
    same samples read as R1's own format (the prompt opening the block) would not be."""
    from nanoseek.tasks.rewards import split

    engine = Engine.from_checkpoint(str(chatml_student_dir), max_batch=32, max_seq_len=128,
                                    speculative=False)
    task = sums_task(tmp_path)
    res = evaluate(engine, task, EvalConfig(k=4, max_tokens=24, budgets=[8]))
    texts = [c for p in res["per_prompt"] for c in p["completions"]]
    assert res["well_formed"] >= 0.75 and res["well_formed"] == sum(
        split(t, "chat", opened=False) is not None for t in texts) / len(texts)
    assert not any(split(t, "chat") for t in texts)
    assert sum(t.startswith("<think>\n") for t in texts) >= 12
    # budget forcing cuts the reasoning the model opened itself, and it still answers
    assert res["budgets"][0]["mean_thinking_tokens"] <= 8


def test_budget_forcing_closes_the_reasoning(engine, tmp_path):
    """At a budget of 3 tokens every reasoning is cut and closed; the answer is generated after the
    closing tag, so the score reads a real answer, not the cut reasoning."""
    task = sums_task(tmp_path)
    r = budget_forced(engine, task, task.examples, EvalConfig(budget_samples=2, answer_tokens=8),
                      budget=3)
    assert r["cut"] == 1.0 and r["mean_thinking_tokens"] == 3
    assert 0 <= r["accuracy"] <= 1


def test_cli(tiny_chat_dir, tmp_path, capsys):
    from nanoseek.cli import main

    sums_task(tmp_path)
    out = tmp_path / "ev"
    sums = str(tmp_path / "sums.jsonl")
    assert main(["eval", str(tiny_chat_dir), "--task", sums, "--k", "2", "--max-tokens", "24",
                 "--max-seq-len", "96", "--budgets", "4,8", "--out-dir", str(out), "--quiet",
                 "--no-speculative"]) == 0
    text = capsys.readouterr().out
    assert "| pass@1 (mean over 2 samples) |" in text and (out / "accuracy_vs_budget.png").exists()
    assert main(["eval", str(tiny_chat_dir), "--task", str(tmp_path / "none.jsonl"),
                 "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["eval", str(tiny_chat_dir), "--task", sums, "--budgets", "4,x"]) == 2
    assert "--budgets" in capsys.readouterr().err
