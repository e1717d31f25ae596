"""Where tasks come from. Four sources, one `load_task(spec)`:

- `skills` — the skills of the model nanoseek ships, in many phrasings, with messages outside
  them that the honest reply answers (chats.py; `config` sets the mix); `skills:held-out` is its
  held-out set (heldout.py), or `size` prompts of it;
- `gym:NAME` — any reasoning-gym dataset (`config` passes its options), scored by the dataset's own
  `score_answer` (gym.py);
- `FILE.jsonl` — benchmark files: GSM8K (`question`, `answer` ending in `#### n`), MATH (`problem`,
  `answer`) or plain (`prompt`, `answer`), checked as math (answers.py);
- `FILE.py` — a user's task: a `prompts()` that yields `{"prompt", "reference"}` dicts (or pairs)
  and a `score(completion, reference) -> float` in [0, 1].
"""

from __future__ import annotations

import importlib.util
import itertools
import traceback
from pathlib import Path

from nanoseek.files import DataError, jsonl_objects
from nanoseek.tasks.answers import gsm8k_reference
from nanoseek.tasks.gym import gym_task
from nanoseek.tasks.task import Example, Task, TaskError, math_scorer


def jsonl_task(path: str | Path, limit: int | None = None) -> Task:
    path = Path(path)
    examples = []
    try:
        for where, row in jsonl_objects(path):
            prompt = row.get("question", row.get("problem", row.get("prompt")))
            answer = row.get("answer")
            if not isinstance(prompt, str) or not prompt.strip():
                raise TaskError(f"{where}: needs a non-empty 'question' (GSM8K), 'problem' (MATH) "
                                "or 'prompt'")
            if answer is None or isinstance(answer, (dict, list, bool)):
                raise TaskError(f"{where}: needs an 'answer' (a string or number)")
            answer = str(answer)
            if "question" in row:  # GSM8K: a worked solution ending in '#### n'
                try:
                    answer = gsm8k_reference(answer)
                except ValueError:
                    raise TaskError(f"{where}: a GSM8K 'answer' must end with "
                                    "'#### <number>'") from None
            examples.append(Example(prompt, answer, row))
            if limit is not None and len(examples) >= limit:
                break
    except DataError as e:  # unreadable, or a line that is not a JSON object
        raise TaskError(str(e)) from None
    if not examples:
        raise TaskError(f"{path}: no examples")
    return Task(path.stem, examples, math_scorer, answers="math")


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
        raise TaskError(f"{tb.filename}:{tb.lineno}: importing the task raised "
                        f"{type(e).__name__}: {e}") from None
    for fn in ("prompts", "score"):
        if not callable(getattr(module, fn, None)):
            raise TaskError(f"{path}: a task file must define {fn}() (see `nanoseek grpo --help`)")
    examples = []
    try:
        items = module.prompts()
        for i, item in enumerate(itertools.islice(items, limit)):
            if (isinstance(item, dict) and isinstance(item.get("prompt"), str)
                    and "reference" in item):
                examples.append(Example(item["prompt"], str(item["reference"]), item))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
                examples.append(Example(item[0], str(item[1]), item))
            else:
                raise TaskError(f"{path}: prompts() item {i} must be {{'prompt': str, "
                                f"'reference': ...}} or a (prompt, reference) pair, "
                                f"got {item!r:.80}")
    except TaskError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TaskError(f"{path}: prompts() raised {type(e).__name__}: {e}") from None
    if not examples:
        raise TaskError(f"{path}: prompts() gave no examples")
    return Task(path.stem, examples, lambda c, ex: module.score(c, ex.reference))


def load_task(spec: str, size: int = 1000, seed: int = 0, config: dict | None = None) -> Task:
    """`skills` (the shipped model's skills, chats.py), `gym:NAME`, a `.jsonl` benchmark file or a
    `.py` task file."""
    if spec in ("skills", "skills:held-out"):
        from nanoseek.tasks.chats import heldout_task, skills_task

        if spec == "skills":
            return skills_task(size, seed, config)
        task = heldout_task()  # all of it: a fixed set
        return task if size >= len(task.examples) else task.split(size, seed)[1]
    if spec.startswith("gym:"):
        return gym_task(spec[4:], size, seed, config)
    if config:
        raise TaskError(f"{spec}: a config applies to skills and to reasoning-gym tasks "
                        "(gym:NAME) only")
    if spec.endswith(".jsonl"):
        return jsonl_task(spec, size)
    if spec.endswith(".py"):
        return user_task(spec, size)
    raise TaskError(f"unknown task {spec!r}: use skills, skills:held-out, gym:NAME (a "
                    "reasoning-gym dataset), FILE.jsonl or FILE.py")
