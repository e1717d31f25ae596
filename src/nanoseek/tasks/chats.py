"""The shipped model's data and task: the skills asked in many phrasings, with the general set.

- `skill_documents` — chats whose assistant turn holds the worked reasoning and the answer, mixed
  with messages outside the skills answered by the self-description (persona.py). With
  `thinking_off` a share of them is DeepThink off: no reasoning, the working (for a skill) written
  in the answer itself. Pretraining documents keep thinking on (an empty think block learned there
  would make the base skip its reasoning);
- `skills_task` — the same mix as a verifiable Task (GRPO, rejection sampling): each skill scored
  by its checker, a message outside them by `persona.honest`.

No instance or message of the held-out set (heldout.py) is ever generated here.

Config keys (the pipeline's `task_config`): `skills` (weights by skill), `out_of_scope` (share of
messages outside the skills), `thinking_off` (share with DeepThink off, documents only) and `size`
(how the model describes its size, in words).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from nanoseek.files import DataError
from nanoseek.tasks import persona
from nanoseek.tasks.heldout import held_out_keys, load, normal
from nanoseek.tasks.phrasing import phrase
from nanoseek.tasks.skills import SKILLS, check, key, random_instance, solve
from nanoseek.tasks.task import Example, Task, TaskError
from nanoseek.tokenizer import EOS, render_chat, render_completion

# skills weighed by what their documents teach, not by count: a comparison's reply is short (31
# tokens against arithmetic's 133), so at 0.15 of the documents compare was 4 % of the reply tokens
# and 0.19-0.53 on held-out across seeds; at 0.25 it was 0.73-0.94 in six runs (BENCHMARKS.md)
DEFAULT_MIX: dict[str, Any] = {
    "skills": {"arithmetic": 0.45, "compare": 0.25, "sort": 0.15, "letters": 0.15},
    "out_of_scope": 0.1, "thinking_off": 0.0, "size": "about a million parameters"}
OUT_OF_SCOPE = "out_of_scope"


def _mix(config: dict[str, Any] | None, error: type[Exception]) -> dict[str, Any]:
    mix = {**DEFAULT_MIX, **(config or {})}
    unknown = set(mix) - set(DEFAULT_MIX)
    if unknown:
        raise error(f"skills config: unknown keys {sorted(unknown)}; the keys are "
                    f"{', '.join(DEFAULT_MIX)}")
    bad = set(mix["skills"]) - set(SKILLS)
    if bad or not mix["skills"] or any(w < 0 for w in mix["skills"].values()):
        raise error(f"skills config: 'skills' must weigh some of {', '.join(SKILLS)} with "
                    f"non-negative weights, got {mix['skills']}")
    for share in ("out_of_scope", "thinking_off"):
        if not 0 <= mix[share] <= 1:
            raise error(f"skills config: {share!r} must be in [0, 1], got {mix[share]}")
    return mix


def _draws(n: int, seed: int, mix: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(skill or OUT_OF_SCOPE, instance or kind, prompt), none of them held out."""
    rng = random.Random(seed)
    held = held_out_keys()
    names, weights = zip(*mix["skills"].items())
    made = 0
    while made < n:
        if rng.random() < mix["out_of_scope"]:
            kind, prompt = persona.out_of_scope(rng)
            if normal(prompt) in held:
                continue
            yield OUT_OF_SCOPE, kind, prompt
        else:
            skill = rng.choices(names, weights)[0]
            inst = random_instance(skill, rng)
            if key(skill, inst) in held or f"word {inst.get('word')}" in held:
                continue
            yield skill, inst, phrase(skill, inst, rng)
        made += 1


def skill_documents(n: int, seed: int = 0,
                    config: dict[str, Any] | None = None) -> Iterator[dict]:
    """`n` chat documents: {"messages": [user, assistant with reasoning_content], "text": the
    rendered conversation, "answer", "task"} (as gym.gym_documents writes them)."""
    mix = _mix(config, DataError)
    off = random.Random(seed + 1)
    for skill, inst, prompt in _draws(n, seed, mix):
        if skill == OUT_OF_SCOPE:
            reasoning, answer = persona.reply(inst, mix["size"])
        else:
            reasoning, answer = solve(skill, inst)
        content = answer
        if off.random() < mix["thinking_off"]:
            # DeepThink off: a skill's working moves into the answer, so that it stays right
            content = answer if skill == OUT_OF_SCOPE else f"{reasoning}\n\n{answer}"
            reasoning = ""
        user = {"role": "user", "content": prompt}
        assistant = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        text = (render_chat([user]) + render_completion(reasoning, content) if reasoning
                else render_chat([user], thinking=False) + content + EOS)
        yield {"messages": [user, assistant], "text": text, "answer": answer, "task": skill}


def score(completion: str, example: Example) -> float:
    """A skill's checker, or for a message outside the skills whether the reply is the honest
    one."""
    entry = example.entry
    if entry["skill"] == OUT_OF_SCOPE:
        return float(persona.honest(completion))
    return check(entry["skill"], entry["instance"], completion)


def skills_task(size: int, seed: int = 0, config: dict[str, Any] | None = None) -> Task:
    mix = _mix(config, TaskError)
    examples = []
    for skill, inst, prompt in _draws(size, seed, mix):
        if skill == OUT_OF_SCOPE:
            entry = {"skill": skill, "kind": inst}
            reference = persona.reply(inst, mix["size"])[1]
        else:
            entry = {"skill": skill, "instance": inst}
            reference = solve(skill, inst)[1]
        examples.append(Example(prompt, reference, entry))
    return Task("skills", examples, score)


def heldout_task() -> Task:
    """The held-out set (heldout.py) as a Task; each example's entry is its row (skill, bucket)."""
    return Task("skills:held-out", [Example(r["prompt"], r["reference"], r) for r in load()],
                score)
