"""R1's rule-based rewards, each part kept apart so that training can log it.

- accuracy: the task's score of the final answer (1/0 for checked answers, reasoning-gym's own
  scores);
- format: the reasoning inside exactly one think block, then a non-empty answer. Small, and hard to
  game: an empty think block, a second one, or an answer inside the reasoning earn nothing;
- language (R1): the share of the reasoning's letters written in the prompt's script, so a chain of
  thought that drifts into another language earns less;
- overlong (DAPO's soft punishment): 0 up to max_tokens - overlong_buffer tokens, falling linearly
  to -1 at max_tokens, -1 beyond.

Two templates, which `render_prompt` renders: `chat` (R1's: the prompt ends with `<think>\\n`, so
the completion holds the reasoning, then `</think>`, then the answer) and `r1-zero` (the completion
writes `<think>…</think> <answer>…</answer>`). A converted model's chat (a SmolLM2) is its own
template's turn, and unless that template opens the think block the model writes R1's `<think>`
itself, as text: then a well-formed completion is `<think>` reasoning `</think>` answer (`opened`
False below).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

from nanoseek.tasks.answers import THINK_END
from nanoseek.tokenizer import BOS, THINK_START, Tokenizer, render_chat

TEMPLATES = ("chat", "r1-zero")
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:")
_R1_ZERO = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.S)


def render_prompt(question: str, template: str, tok: Tokenizer | None = None) -> str:
    """The rollout prompt: R1's chat turn (ending in `<think>\\n`), or R1-Zero's plain text
    template; with `tok`, in its model's format (a converted model's own chat template, its BOS
    before R1-Zero's text)."""
    if template == "r1-zero":
        return (BOS if tok is None else tok.prompt_start) + R1_ZERO_TEMPLATE.format(prompt=question)
    return (render_chat if tok is None else tok.render_chat)([{"role": "user",
                                                              "content": question}])


@dataclass
class RewardConfig:
    template: str = "chat"
    accuracy: float = 1.0  # weights of the parts in the total
    format: float = 0.1
    language: float = 0.0  # R1's language-consistency term; 0 = off
    overlong: float = 0.0  # weight of the overlong penalty; 0 = off
    max_tokens: int = 0  # the length limit the penalty counts to (the rollouts' max_tokens)
    overlong_buffer: int = 0  # tokens before max_tokens where the penalty ramps from 0 to -1

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"RewardConfig.template must be one of {', '.join(TEMPLATES)}, "
                             f"got {self.template!r}")
        if self.overlong and not 0 <= self.overlong_buffer <= self.max_tokens:
            raise ValueError("RewardConfig: the overlong penalty needs 0 <= overlong_buffer <= "
                             f"max_tokens, got {self.overlong_buffer} and {self.max_tokens}")


@dataclass
class Reward:
    accuracy: float
    format: float
    language: float
    overlong: float
    total: float

    def to_dict(self) -> dict:
        return asdict(self)


def split(completion: str, template: str, opened: bool = True) -> tuple[str, str] | None:
    """(reasoning, answer) of a well-formed completion, or None. `opened`: the chat prompt opened
    the think block (R1's); else the completion must open it, first thing."""
    if template == "r1-zero":
        m = _R1_ZERO.fullmatch(completion)
        parts = (m.group(1), m.group(2)) if m else None
    else:  # chat
        if not opened:
            head = completion.lstrip()
            if not head.startswith(THINK_START):
                return None
            completion = head[len(THINK_START):]
        if completion.count(THINK_END) != 1 or "<think>" in completion:
            return None
        parts = tuple(completion.split(THINK_END))
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if parts is None or any(t in p for p in parts for t in tags):
        return None
    reasoning, answer = (p.strip() for p in parts)
    return (reasoning, answer) if reasoning and answer else None


def format_reward(completion: str, template: str = "chat", opened: bool = True) -> float:
    return 1.0 if split(completion, template, opened) is not None else 0.0


def _script(ch: str) -> str:
    """The script of a letter, by its Unicode name: LATIN, CYRILLIC, CJK, HIRAGANA, ARABIC ..."""
    return unicodedata.name(ch, "UNKNOWN").split()[0]


def language_consistency(reasoning: str, prompt: str) -> float:
    """Share of the reasoning's letters in the prompt's main script (1 when either has no
    letters)."""
    letters = [c for c in prompt if c.isalpha()]
    if not letters:
        return 1.0
    scripts = [_script(c) for c in letters]
    target = max(set(scripts), key=scripts.count)
    used = [_script(c) for c in reasoning if c.isalpha()]
    return sum(s == target for s in used) / len(used) if used else 1.0


def overlong_penalty(n_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0, then a linear ramp to -1 over the last `buffer` tokens,
    -1 past."""
    if n_tokens > max_tokens:
        return -1.0
    free = max_tokens - buffer
    return 0.0 if n_tokens <= free else (free - n_tokens) / buffer


def reward(completion: str, accuracy: float, cfg: RewardConfig, prompt: str = "",
           n_tokens: int = 0, opened: bool = True) -> Reward:
    """The parts and their weighted total; `accuracy` is the task's score of the completion's
    answer; `opened` as split's."""
    parts = split(completion, cfg.template, opened)
    fmt = 1.0 if parts is not None else 0.0
    reasoning = parts[0] if parts else completion.rsplit(THINK_END, 1)[0]
    lang = language_consistency(reasoning, prompt) if cfg.language else 0.0
    over = overlong_penalty(n_tokens, cfg.max_tokens, cfg.overlong_buffer) if cfg.overlong else 0.0
    total = cfg.accuracy * accuracy + cfg.format * fmt + cfg.language * lang + cfg.overlong * over
    return Reward(accuracy, fmt, lang, over, total)

