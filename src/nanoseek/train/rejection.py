"""Rejection sampling (R1 §2.3.3): k samples per prompt, keep the correct ones as SFT data.

Every sample is scored by the task (tasks/task.py); those scoring at least `min_score` that ended on
their own and are well formed (one closed think block, then a non-empty answer: R1 filtered its
samples for readability too) are kept — all of them, or only the shortest per prompt — and written
as chats whose assistant turn carries the reasoning in `reasoning_content`, ready for `nanoseek sft`
(or `nanoseek distill` into a smaller student).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from nanoseek.files import atomic_write
from nanoseek.infer.engine import Engine, leaves_reasoning_open
from nanoseek.infer.sampling import SamplingParams, item_seed
from nanoseek.tasks.rewards import split
from nanoseek.tasks.task import Example, Task


@dataclass
class Sample:
    example: Example
    reasoning: str
    content: str
    text: str
    tokens: int
    finish_reason: str
    score: float
    formatted: bool = True  # reasoning closed by </think>, then an answer
    kept: bool = False

    def chat(self, task: str) -> dict:
        return {"messages": [{"role": "user", "content": self.example.prompt},
                             {"role": "assistant", "content": self.content,
                              "reasoning_content": self.reasoning}],
                "task": task, "reference": self.example.reference, "score": self.score}


def rejection_sample(engine: Engine, task: Task, k: int, params: SamplingParams,
                     min_score: float = 1.0, shortest: bool = False, batch_prompts: int = 64,
                     progress: bool = False) -> Iterator[Sample]:
    """Every sample of every prompt, scored, with `kept` set; prompts go to the engine in
    batches."""
    from tqdm.auto import tqdm

    def seeded(i: int) -> SamplingParams:  # a seed gives each prompt its own stream, reproducibly
        seed = None if params.seed is None else item_seed(params.seed, i)
        return SamplingParams(**{**params.__dict__, "n": k, "seed": seed})

    bar = tqdm(total=len(task.examples), desc="sampling", unit="prompt", disable=not progress)
    for start in range(0, len(task.examples), batch_prompts):
        chunk = task.examples[start: start + batch_prompts]
        # in the model's own chat format (R1's, or a converted model's template)
        chats = [engine.tok.encode_chat([{"role": "user", "content": e.prompt}]) for e in chunk]
        done = engine.generate(chats, [seeded(start + i) for i in range(len(chunk))])
        for i, ex in enumerate(chunk):
            group = [Sample(ex, c.reasoning_content, c.content, c.text, len(c.token_ids),
                            c.finish_reason, task.score(c.text, ex),
                            split(c.text, "chat", leaves_reasoning_open(c.prompt_token_ids,
                                                                        engine.tok)) is not None)
                     for c in done[i * k: (i + 1) * k]]
            good = [s for s in group
                    if s.score >= min_score and s.finish_reason == "stop" and s.formatted]
            for s in (min(good, key=lambda s: s.tokens),) if shortest and good else good:
                s.kept = True
            yield from group
            bar.update(1)
    bar.close()


def write_samples(samples: Iterator[Sample], task: str, path: str) -> dict:
    """Write the kept samples as SFT chats (atomically); returns counts."""
    kept, total, prompts, solved, last = [], 0, 0, 0, None
    for s in samples:
        total += 1
        if s.example is not last:
            prompts, last, counted = prompts + 1, s.example, False
        if s.kept:
            kept.append(json.dumps(s.chat(task), ensure_ascii=False))
            if not counted:
                solved, counted = solved + 1, True
    atomic_write(path, "".join(line + "\n" for line in kept))
    return {"prompts": prompts, "samples": total, "kept": len(kept), "prompts_solved": solved}
