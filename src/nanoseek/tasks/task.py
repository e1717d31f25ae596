"""A verifiable task: prompts with reference answers, a scorer of completions, and how its answers
compare.

Every scorer sees the whole completion; only its accuracy is the task's business (rewards.py adds
format). Where tasks come from (reasoning-gym, benchmark JSONL files, a user's Python file) is
load.py's and gym.py's business.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nanoseek.errors import UserError
from nanoseek.tasks.answers import after_reasoning, boxed, extract_answer, is_correct

ANSWERS = ("text", "math")


class TaskError(UserError):
    """A task that cannot be loaded or scored; the message names the file and line or the field."""


@dataclass
class Example:
    prompt: str  # the question, as the user asks it
    reference: str  # the reference answer
    # what the task's scorer needs besides (reasoning-gym's entry)
    entry: Any = field(default=None, repr=False)


@dataclass
class Task:
    name: str
    examples: list[Example]
    scorer: Callable[[str, Example], float] = field(repr=False)
    # how two answers compare (cons@k's vote): "math" extracts the number or box and compares as
    # math (12 = 12.0); "text" takes the final text and compares it stripped
    answers: str = "text"

    def __post_init__(self):
        if self.answers not in ANSWERS:
            raise TaskError(f"task {self.name}: answers must be one of {', '.join(ANSWERS)}, "
                            f"got {self.answers!r}")

    def score(self, completion: str, example: Example) -> float:
        """The accuracy of a completion in [0, 1]; a scorer that returns anything else is an
        error."""
        try:
            s = self.scorer(completion, example)
        except Exception as e:  # noqa: BLE001 (the user's code: say whose and where)
            tb = traceback.extract_tb(e.__traceback__)[-1]
            raise TaskError(f"task {self.name}: {tb.filename}:{tb.lineno}: score() raised "
                            f"{type(e).__name__}: {e}") from None
        if isinstance(s, bool):
            s = float(s)
        if not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise TaskError(f"task {self.name}: score() must return a number in [0, 1], got {s!r}")
        return float(s)

    def answer(self, completion: str) -> str | None:
        """The completion's final answer as this task compares it, or None when it gives none."""
        if self.answers == "math":
            return extract_answer(completion)
        return final_text(completion) or None

    def same(self, a: str, b: str) -> bool:
        """Whether two answers agree: equal as math for a math task, as stripped text otherwise."""
        return is_correct(a, b) if self.answers == "math" else a.strip() == b.strip()

    def split(self, held_out: int, seed: int = 0) -> tuple[Task, Task]:
        """(train, held-out) tasks: `held_out` examples set aside, chosen by seed."""
        if not 0 < held_out < len(self.examples):
            raise TaskError(f"task {self.name}: held_out must be in [1, {len(self.examples) - 1}], "
                            f"got {held_out}")
        order = list(range(len(self.examples)))
        random.Random(seed).shuffle(order)
        test = set(order[:held_out])
        return (replace(self, examples=[e for i, e in enumerate(self.examples) if i not in test]),
                replace(self, examples=[self.examples[i] for i in sorted(test)]))


def final_text(completion: str) -> str:
    """The answer as text, for scorers that compare text (lists, words): the last `<answer>` or box,
    else everything after the reasoning."""
    tail = after_reasoning(completion)
    if "<answer>" in tail and "</answer>" in tail:
        tail = tail.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return (boxed(tail) or [tail])[-1].strip()


def math_scorer(completion: str, example: Example) -> float:
    return float(is_correct(extract_answer(completion), example.reference))
