"""Final answers: find one in a completion, and check it against a reference.

Extraction looks only at what follows the reasoning (after the last `</think>`), in R1's order of
explicitness: the last `<answer>…</answer>`, else the last `\\boxed{…}`, else the last number.
Checking is math-verify's (LaTeX and plain expressions parsed to SymPy and compared as math:
0.5 = \\frac{1}{2}, 3\\sqrt{2} = \\sqrt{18}); what it cannot parse is compared as normalised text.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
# longer "answers" are not checked symbolically: SymPy could take very long on them
MAX_ANSWER_CHARS = 300
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def after_reasoning(completion: str) -> str:
    """The part of a completion after its reasoning (all of it when there is no `</think>`)."""
    return completion.rsplit(THINK_END, 1)[-1]


def boxed(text: str) -> list[str]:
    """The contents of every `\\boxed{…}` (or `\\fbox{…}`), with nested braces balanced."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1].strip())
    return out


def extract_answer(completion: str) -> str | None:
    """The completion's final answer, or None when it gives none."""
    tail = after_reasoning(completion)
    tagged = _ANSWER.findall(tail)
    if tagged:
        inner = tagged[-1].strip()
        return (boxed(inner) or [inner])[-1] or None
    box = boxed(tail)
    if box:
        return box[-1] or None
    numbers = _NUMBER.findall(tail)
    return numbers[-1].replace(",", "") if numbers else None


def gsm8k_reference(answer: str) -> str:
    """GSM8K's reference: the number after `####` (its worked solution comes before)."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer ends with '#### <number>'")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _normal(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _math(s: str):
    import logging

    from math_verify import parse

    # it warns at every call that timeouts are off
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # no timeouts: math-verify implements them with signals, which work only in the main thread
    # (the server and GRPO score in others); MAX_ANSWER_CHARS bounds the work instead
    # an extracted answer is bare math: as LaTeX first (parsed plainly, 3\sqrt{2} would read as 3)
    return parse(f"${s}$", parsing_timeout=None) or parse(s, parsing_timeout=None)


def is_correct(answer: str | None, reference: str) -> bool:
    """Whether an extracted answer equals the reference, as math when both parse, else as text."""
    if answer is None or not answer.strip():
        return False
    if _normal(answer) == _normal(reference):
        return True
    if len(answer) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        return False
    from math_verify import verify

    gold, pred = _math(reference), _math(answer)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
