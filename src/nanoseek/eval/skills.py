"""The shipped model's scorecard on its held-out set: pass@1 by skill, and honesty out of scope.

`evaluate` (R1's numbers: pass@1 over k samples, cons@k, pass@k, budgets) runs on the whole
held-out set; its samples are then grouped by skill (and the bucket of three-digit products), and
the same prompts are asked once more with DeepThink off (one sample each): what a person sees with
the switch off, where a message outside the skills must still get the honest reply.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nanoseek.eval.evaluate import EvalConfig, evaluate, sample_all
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams, item_seed
from nanoseek.tasks.task import Task

# the scorecard's rows, in the order reports show them
GROUPS = ("arithmetic", "3-digit ×", "compare", "sort", "letters", "out_of_scope")


def by_group(task: Task, scores: list[float]) -> dict[str, float]:
    """Mean score by skill, and by bucket ("3-digit ×", which is arithmetic too)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for ex, s in zip(task.examples, scores):
        groups[ex.entry["skill"]].append(s)
        if ex.entry.get("bucket"):
            groups[ex.entry["bucket"]].append(s)
    return {g: sum(v) / len(v) for g, v in sorted(groups.items(), key=lambda kv: _order(kv[0]))}


def _order(group: str) -> int:
    return GROUPS.index(group) if group in GROUPS else len(GROUPS)


def thinking_off(engine: Engine, task: Task, cfg: EvalConfig) -> dict[str, float]:
    """One sample per prompt with DeepThink off (the prompt closes an empty think block), scored
    and grouped as by_group does."""
    prompts = [engine.tok.render_chat([{"role": "user", "content": e.prompt}], thinking=False)
               for e in task.examples]
    params = [SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_tokens, seed=item_seed(cfg.seed + 1, i))
              for i in range(len(prompts))]
    done = sample_all(engine, prompts, params, progress=False)
    return by_group(task, [task.score(c.text, e) for c, e in zip(done, task.examples)])


def scorecard(engine: Engine, task: Task, cfg: EvalConfig) -> dict[str, Any]:
    """evaluate()'s results with "skills" (pass@1 by group, DeepThink on), "thinking_off" (the same
    with it off) and "measure" (the mean of the groups with DeepThink on and of honesty with it
    off: what picks the model nanoseek ships)."""
    res = evaluate(engine, task, cfg)
    res["skills"] = by_group(task, [sum(p["scores"]) / len(p["scores"])
                                    for p in res["per_prompt"]])
    res["thinking_off"] = thinking_off(engine, task, cfg)
    parts = list(res["skills"].values()) + [res["thinking_off"].get("out_of_scope", 0.0)]
    res["measure"] = sum(parts) / len(parts)
    return res
