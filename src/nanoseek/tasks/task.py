"""Verifiable tasks: prompts with references, and a scorer of completions.

Three sources, one `load_task(spec)`:
- `gym:NAME` — any reasoning-gym dataset (`config` passes its options), scored by the dataset's own
  `score_answer`;
- `FILE.jsonl` — benchmark files: GSM8K (`question`, `answer` ending in `#### n`), MATH (`problem`,
  `answer`) or plain (`prompt`, `answer`), checked as math (answers.py);
- `FILE.py` — a user's task: a `prompts()` that yields `{"prompt", "reference"}` dicts (or pairs) and a
  `score(completion, reference) -> float` in [0, 1].
Every scorer sees the whole completion; only its accuracy is the task's business (rewards.py adds format).
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.errors import UserError
from nanoseek.tasks.answers import after_reasoning, boxed, extract_answer, gsm8k_reference, is_correct


class TaskError(UserError):
    """A task that cannot be loaded or scored; the message names the file and line or the field."""


@dataclass
class Example:
    prompt: str  # the question, as the user asks it
    reference: str  # the reference answer
    entry: Any = field(default=None, repr=False)  # what the task's scorer needs besides (reasoning-gym's entry)


@dataclass
class Task:
    name: str
    examples: list[Example]
    scorer: Callable[[str, Example], float] = field(repr=False)

    def score(self, completion: str, example: Example) -> float:
        """The accuracy of a completion in [0, 1]; a scorer that returns anything else is an error."""
        try:
            s = self.scorer(completion, example)
        except Exception as e:  # noqa: BLE001 (the user's code: say whose and where)
            tb = traceback.extract_tb(e.__traceback__)[-1]
            raise TaskError(f"task {self.name}: {tb.filename}:{tb.lineno}: score() raised {type(e).__name__}: "
                            f"{e}") from None
        if isinstance(s, bool):
            s = float(s)
        if not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise TaskError(f"task {self.name}: score() must return a number in [0, 1], got {s!r}")
        return float(s)

    def split(self, held_out: int, seed: int = 0) -> tuple[Task, Task]:
        """(train, held-out) tasks: `held_out` examples set aside, chosen by seed."""
        if not 0 < held_out < len(self.examples):
            raise TaskError(f"task {self.name}: held_out must be in [1, {len(self.examples) - 1}], got {held_out}")
        order = list(range(len(self.examples)))
        random.Random(seed).shuffle(order)
        test = set(order[:held_out])
        return (Task(self.name, [e for i, e in enumerate(self.examples) if i not in test], self.scorer),
                Task(self.name, [self.examples[i] for i in sorted(test)], self.scorer))


def final_text(completion: str) -> str:
    """The answer as text, for scorers that compare text (lists, words): the last `<answer>` or box,
    else everything after the reasoning."""
    tail = after_reasoning(completion)
    if "<answer>" in tail and "</answer>" in tail:
        tail = tail.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return (boxed(tail) or [tail])[-1].strip()


def math_scorer(completion: str, example: Example) -> float:
    return float(is_correct(extract_answer(completion), example.reference))


# ---------------------------------------------------------------------------------------------


def gym_task(name: str, size: int, seed: int = 0, config: dict | None = None) -> Task:
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("reasoning-gym is not installed: pip install reasoning-gym") from None
    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **(config or {}))
    except Exception as e:  # noqa: BLE001 (unknown name or option: reasoning-gym says which)
        raise TaskError(f"reasoning-gym dataset {name!r} (config {config or {}}): {e}") from None
    examples = [Example(e["question"], str(e["answer"]), e) for e in ds]
    return Task(f"gym:{name}", examples, lambda c, ex: float(ds.score_answer(answer=final_text(c), entry=ex.entry)))


def jsonl_task(path: str | Path, limit: int | None = None) -> Task:
    from nanoseek.files import DataError, jsonl_objects

    path = Path(path)
    examples = []
    try:
        for where, row in jsonl_objects(path):
            prompt = row.get("question", row.get("problem", row.get("prompt")))
            answer = row.get("answer")
            if not isinstance(prompt, str) or not prompt.strip():
                raise TaskError(f"{where}: needs a non-empty 'question' (GSM8K), 'problem' (MATH) or 'prompt'")
            if answer is None or isinstance(answer, (dict, list, bool)):
                raise TaskError(f"{where}: needs an 'answer' (a string or number)")
            answer = str(answer)
            if "question" in row:  # GSM8K: a worked solution ending in '#### n'
                try:
                    answer = gsm8k_reference(answer)
                except ValueError:
                    raise TaskError(f"{where}: a GSM8K 'answer' must end with '#### <number>'") from None
            examples.append(Example(prompt, answer, row))
            if limit is not None and len(examples) >= limit:
                break
    except DataError as e:  # unreadable, or a line that is not a JSON object
        raise TaskError(str(e)) from None
    if not examples:
        raise TaskError(f"{path}: no examples")
    return Task(path.stem, examples, math_scorer)


def user_task(path: str | Path, limit: int | None = None) -> Task:
    """A task from a Python file with `prompts()` and `score(completion, reference)`."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file")
    spec = importlib.util.spec_from_file_location(f"nanoseek_user_task_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise TaskError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 (the user's module failed to import: say where)
        tb = traceback.extract_tb(e.__traceback__)[-1]
        raise TaskError(f"{tb.filename}:{tb.lineno}: importing the task raised {type(e).__name__}: {e}") from None
    for fn in ("prompts", "score"):
        if not callable(getattr(module, fn, None)):
            raise TaskError(f"{path}: a task file must define {fn}() (see `nanoseek grpo --help`)")
    examples = []
    try:
        items = module.prompts()
        for i, item in enumerate(itertools.islice(items, limit)):
            if isinstance(item, dict) and isinstance(item.get("prompt"), str) and "reference" in item:
                examples.append(Example(item["prompt"], str(item["reference"]), item))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
                examples.append(Example(item[0], str(item[1]), item))
            else:
                raise TaskError(f"{path}: prompts() item {i} must be {{'prompt': str, 'reference': ...}} or a "
                                f"(prompt, reference) pair, got {item!r:.80}")
    except TaskError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TaskError(f"{path}: prompts() raised {type(e).__name__}: {e}") from None
    if not examples:
        raise TaskError(f"{path}: prompts() gave no examples")
    return Task(path.stem, examples, lambda c, ex: module.score(c, ex.reference))


def load_task(spec: str, size: int = 1000, seed: int = 0, config: dict | None = None) -> Task:
    """`gym:NAME`, a `.jsonl` benchmark file or a `.py` task file."""
    if spec.startswith("gym:"):
        return gym_task(spec[4:], size, seed, config)
    if config:
        raise TaskError(f"{spec}: a config applies to reasoning-gym tasks (gym:NAME) only")
    if spec.endswith(".jsonl"):
        return jsonl_task(spec, size)
    if spec.endswith(".py"):
        return user_task(spec, size)
    raise TaskError(f"unknown task {spec!r}: use gym:NAME (a reasoning-gym dataset), FILE.jsonl or FILE.py")
