"""The commands that run a model: `nanoseek chat`, `generate` (a JSONL file of prompts), `sample`
(rejection sampling) and `eval` (pass@1, cons@k, pass@k, thinking budgets)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoseek.cli.common import (
    BadArgs,
    add_engine_flags,
    add_sampling_flags,
    add_task_flags,
    engine_from,
    positive_int,
    sampling_from,
    task_from,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_chat_parser(sub)
    add_generate_parser(sub)
    add_sample_parser(sub)
    add_eval_parser(sub)


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser(
        "chat", help="talk to a model in the terminal: its reasoning streams dimmed, then its "
                     "answer",
        description="A multi-turn terminal chat. The prompt is rendered with the R1 template, so "
                    "the model starts inside its <think> block; its reasoning is shown dimmed as "
                    "it streams, then the answer. Earlier turns go back without their reasoning. "
                    "Commands: /think on|off, /temp T, /reset, /save FILE, /help, /quit. Ctrl-C "
                    "stops a reply.",
        epilog="example: nanoseek chat runs/tiny/checkpoints/step_000200 --temperature 0.6")
    chat.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                      help="a checkpoint directory (model + tokenizer); default: the model "
                           "nanoseek ships")
    chat.add_argument("--no-think", action="store_true",
                      help="start with thinking off (/think on turns it back on)")
    chat.add_argument("--system", help="a system prompt (R1's advice is none)")
    add_sampling_flags(chat, temperature=0.6, top_p=0.95, max_tokens=None)
    add_engine_flags(chat, max_batch=1)
    chat.set_defaults(handler=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from nanoseek.infer.chat import ChatSession, run_chat

    params = sampling_from(args)
    engine = engine_from(args)
    if getattr(args, "hint", ""):  # the shipped model: say what it can be asked
        print(args.hint, flush=True)
    session = ChatSession(engine, params, thinking=not args.no_think, system=args.system)
    return run_chat(session, sys.stdin, sys.stdout)


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate", help="completions for a JSONL file of prompts, with a progress bar",
        description="Batch generation with continuous batching. Each input line has one of prompt "
                    "(raw text), messages (a chat; \"thinking\": false closes the think block) or "
                    "prompt_token_ids, and may override any sampling setting (max_tokens, "
                    "temperature, n, seed, stop, ...). Output lines, in input order: completions "
                    "(text, reasoning_content, content, finish_reason, token_ids) and usage. A "
                    "killed run resumes from OUTPUT.partial when run again.",
        epilog="example: nanoseek generate ckpt/ --input prompts.jsonl --output out.jsonl -n 4 "
               "--temperature 0.6")
    gen.add_argument("checkpoint", metavar="CHECKPOINT",
                     help="a checkpoint directory (model + tokenizer)")
    gen.add_argument("--input", required=True, help="prompts, one JSON object per line")
    gen.add_argument("--output", required=True, help="where to write the completions (JSONL)")
    gen.add_argument("-n", type=positive_int, default=1, help="samples per prompt (default 1)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_flags(gen, temperature=0.6, top_p=0.95, max_tokens=256)
    add_engine_flags(gen, max_batch=32)
    gen.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from nanoseek.infer.batch import generate_file, read_requests

    requests = read_requests(args.input, sampling_from(args))  # bad input found before the model
    engine = engine_from(args)
    n = generate_file(engine, requests, args.output, args.input, progress=not args.quiet)
    s = engine.stats
    spec = f", MTP acceptance {s.acceptance_rate:.0%}" if s.drafted else ""
    print(f"{n} prompts -> {args.output}: {s.generated_tokens:,} tokens generated, "
          f"{s.prefill_tokens:,} prompt tokens run, {s.cached_tokens:,} from the prefix "
          f"cache{spec}")
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    sample = sub.add_parser(
        "sample", help="rejection sampling: k samples per prompt, keep the correct ones as SFT "
                       "chats",
        description="R1's rejection sampling. For every prompt of a task, sample k completions "
                    "through the engine, score each with the task, and keep those scoring at least "
                    "--min-score that ended on their own (not cut off) — all of them, or only the "
                    "shortest with --shortest. Written as chat JSONL with the reasoning in "
                    "reasoning_content, for `nanoseek sft`. Tasks: gym:NAME (a reasoning-gym "
                    "dataset), FILE.jsonl (GSM8K / MATH / prompt+answer lines) or FILE.py (a "
                    "prompts() generator and a score(completion, reference) -> [0, 1] function).",
        epilog="example: nanoseek sample runs/r1/checkpoints/step_000200 --task "
               "gym:basic_arithmetic --k 8 --out samples.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="the model to sample from (default: the model nanoseek ships)")
    add_task_flags(sample)
    sample.add_argument("--k", type=positive_int, default=8, help="samples per prompt (default 8)")
    sample.add_argument("--min-score", type=float, default=1.0,
                        help="keep samples scoring at least this (default 1)")
    sample.add_argument("--shortest", action="store_true",
                        help="keep only the shortest kept sample per prompt")
    sample.add_argument("--out", required=True, help="output chat JSONL")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_flags(sample, max_batch=64)
    add_sampling_flags(sample, temperature=0.6, top_p=0.95, max_tokens=256)
    sample.set_defaults(handler=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from nanoseek.train.rejection import rejection_sample, write_samples

    task = task_from(args)
    engine = engine_from(args)
    params = sampling_from(args)
    counts = write_samples(rejection_sample(engine, task, args.k, params, args.min_score,
                                            args.shortest, progress=not args.quiet),
                           task.name, args.out)
    print(f"{task.name}: kept {counts['kept']:,} of {counts['samples']:,} samples "
          f"({counts['prompts_solved']:,} of {counts['prompts']:,} prompts solved at least once) "
          f"-> {args.out} (train on it: nanoseek sft CHECKPOINT --chats {args.out})")
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="pass@1 over k samples, cons@k, pass@k, and accuracy against k and the "
                     "thinking budget",
        description="R1's evaluation: k samples per prompt (temperature 0.6, top-p 0.95 by "
                    "default) give pass@1 (their mean score), cons@k (the majority answer; answers "
                    "equal as math vote together) and pass@k (the unbiased estimator), also for "
                    "every power of two below k. --budgets adds test-time scaling by budget "
                    "forcing: the reasoning is cut at B tokens, </think> is appended, and the "
                    "model answers. Writes eval.json, eval.md, samples.jsonl, accuracy_vs_k.png "
                    "and accuracy_vs_budget.png to --out-dir and prints the Markdown.",
        epilog="example: nanoseek eval runs/grpo/checkpoints/step_000050 --task "
               "gym:basic_arithmetic --task-seed 7 --k 8 --budgets 8,16,32,64\n"
               "         nanoseek eval CKPT --task gsm8k_test.jsonl --size 500 --max-tokens 1024",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                    help="the model to evaluate (default: the model nanoseek ships)")
    add_task_flags(ev)
    ev.add_argument("--k", type=positive_int, default=8, help="samples per prompt (default 8)")
    ev.add_argument("--template", choices=("chat", "r1-zero"), default="chat",
                    help="the prompt: R1's chat turn, or R1-Zero's plain-text template (default "
                         "chat)")
    ev.add_argument("--budgets", metavar="B1,B2,...",
                    help="thinking budgets in tokens for the test-time scaling curve")
    ev.add_argument("--budget-samples", type=positive_int, default=1,
                    help="samples per prompt at each budget (default 1)")
    ev.add_argument("--answer-tokens", type=positive_int, default=32,
                    help="tokens the model may answer in after a forced </think> (default 32)")
    ev.add_argument("--out-dir", default="runs/eval",
                    help="where the results go (default runs/eval)")
    ev.add_argument("--title", help="the results' heading (default: checkpoint and task)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_flags(ev, max_batch=64)
    g = ev.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.6, help="(default 0.6, as R1 evaluates)")
    g.add_argument("--top-p", type=float, default=0.95, help="(default 0.95)")
    g.add_argument("--max-tokens", type=positive_int, default=256,
                   help="per completion, reasoning included (default 256)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from nanoseek.eval.evaluate import EvalConfig, evaluate, write_results

    task = task_from(args)
    try:
        budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else []
        cfg = EvalConfig(k=args.k, temperature=args.temperature, top_p=args.top_p,
                         max_tokens=args.max_tokens, template=args.template, budgets=budgets,
                         budget_samples=args.budget_samples, answer_tokens=args.answer_tokens,
                         seed=args.seed)
    except ValueError as e:
        raise BadArgs(f"--budgets: {e}" if "invalid literal" in str(e) else str(e)) from None
    engine = engine_from(args)
    res = evaluate(engine, task, cfg, progress=not args.quiet)
    title = args.title or f"{Path(args.checkpoint or 'default model').name} on {task.name}"
    files = write_results(res, args.out_dir, title)
    print((Path(args.out_dir) / "eval.md").read_text())
    print("written: " + ", ".join(str(f) for f in files))
    return 0
