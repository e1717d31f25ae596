"""`nanoseek eval`: R1's numbers for a checkpoint on a task, and its test-time scaling curves.

k samples per prompt (R1: temperature 0.6, top-p 0.95) give pass@1 (the mean score), cons@k (the
majority answer, answers that the task calls equal voting together) and pass@k (unbiased), each
also for every power of two below k: accuracy against k; and the share of well-formed samples (one
closed think block, then an answer: rewards.split). Prompts are in the model's own chat format.
Budget forcing (s1) gives accuracy against the thinking budget: the reasoning is cut at B tokens,
`</think>` is appended, and the model answers from there. Results go to eval.json, eval.md,
samples.jsonl and PNG plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.eval.metrics import majority, pass_at_k
from nanoseek.files import atomic_write
from nanoseek.infer.engine import Completion, Engine, leaves_reasoning_open
from nanoseek.infer.sampling import SamplingParams, item_seed
from nanoseek.tasks.answers import THINK_END
from nanoseek.tasks.rewards import render_prompt, split
from nanoseek.tasks.task import Example, Task


@dataclass
class EvalConfig:
    k: int = 8  # samples per prompt
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 256  # per completion, reasoning included
    template: str = "chat"
    # thinking budgets (tokens) for the scaling curve
    budgets: list[int] = field(default_factory=list)
    budget_samples: int = 1  # samples per prompt at each budget
    answer_tokens: int = 32  # tokens the model may answer in after a forced </think>
    seed: int = 0

    def __post_init__(self):
        for name, ok, rule in (("k", self.k >= 1, ">= 1"),
                               ("max_tokens", self.max_tokens >= 1, ">= 1"),
                               ("budget_samples", self.budget_samples >= 1, ">= 1"),
                               ("answer_tokens", self.answer_tokens >= 1, ">= 1"),
                               ("budgets", all(b >= 1 for b in self.budgets),
                                "positive token counts")):
            if not ok:
                raise ValueError(f"eval: {name} must be {rule}, got {getattr(self, name)!r}")


def correct(score: float) -> bool:
    return score >= 1.0 - 1e-9  # a task's full marks; partial credit counts toward pass@1 only


def _powers(k: int) -> list[int]:
    return sorted({1 << i for i in range(k.bit_length()) if 1 << i <= k} | {k})


def score_samples(task: Task, examples: list[Example], done: list[Completion],
                  k: int) -> dict[str, Any]:
    """pass@1, cons@j and pass@j for j = 1, 2, 4 .. k from k completions per example (contiguous).
    cons@j votes on the answers as the task extracts and compares them (Task.answer, Task.same)."""
    ks = _powers(k)
    per_prompt, lengths = [], []
    cons = {j: 0.0 for j in ks}
    passk = {j: 0.0 for j in ks}
    for i, ex in enumerate(examples):
        group = done[i * k: (i + 1) * k]
        scores = [task.score(c.text, ex) for c in group]
        answers = [task.answer(c.text) for c in group]
        n_correct = sum(correct(s) for s in scores)
        for j in ks:
            passk[j] += pass_at_k(k, n_correct, j)
            voted = majority(answers[:j], task.same)
            # the majority answer is right when the first sample that gave it scores full marks
            cons[j] += 0.0 if voted is None else float(correct(scores[answers.index(voted)]))
        per_prompt.append({"prompt": ex.prompt, "reference": ex.reference, "scores": scores,
                           "answers": answers, "correct": n_correct,
                           "completions": [c.text for c in group]})
        lengths += [len(c.token_ids) for c in group]
    n = len(examples)
    return {"prompts": n, "k": k, "pass@1": sum(sum(p["scores"]) / k for p in per_prompt) / n,
            "cons": {j: v / n for j, v in cons.items()},
            "pass": {j: v / n for j, v in passk.items()},
            "mean_tokens": sum(lengths) / len(lengths),
            "truncated": sum(c.finish_reason == "length" for c in done) / len(done),
            "per_prompt": per_prompt}


def budget_forced(engine: Engine, task: Task, examples: list[Example], cfg: EvalConfig,
                  budget: int) -> dict[str, Any]:
    """Accuracy when the reasoning may use at most `budget` tokens: what is unfinished by then is
    closed with </think>, and the model answers after it (s1's budget forcing)."""
    n = cfg.budget_samples
    prompts = [render_prompt(e.prompt, cfg.template, engine.tok) for e in examples]
    params = [SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=budget,
                             stop=[THINK_END], seed=item_seed(cfg.seed, i))
              for i in range(len(examples))]
    thoughts = engine.generate(prompts, params)
    # every sample continues from its (possibly cut) reasoning, closed by the tag the chat template
    # expects
    closed = [t.text.rstrip() + f"\n{THINK_END}\n\n" for t in thoughts]
    cont = [prompts[i // n] + c for i, c in enumerate(closed)]
    answers = engine.generate(cont, SamplingParams(temperature=0, max_tokens=cfg.answer_tokens))
    scores = [task.score(c + a.text, examples[i // n])
              for i, (c, a) in enumerate(zip(closed, answers))]
    used = [len(t.token_ids) for t in thoughts]
    return {"budget": budget, "accuracy": sum(scores) / len(scores),
            "mean_thinking_tokens": sum(used) / len(used),
            "cut": sum(t.finish_reason == "length" for t in thoughts) / len(thoughts)}


def sample_all(engine: Engine, prompts: list[str], params: list[SamplingParams], progress: bool,
               batch_prompts: int = 64) -> list[Completion]:
    """Every completion of every prompt, in order; prompts go to the engine in batches (a progress
    bar)."""
    from tqdm.auto import tqdm

    done: list[Completion] = []
    with tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not progress) as bar:
        for i in range(0, len(prompts), batch_prompts):
            done += engine.generate(prompts[i: i + batch_prompts], params[i: i + batch_prompts])
            bar.update(len(prompts[i: i + batch_prompts]))
    return done


def evaluate(engine: Engine, task: Task, cfg: EvalConfig, progress: bool = False) -> dict[str, Any]:
    """Every number of the module docstring, with the samples and the time taken."""
    t0 = time.perf_counter()
    examples = task.examples
    params = [SamplingParams(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_tokens, seed=item_seed(cfg.seed, i))
              for i in range(len(examples))]
    prompts = [render_prompt(e.prompt, cfg.template, engine.tok) for e in examples]
    done = sample_all(engine, prompts, params, progress)
    res = score_samples(task, examples, done, cfg.k)
    res["well_formed"] = sum(
        split(c.text, cfg.template, leaves_reasoning_open(c.prompt_token_ids, engine.tok))
        is not None for c in done) / len(done)
    res["budgets"] = [budget_forced(engine, task, examples, cfg, b) for b in sorted(cfg.budgets)]
    res.update(task=task.name, config=asdict(cfg), seconds=time.perf_counter() - t0)
    return res


def write_results(res: dict[str, Any], out_dir: str | Path, title: str) -> list[Path]:
    """eval.json (everything but the samples), samples.jsonl, eval.md and the plots; returns the
    files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in res.items() if k != "per_prompt"}
    atomic_write(out / "eval.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(out / "samples.jsonl",
                 "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in res["per_prompt"]))
    atomic_write(out / "eval.md", markdown(res, title))
    return [out / "eval.json", out / "samples.jsonl", out / "eval.md", *plot(res, out, title)]


def markdown(res: dict[str, Any], title: str) -> str:
    c = res["config"]
    lines = [f"## {title}", "",
             f"Task `{res['task']}`, {res['prompts']} prompts, k = {res['k']} samples each at "
             f"temperature {c['temperature']}, top-p {c['top_p']}, at most {c['max_tokens']} "
             f"tokens ({res['mean_tokens']:.1f} on average, {res['truncated']:.0%} cut off); "
             f"{res['seconds']:.0f} s.", "",
             "| metric | value |", "|---|---:|",
             f"| pass@1 (mean over {res['k']} samples) | {res['pass@1']:.3f} |"]
    if "well_formed" in res:
        lines.append(f"| well-formed samples (think block closed, then an answer) | "
                     f"{res['well_formed']:.3f} |")
    lines += [f"| cons@{j} | {v:.3f} |" for j, v in res["cons"].items() if j > 1]
    lines += [f"| pass@{j} | {v:.3f} |" for j, v in res["pass"].items() if j > 1]
    if res["budgets"]:
        lines += ["",
                  "Thinking budget (reasoning cut at B tokens, then `</think>` and the answer):",
                  "", "| budget B | accuracy | thinking tokens used | cut at B |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {b['budget']} | {b['accuracy']:.3f} | {b['mean_thinking_tokens']:.1f} "
                  f"| {b['cut']:.0%} |" for b in res["budgets"]]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], out: Path, title: str) -> list[Path]:
    """accuracy_vs_k.png, and accuracy_vs_budget.png when budgets were run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = list(res["cons"])
    ax.plot(ks, list(res["pass"].values()), "o-", label="pass@k")
    ax.plot(ks, list(res["cons"].values()), "s-", label="cons@k (majority vote)")
    ax.axhline(res["pass@1"], ls=":", c="grey", label="pass@1")
    ax.set(xscale="log", xlabel="samples k", ylabel="accuracy",
           title=f"{title}: accuracy against k")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    fig.tight_layout()
    files.append(out / "accuracy_vs_k.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    if res["budgets"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([b["budget"] for b in res["budgets"]], [b["accuracy"] for b in res["budgets"]],
                "o-")
        ax.set(xscale="log", xlabel="thinking budget (tokens)", ylabel="accuracy",
               title=f"{title}: accuracy against thinking budget")
        fig.tight_layout()
        files.append(out / "accuracy_vs_budget.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files
