"""The skills' scorecard (eval/skills.py): pass@1 grouped by skill and bucket, DeepThink off, and
the measure that picks the shipped model."""

import pytest

from nanoseek.eval.evaluate import EvalConfig
from nanoseek.eval.skills import GROUPS, by_group, scorecard
from nanoseek.infer.engine import Engine
from nanoseek.tasks.load import load_task
from nanoseek.tasks.task import Example, Task


def test_scores_are_grouped_by_skill_and_the_bucket_counts_as_arithmetic_too():
    rows = [{"skill": "arithmetic"}, {"skill": "arithmetic", "bucket": "3-digit ×"},
            {"skill": "sort"}, {"skill": "out_of_scope"}, {"skill": "arithmetic"}]
    task = Task("t", [Example(str(i), "0", r) for i, r in enumerate(rows)], lambda c, e: 0.0)
    got = by_group(task, [1.0, 0.0, 0.5, 1.0, 1.0])
    assert got == {"arithmetic": pytest.approx(2 / 3), "3-digit ×": 0.0, "sort": 0.5,
                   "out_of_scope": 1.0}
    assert list(got) == [g for g in GROUPS if g in got]  # the report's order


def test_the_scorecard_of_a_model_on_part_of_the_held_out_set(tiny_chat_dir):
    task = load_task("skills:held-out", size=40, seed=0)
    engine = Engine.from_checkpoint(str(tiny_chat_dir), max_batch=32, max_seq_len=256)
    res = scorecard(engine, task, EvalConfig(k=2, max_tokens=24))
    groups = {e.entry["skill"] for e in task.examples}
    assert set(res["skills"]) >= groups and set(res["thinking_off"]) >= groups
    parts = list(res["skills"].values()) + [res["thinking_off"].get("out_of_scope", 0.0)]
    assert res["measure"] == pytest.approx(sum(parts) / len(parts))
    assert all(0 <= v <= 1 for v in parts)
    # the overall pass@1 is the skills' scores weighted by their prompts
    n = {g: sum(e.entry["skill"] == g for e in task.examples) for g in groups}
    assert res["pass@1"] == pytest.approx(sum(res["skills"][g] * n[g] for g in groups) / 40)
