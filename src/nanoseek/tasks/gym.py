"""reasoning-gym: its datasets as verifiable tasks, and as chat documents with worked reasoning.

- `gym_task` — a dataset's entries as a Task, scored by the dataset's own `score_answer` on the
  completion's final text;
- `gym_documents` — the entries as chat documents whose assistant turn holds a worked <think>
  trace where one can be derived from the entry's metadata (`derive_trace`): the synthetic
  reasoning corpus of the toy R1 pipeline (pretraining, SFT cold start).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterator
from typing import Any

from nanoseek.errors import UserError
from nanoseek.files import DataError
from nanoseek.tasks.task import Example, Task, TaskError, final_text
from nanoseek.tokenizer import render_chat, render_completion


def create_dataset(name: str, size: int, seed: int, config: dict[str, Any] | None,
                   error: type[UserError]):
    """reasoning-gym's dataset `name`; `error` (with the dataset's name and config) when
    reasoning-gym is missing or refuses the name or an option."""
    try:
        import reasoning_gym
    except ImportError:
        raise error("reasoning-gym is not installed: pip install reasoning-gym") from None
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **(config or {}))
    except Exception as e:  # noqa: BLE001 (unknown name or option: reasoning-gym says which)
        raise error(f"reasoning-gym dataset {name!r} (config {config or {}}): {e}") from None


def gym_task(name: str, size: int, seed: int = 0, config: dict | None = None) -> Task:
    dataset = create_dataset(name, size, seed, config, TaskError)
    examples = [Example(e["question"], str(e["answer"]), e) for e in dataset]

    def score(completion: str, example: Example) -> float:
        return float(dataset.score_answer(answer=final_text(completion), entry=example.entry))

    return Task(f"gym:{name}", examples, score)


# ---------------------------------------------------------------------------------------------
# worked reasoning traces


_BINOPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub),
           ast.Mult: ("*", operator.mul), ast.Div: ("/", operator.truediv)}


def _arith_steps(expression: str) -> list[str] | None:
    """Evaluate an arithmetic expression one operation at a time, innermost first: the scratchpad a
    student writes. Multiplications of multi-digit numbers get their partial products."""
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval").body
    except SyntaxError:
        return None
    steps: list[str] = []

    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:.6g}"

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = ev(node.operand)
            if not isinstance(node.operand, ast.Constant):  # negating a result is a step of its own
                steps.append(f"-({fmt(v)}) = {fmt(-v)}")
            return -v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            sym, fn = _BINOPS[type(node.op)]
            if sym == "/" and b == 0:
                raise ZeroDivisionError
            r = fn(a, b)
            if sym == "*" and abs(b) >= 10 and float(a).is_integer() and float(b).is_integer():
                digits = str(abs(int(b)))
                parts = [int(digit) * 10 ** (len(digits) - 1 - i)
                         for i, digit in enumerate(digits) if digit != "0"]
                sign = -1 if b < 0 else 1
                steps.append(" + ".join(f"{fmt(a)} * {fmt(sign * p)}" for p in parts)
                             + " = " + " + ".join(fmt(a * sign * p) for p in parts)
                             + f" = {fmt(r)}")
            else:
                steps.append(f"{fmt(a)} {sym} {fmt(b)} = {fmt(r)}")
            return r
        raise ValueError(node)

    try:
        ev(tree)
    except (ValueError, ZeroDivisionError):
        return None
    return steps


def derive_trace(entry: dict[str, Any]) -> str | None:
    """A worked reasoning trace for a reasoning-gym entry, where its metadata makes one
    derivable."""
    meta = entry.get("metadata", {})
    if "expression" in meta:
        steps = _arith_steps(meta["expression"])
        if steps:
            if "target" in meta:  # countdown: show that the expression reaches the target
                steps.append(f"That makes {meta['target']}, using each number at most once.")
            return "\n".join(steps)
    if "numbers" in meta and "result" in meta and meta.get("source_dataset") == "gcd":
        a, b = meta["numbers"][:2]
        lines = []
        while b:
            lines.append(f"{a} = {a // b} * {b} + {a % b}")
            a, b = b, a % b
        return "\n".join(lines + [f"The last non-zero remainder is {a}."])
    if "sorted_numbers" in meta:
        return f"In {meta['direction']} order: {', '.join(meta['sorted_numbers'])}."
    return None


def gym_documents(name: str, size: int, seed: int = 0,
                  config: dict[str, Any] | None = None) -> Iterator[dict]:
    """`size` entries of a reasoning-gym dataset as chat documents: {"messages": [user, assistant
    with reasoning_content], "text": the rendered conversation (a pretraining document), "answer",
    "task"}. A corpus, not a task: a bad name or option is a DataError."""
    for entry in create_dataset(name, size, seed, config, DataError):
        trace = derive_trace(entry)
        user = {"role": "user", "content": entry["question"]}
        assistant = {"role": "assistant", "content": str(entry["answer"]),
                     "reasoning_content": trace or ""}
        text = render_chat([user]) + render_completion(trace, assistant["content"])
        yield {"messages": [user, assistant], "text": text, "answer": str(entry["answer"]),
               "task": name}
