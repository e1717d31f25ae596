"""The training commands: `nanoseek train` (pretraining), `sft`, `distill`, `grpo`, and `pipeline`
(the R1 recipe end to end). The work is in nanoseek.train and nanoseek.pipeline."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from nanoseek.cli.common import (
    BadArgs,
    add_task_flags,
    add_train_flags,
    is_main_process,
    positive_int,
    task_from,
    train_overrides,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_train_parser(sub)
    add_sft_parser(sub)
    add_distill_parser(sub)
    add_grpo_parser(sub)
    add_pipeline_parser(sub)


def say(text: str) -> None:
    """A line for the person at the terminal: once, from rank 0 under torchrun."""
    if is_main_process():
        print(text, flush=True)


def _summary(last: dict[str, Any], out_dir: str, then: str) -> None:
    """The final line of a pretraining or SFT run. Its loss is the last step's next-token loss on
    the training batch (metrics.jsonl's main_loss, what the progress bar shows), and, apart, the
    objective minimised (MTP and balance terms included)."""
    if not last:
        return
    val = f", validation loss {last['val_loss']:.4f}" if "val_loss" in last else ""
    say(f"step {last['step']}: train loss {last['main_loss']:.4f} (next-token, last step; the "
        f"objective with MTP and balance terms {last['loss']:.4f}){val}; checkpoints in "
        f"{out_dir}/checkpoints, metrics in {out_dir}/metrics.jsonl ({then})")


# ---- pretraining

def add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="pretrain a model: one CPU process, or DDP / FSDP2 under torchrun",
        description="Pretrain as V3 was: AdamW (0.9, 0.95, wd 0.1 on matrices), warmup then "
                    "cosine / constant / WSD, clip 1.0, the aux-loss-free bias update, the "
                    "sequence-wise balance loss, MTP. Settings come from --config (TOML or YAML, "
                    "keys = the flags below with underscores), then the flags. Run it under "
                    "`torchrun --nproc_per_node N` for data parallelism (add --fsdp to shard).",
        epilog="example: nanoseek train --model tiny --data data/ --tokenizer tok/ "
               "--max-steps 200\n"
               "         torchrun --nproc_per_node 8 -m nanoseek train --config run.toml --fsdp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="a TOML or YAML file of training settings")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --out-dir")
    add_train_flags(train)
    train.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from nanoseek.train.pretrain import TrainConfig, train
    from nanoseek.train.runtime import load_train_config

    cfg = load_train_config(args.config, train_overrides(args), TrainConfig)
    _, last = train(cfg, resume=args.resume)
    _summary(last, cfg.out_dir, f"cost: nanoseek cost --run {cfg.out_dir}")
    return 0


# ---- SFT and distillation

def _add_sft_flags(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Training flags as sft uses them: its own defaults shown, and no --model / --tokenizer (they
    come from CHECKPOINT; the hidden flags are there only to say so)."""
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of conversations held out (default 0.05; raised where it would hold "
                        "none out)")
    p.add_argument("--config", help="a TOML or YAML file of training settings (the defaults below "
                                    "are pretraining's then, unless the file sets them)")
    for hidden in ("--model", "--tokenizer"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    add_train_flags(p, skip=("model", "tokenizer"), defaults=defaults)


def add_sft_parser(sub: argparse._SubParsersAction) -> None:
    from nanoseek.train.sft import SFT_DEFAULTS

    sft = sub.add_parser(
        "sft", help="supervised fine-tuning on chats (with reasoning_content), loss on the "
                    "assistant's turns",
        description="Fine-tune a checkpoint on chat JSONL ({\"messages\": [...]} per line; "
                    "assistant turns may carry reasoning_content). Each assistant turn is trained "
                    "after its context rendered exactly as the engine renders it, with the loss on "
                    "the turn's reasoning, </think>, answer and EOS only. Each turn is packed "
                    "whole into a row beside others (--pack documents), never cut. The data is "
                    "prepared once into OUT_DIR/data; the training loop is `nanoseek train`'s "
                    "(resume, torchrun, telemetry), and so are the flags.",
        epilog="example: nanoseek sft runs/base/checkpoints/step_000300 --chats sft.jsonl "
               "--max-steps 200\n"
               "         nanoseek data gym basic_arithmetic --size 2000 --out sft.jsonl  (makes "
               "such chats)\n"
               "distill: nanoseek sample TEACHER --task gym:basic_arithmetic --k 4 --out t.jsonl\n"
               "         nanoseek sft TEACHER --chats t.jsonl --student tiny "
               "--out-dir runs/student",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sft.add_argument("checkpoint", metavar="CHECKPOINT",
                     help="the checkpoint to fine-tune (model + tokenizer)")
    sft.add_argument("--chats", required=True, metavar="PATTERN",
                     help="chat JSONL file(s), e.g. 'sft/*.jsonl'")
    sft.add_argument("--student", metavar="SPEC",
                     help="distillation: train a NEW model of this shape (a preset such as "
                          "tiny, or a config.json) from scratch on the chats, with CHECKPOINT's "
                          "tokenizer; CHECKPOINT is then the teacher whose `nanoseek sample` "
                          "output the chats are (R1's distillation is SFT on them)")
    sft.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in --out-dir")
    _add_sft_flags(sft, SFT_DEFAULTS)
    sft.set_defaults(handler=cmd_sft)


def _sft_config(args: argparse.Namespace, defaults: dict[str, Any]):
    from nanoseek.train.sft import sft_config

    if args.model or args.tokenizer:
        raise BadArgs(f"{args.command} takes the model and the tokenizer from CHECKPOINT; drop "
                      "--model/--tokenizer")
    overrides = train_overrides(args)
    if args.command == "distill":  # the samples go there too, whatever the config file says
        overrides["out_dir"] = overrides["out_dir"] or defaults["out_dir"]
    return sft_config(args.config, overrides, args.checkpoint, args.student, defaults)


def cmd_sft(args: argparse.Namespace) -> int:
    from nanoseek.train.sft import SFT_DEFAULTS, sft

    cfg = _sft_config(args, SFT_DEFAULTS)
    last = sft(cfg, args.chats, args.val_fraction, args.resume, log=say)
    _summary(last, cfg.out_dir, "chat with the last: nanoseek chat "
                                f"{cfg.out_dir}/checkpoints/step_{cfg.max_steps:06d}")
    return 0


def add_distill_parser(sub: argparse._SubParsersAction) -> None:
    from nanoseek.train.sft import DISTILL_DEFAULTS

    distill = sub.add_parser(
        "distill", help="distillation: a smaller student trained (SFT) on a teacher's correct "
                        "samples",
        description="R1's distillation in one command: rejection-sample the teacher on a task (k "
                    "samples per prompt, the ones the task scores correct kept, optionally only "
                    "the shortest) into OUT_DIR/teacher_samples.jsonl, then train a NEW model of "
                    "the --student shape on them with the teacher's tokenizer (`nanoseek sft "
                    "--student`: loss on the assistant's reasoning and answer). The teacher may be "
                    "any nanoseek checkpoint; the student a preset (dense or MoE) or a "
                    "config.json. --resume reuses the samples and continues the training.",
        epilog="example: nanoseek distill runs/r1/checkpoints/step_000100 --task "
               "gym:basic_arithmetic --k 4 --student tiny --max-steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("checkpoint", metavar="TEACHER",
                         help="the teacher checkpoint (model + tokenizer)")
    add_task_flags(distill)
    distill.add_argument("--k", type=positive_int, default=4,
                         help="teacher samples per prompt (default 4)")
    distill.add_argument("--shortest", action="store_true",
                         help="keep only the shortest correct sample per prompt")
    distill.add_argument("--temperature", type=float, default=0.6,
                         help="teacher sampling (default 0.6)")
    distill.add_argument("--top-p", type=float, default=0.95,
                         help="teacher nucleus sampling (default 0.95)")
    distill.add_argument("--max-tokens", type=positive_int, default=256,
                         help="per teacher sample (default 256)")
    distill.add_argument("--student", required=True, metavar="SPEC",
                         help="the student's shape: a preset (e.g. tiny) or a config.json; trained "
                              "from scratch")
    distill.add_argument("--resume", action="store_true",
                         help="reuse the samples and continue from the latest checkpoint in "
                              "--out-dir")
    _add_sft_flags(distill, DISTILL_DEFAULTS)
    distill.set_defaults(handler=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.train.sft import DISTILL_DEFAULTS, distill

    cfg = _sft_config(args, DISTILL_DEFAULTS)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens,
                            seed=args.seed if args.seed is not None else 0)  # --seed: sampling too
    last = distill(args.checkpoint, lambda: task_from(args), cfg, k=args.k, params=params,
                   shortest=args.shortest, val_fraction=args.val_fraction, resume=args.resume,
                   device=None if cfg.device == "auto" else cfg.device, log=say)
    _summary(last, cfg.out_dir, "chat with the last: nanoseek chat "
                                f"{cfg.out_dir}/checkpoints/step_{cfg.max_steps:06d}")
    return 0


# ---- GRPO and the pipeline

def add_grpo_parser(sub: argparse._SubParsersAction) -> None:
    from nanoseek.train.grpo import GRPOConfig

    grpo = sub.add_parser(
        "grpo", help="reinforcement learning with rule-checked rewards (GRPO: R1-Zero from a "
                     "base, R1 after SFT)",
        description="GRPO (DeepSeekMath, R1): each step samples --group-size completions of "
                    "--prompts-per-step prompts through the engine, scores them (the task's "
                    "accuracy + format, optionally language consistency and an overlong penalty), "
                    "normalises rewards within each group into advantages, and takes --mu "
                    "clipped-ratio policy-gradient steps, with a k3 KL to a frozen reference when "
                    "--beta > 0. Logs each reward part, accuracy, response lengths, KL, clip "
                    "fractions, entropy and throughput to OUT_DIR/metrics.jsonl, and the held-out "
                    "accuracy every --eval-every steps. Checkpoints are HF directories; --resume "
                    "continues exactly; torchrun runs data-parallel.",
        epilog="example (R1-Zero at toy scale, from a base model, with the R1-Zero text "
               "template):\n"
               "  nanoseek grpo runs/base/checkpoints/step_000300 --task gym:basic_arithmetic "
               "--template r1-zero\n"
               "a task of your own: --task mytask.py, a file with\n"
               "  def prompts(): yield {\"prompt\": \"What is 2 + 2?\", \"reference\": \"4\"}\n"
               "  def score(completion, reference): "
               "return float(completion.strip().endswith(reference))",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    grpo.add_argument("checkpoint", metavar="CHECKPOINT",
                      help="the checkpoint to train (model + tokenizer)")
    grpo.add_argument("--config",
                      help="a TOML or YAML file of GRPO settings (the flags below override it)")
    grpo.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in --out-dir")
    add_train_flags(grpo, GRPOConfig, skip=("model",))
    grpo.set_defaults(handler=cmd_grpo)


def cmd_grpo(args: argparse.Namespace) -> int:
    from nanoseek.train.grpo import GRPOConfig, train_grpo
    from nanoseek.train.runtime import load_train_config

    overrides = train_overrides(args, GRPOConfig)
    overrides["model"] = args.checkpoint
    cfg = load_train_config(args.config, overrides, GRPOConfig)
    _, last = train_grpo(cfg, resume=args.resume)
    if last:
        held = (f", held-out accuracy {last['eval_accuracy']:.3f}" if "eval_accuracy" in last
                else "")
        say(f"step {last['step']}: reward {last['reward']:.3f}, accuracy {last['accuracy']:.3f} "
            f"(last step's rollouts){held}; checkpoints in {cfg.out_dir}/checkpoints, metrics in "
            f"{cfg.out_dir}/metrics.jsonl (chat with the last: nanoseek chat "
            f"{cfg.out_dir}/checkpoints/step_{last['step']:06d})")
    return 0


def add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    pipe = sub.add_parser(
        "pipeline", help="the R1 recipe end to end at toy scale, and its report",
        description="Corpus and tokenizer -> pretraining -> R1-Zero (GRPO from the base) -> R1 "
                    "(cold-start SFT, then GRPO) -> rejection sampling -> distillation into a "
                    "smaller dense student, against the same student trained by GRPO for equal "
                    "compute -> every model evaluated on held-out prompts (pass@1, cons@k, pass@k; "
                    "for the skills, pass@1 by skill and honesty out of scope; the best also "
                    "against the thinking budget) -> OUT_DIR/report.md with tables, plots and the "
                    "cost of each stage. The default preset makes the model nanoseek ships. Stages "
                    "are kept in OUT_DIR/<stage>/; rerun the same command to resume after an "
                    "interruption.",
        epilog="example: nanoseek pipeline --out-dir runs/pipeline --export runs/model\n"
               "                                           (the shipped model's recipe: under 30 "
               "minutes on 2 idle CPU cores)\n"
               "         nanoseek pipeline --quick                    (every stage, a few steps "
               "each: a smoke test)\n"
               "         nanoseek pipeline --preset gpu-100m          (one GPU: a 293M-parameter "
               "MoE teacher, a harder task)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pipe.add_argument("--preset", choices=("default", "quick", "gpu-100m"), default="default",
                      help="sizes and steps (gpu-100m: for one H100/H200, about 10 minutes by "
                           "estimate)")
    pipe.add_argument("--quick", action="store_true",
                      help="the quick preset: minutes, numbers that mean nothing")
    pipe.add_argument("--out-dir", default="runs/pipeline", help="where stages and the report go")
    pipe.add_argument("--export", metavar="DIR",
                      help="also copy the best model there with its model card (the shipped model "
                           "is such an export, in src/nanoseek/assets/model)")
    pipe.add_argument("--seed", type=int, default=0,
                      help="the run's seed: documents, initial weights, data order and rollouts "
                           "(not the held-out prompts); another seed is another run of the same "
                           "recipe, to see how far runs part (default 0: the shipped model's)")
    pipe.add_argument("--quiet", action="store_true", help="no progress bars")
    pipe.set_defaults(handler=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> int:
    import torch

    from nanoseek.pipeline import PRESETS, Pipeline, export

    name = "quick" if args.quick else args.preset
    if args.seed < 0:
        raise BadArgs(f"--seed must be >= 0, got {args.seed}")
    preset = dataclasses.replace(PRESETS[name], seed=args.seed)
    if preset.gpu and not torch.cuda.is_available():
        raise BadArgs(f"preset {name} needs a GPU, and this torch sees none (it would take days on "
                      "a CPU; the default preset is the CPU-sized one)")
    pipe = Pipeline(args.out_dir, preset, progress=not args.quiet)
    summary = pipe.run()
    print((Path(args.out_dir) / "report.md").read_text())
    print(f"report: {args.out_dir}/report.md; best model ({summary['best']}): "
          f"{summary['best_checkpoint']}")
    if args.export:
        dest = export(summary, Path(args.out_dir), args.export)
        print(f"exported the best model with its model card to {dest}")
    return 0
