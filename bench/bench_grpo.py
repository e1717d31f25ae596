"""GRPO throughput: nanoseek's `train_grpo` against TRL's `GRPOTrainer` on the same model and
settings.

The model is a deepseek_v3 checkpoint (default: the one nanoseek ships), which TRL loads through
transformers. Both run the same GRPO step: --prompts prompts x --group completions sampled at
temperature 1.0 with at most --max-tokens tokens, rewarded by the same task scorer (reasoning-gym
basic_arithmetic, accuracy + 0.1 format), one policy update (mu = 1, beta = 0, lr 5e-5), on the CPU,
in fp32. Reported: the median seconds per step after --warmup steps and completions per second, and
the ratio.

nanoseek runs twice a round: as it trains by default, leaving the completions of flat groups (all
rewards equal, so advantage 0 and, with beta 0, gradient exactly 0) out of the update, and with
train_zero_advantage, putting every completion through it as TRL does. Both ratios are printed, with
the share of completion tokens that went through the default update.

    pip install -e ".[bench]"          # trl, datasets, accelerate
    python bench/bench_grpo.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nanoseek.hardware import cpu_model
from nanoseek.infer.bundled import default_checkpoint
from nanoseek.tasks.gym import gym_task
from nanoseek.tasks.rewards import RewardConfig, reward
from nanoseek.tokenizer import render_chat
from nanoseek.train.grpo import GRPOConfig, train_grpo

TASK_CONFIG = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 1,
               "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False}


def run_nanoseek(ckpt: str, args, out: Path,
                 full: bool = False) -> tuple[list[float], list[float]]:
    """Seconds per timed step, and the share of completion tokens each step's update ran."""
    cfg = GRPOConfig(model=ckpt, task="gym:basic_arithmetic", task_config=TASK_CONFIG,
                     task_size=2000, held_out=10, out_dir=str(out), steps=args.warmup + args.steps,
                     prompts_per_step=args.prompts, group_size=args.group,
                     max_tokens=args.max_tokens, lr=5e-5,
                     micro_batch_size=args.prompts * args.group, eval_every=0, save_every=0,
                     progress=False, train_zero_advantage=full)
    train_grpo(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = rows[args.warmup:]
    return [r["rollout_s"] + r["train_s"] for r in rows], [r["trained_fraction"] for r in rows]


def run_trl(ckpt: str, args, out: Path) -> list[float]:
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    task = gym_task("basic_arithmetic", 2000, seed=0, config=TASK_CONFIG)
    by_prompt = {render_chat([{"role": "user", "content": e.prompt}]): e for e in task.examples}
    rcfg = RewardConfig()

    def reward_fn(prompts, completions, **kw):
        return [reward(c, task.score(c, by_prompt[p]), rcfg).total
                for p, c in zip(prompts, completions)]

    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    n = args.prompts * args.group
    cfg = TRLConfig(output_dir=str(out), per_device_train_batch_size=n, num_generations=args.group,
                    max_completion_length=args.max_tokens, temperature=1.0, learning_rate=5e-5,
                    beta=0.0, max_steps=args.warmup + args.steps, logging_steps=1, report_to=[],
                    save_strategy="no", use_cpu=True, bf16=False, num_iterations=1,
                    gradient_accumulation_steps=1, seed=0)
    stamps: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    ds = Dataset.from_list([{"prompt": p} for p in by_prompt])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    # TRL generates a step's completions inside the step (one generation batch per optimizer step)
    return [stamps[i + 1] - stamps[i] for i in range(0, len(stamps), 2)][args.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint",
                    help="a deepseek_v3 checkpoint directory (default: nanoseek's shipped model)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate the two this many times, so that a slow spell of the machine "
                         "hits both")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or str(default_checkpoint()[0])
    n = args.prompts * args.group
    nano, full, trl, ran, ratios, ratios_full = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            times, trained = run_nanoseek(ckpt, args, Path(tmp) / f"nano{r}")
            nano.append(times)
            ran += trained
            full.append(run_nanoseek(ckpt, args, Path(tmp) / f"full{r}", full=True)[0])
            trl.append(run_trl(ckpt, args, Path(tmp) / f"trl{r}"))
            ratios.append(statistics.median(trl[-1]) / statistics.median(nano[-1]))
            ratios_full.append(statistics.median(trl[-1]) / statistics.median(full[-1]))
    a, f, b = (statistics.median(sum(x, [])) for x in (nano, full, trl))
    import trl as trl_pkg

    print(f"\n## GRPO throughput: nanoseek vs TRL GRPOTrainer ({ckpt})\n")
    print(f"Machine: `{cpu_model()}`, {args.threads} torch threads, torch {torch.__version__}, "
          f"trl {trl_pkg.__version__}. {args.prompts} prompts x {args.group} completions = {n} per "
          f"step, at most {args.max_tokens} tokens, temperature 1.0, mu 1, beta 0; median of "
          f"{args.steps} steps after {args.warmup} warm-up, in each of {args.rounds} alternating "
          "rounds.\n")
    print("| | seconds per step | completions per second | nanoseek / TRL |\n|---|---:|---:|---:|")
    print(f"| nanoseek (flat groups left out of the update) | {a:.2f} | {n / a:.1f} | "
          f"**{b / a:.2f}x** |")
    print(f"| nanoseek, every completion through the update | {f:.2f} | {n / f:.1f} | "
          f"**{b / f:.2f}x** |")
    print(f"| TRL GRPOTrainer | {b:.2f} | {n / b:.1f} | |")
    print(f"\nThe default update ran {100 * statistics.mean(ran):.0f}% of the completion tokens "
          f"(the rest were in groups with equal rewards). Per round: "
          f"{', '.join(f'{x:.2f}x' for x in ratios)} (default), "
          f"{', '.join(f'{x:.2f}x' for x in ratios_full)} (every completion).")
    for r in range(args.rounds):
        print(f"- round {r + 1} seconds per step: nanoseek {[round(x, 2) for x in nano[r]]}, every "
              f"completion {[round(x, 2) for x in full[r]]}, TRL {[round(x, 2) for x in trl[r]]}")


if __name__ == "__main__":
    main()
