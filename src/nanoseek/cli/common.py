"""What several commands share: argument types, the flag groups (engine, sampling, task, corpus,
training config), and building an engine, sampling settings or a task from parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from nanoseek.errors import UserError


class BadArgs(UserError):
    """A flag value the engine, the sampler or a task refuses: reported as any user error is."""


def is_main_process() -> bool:
    """False in every torchrun process but rank 0, so that a run's summary prints once."""
    return os.environ.get("RANK", "0") == "0"


def human(n: float, billion: str = "B") -> str:
    """671026404352 -> '671.0B' (decimal units, as model sizes are quoted; billion="G": FLOPs)."""
    for scale, suffix in ((1e12, "T"), (1e9, billion), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:g}"


# ---- argument types: argparse turns their ArgumentTypeError into a usage error, exit status 2

def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text: str) -> int:
    v = _number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def port(text: str) -> int:
    v = _number(text, int)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535 (got {v})")
    return v


def fraction(text: str) -> float:
    v = _number(text, float)
    if not 0 < v <= 1:  # an MFU, not a percentage: 0.39, not 39
        raise argparse.ArgumentTypeError(f"must be in (0, 1], e.g. 0.39 (got {text})")
    return v


def price(text: str) -> float:
    v = _number(text, float)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return v


def count(text: str) -> int:
    from nanoseek.eval.cost import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"min_terms\": 2}}', got {text!r}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, null, lists
    except json.JSONDecodeError:
        return key, value


# ---- flag groups

def add_train_flags(p: argparse.ArgumentParser, cls: type | None = None,
                    skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of a training config (TrainConfig unless given; not those in skip), each
    defaulting to None so that the config file, then the command's defaults, then the dataclass
    decide. defaults: what the command uses instead of the dataclass's, as its help shows them."""
    from nanoseek.train.pretrain import TrainConfig

    defaults = defaults or {}
    for f in dataclasses.fields(cls or TrainConfig):
        if f.name in skip:
            continue
        flag, help = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        default = defaults.get(f.name, f.default)
        if f.name == "extra":
            p.add_argument("--set", dest="extra", action="append", type=key_value,
                           metavar="KEY=VALUE", help=f"{help.split(' (CLI')[0]}; repeatable")
        elif str(f.type).startswith("dict"):
            p.add_argument(flag, type=json_object, default=None, metavar="JSON",
                           help=help.split(" (CLI")[0])
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help} (default {'on' if default else 'off'})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            shown = f"{help} (default {default!r})" if default not in ("", None) else help
            p.add_argument(flag, type=kind, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=shown)


def train_overrides(args: argparse.Namespace, cls: type | None = None) -> dict[str, Any]:
    """The training flags given, by config field (None where a flag was not given)."""
    from nanoseek.train.pretrain import TrainConfig

    fields = dataclasses.fields(cls or TrainConfig)
    overrides = {f.name: getattr(args, f.name, None) for f in fields}
    if "extra" in overrides:
        overrides["extra"] = dict(args.extra) if args.extra else None
    return overrides


def add_corpus_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="GLOB",
                   help="corpus files: .txt, .jsonl, .parquet, optionally .gz; ** recurses "
                        "(quote the glob)")
    p.add_argument("--field", default="text",
                   help="JSONL field or Parquet column holding the text (default text)")
    p.add_argument("--txt-mode", choices=("file", "blocks"), default="file",
                   help=".txt: one document per file, or per blank-line-separated block "
                        "(default file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help="skills (the shipped model's skills; skills:held-out: its held-out "
                        "set), gym:NAME (a reasoning-gym dataset), FILE.jsonl (GSM8K / MATH / "
                        "prompt+answer lines) or FILE.py (prompts() and score(completion, "
                        "reference))")
    p.add_argument("--task-config", help="reasoning-gym (or skills) options as JSON, e.g. "
                                         "'{\"min_terms\": 2}'")
    p.add_argument("--size", type=positive_int, default=200,
                   help="prompts (default 200; a file: its first N)")
    p.add_argument("--task-seed", type=int, default=0,
                   help="seed of reasoning-gym's prompts (default 0)")


def add_engine_flags(p: argparse.ArgumentParser, max_batch: int) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cuda if available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="weights and cache dtype (default bfloat16 on GPU, float32 on CPU)")
    g.add_argument("--quantize", choices=("int4", "int8"),
                   help="CPU only. int4: the projections' weights in 4 bits (groups of 32, bf16 "
                        "activations): a quarter of bf16's bytes a decode step reads, about 3x "
                        "fp32's tokens/s at batch 1; near-lossless for a model converted from a Q4 "
                        "GGUF file. int8: weights and activations in 8 bits (SmoothQuant, "
                        "calibrated on a short built-in text), fp32 elsewhere: int8 arithmetic, "
                        "fastest at large batches (bench/bench_students.py). Default: none")
    g.add_argument("--max-batch", type=positive_int, default=max_batch,
                   help=f"sequences decoded together: cache slots (default {max_batch})")
    g.add_argument("--max-seq-len", type=positive_int,
                   help="prompt + completion tokens per sequence (default: the model's context, "
                        "at most 4096)")
    g.add_argument("--cache-tokens", type=positive_int,
                   help="token budget of the KV cache: caps --max-batch at cache-tokens / "
                        "max-seq-len")
    g.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=None,
                   help="draft tokens with the MTP module and verify them in one forward (default: "
                        "on when the checkpoint has MTP layers and --max-batch <= 16, where it is "
                        "faster); the output is unchanged either way")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="static decode steps: on a GPU in bf16, CUDA graphs of every batch size, "
                        "recorded in seconds at start-up (the default there); on a CPU, "
                        "torch.compile while batch x --max-seq-len <= 16,384 (a compiled step "
                        "attends over the whole cache; faster at batch 1 and 32: bench/; each "
                        "batch size compiles once, for 10-90 s, on its first use); "
                        "speculation then defaults off")
    g.add_argument("--prefix-cache-dir", metavar="DIR",
                   help="also keep the prompt-prefix KV cache on disk here, across runs (default: "
                        "memory only)")


def add_sampling_flags(p: argparse.ArgumentParser, temperature: float, top_p: float,
                       max_tokens: int | None) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 = greedy (default {temperature:g})")
    g.add_argument("--top-p", type=float, default=top_p,
                   help=f"nucleus sampling (default {top_p:g})")
    g.add_argument("--top-k", type=int, default=0,
                   help="keep the k most likely tokens (default 0: off)")
    g.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min-p x the top probability")
    g.add_argument("--max-tokens", type=positive_int, default=max_tokens,
                   help="tokens per completion, reasoning included (default: "
                        f"{max_tokens or 'up to --max-seq-len'})")
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop before this text; repeatable")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages repeats (default 1)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="in [-2, 2] (default 0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="in [-2, 2] (default 0)")


# ---- what the flags build

def engine_from(args: argparse.Namespace):
    """The engine of the engine flags, on CHECKPOINT or (none given) the model nanoseek ships."""
    from nanoseek.infer.bundled import BUNDLED, SHIPPED_HINT, UNTRAINED_NOTE, default_checkpoint
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.prefix_cache import PrefixCache

    path = args.checkpoint
    if path is None:
        path, trained = default_checkpoint()
        if not trained:
            print(f"nanoseek: {UNTRAINED_NOTE}", file=sys.stderr, flush=True)
            args.notice = UNTRAINED_NOTE  # the chat app shows it too
        elif path == BUNDLED:
            args.hint = SHIPPED_HINT  # the chat app says what to ask
    pc = PrefixCache(directory=args.prefix_cache_dir) if args.prefix_cache_dir else PrefixCache()
    try:
        return Engine.from_checkpoint(str(path), device=args.device, dtype=args.dtype,
                                      quantize=args.quantize, max_batch=args.max_batch,
                                      max_seq_len=args.max_seq_len,
                                      cache_tokens=args.cache_tokens, speculative=args.speculative,
                                      prefix_cache=pc, compile=_compile(args))
    except ValueError as e:
        raise BadArgs(str(e)) from None


def _compile(args: argparse.Namespace) -> bool:
    """--compile as given; by default on where the engine runs on a GPU (CUDA graphs), off on a
    CPU (compiling takes a while there)."""
    if args.compile is not None:
        return args.compile
    import torch

    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return on_gpu and args.dtype in (None, "bfloat16")  # graphs are recorded in bf16 only


def sampling_from(args: argparse.Namespace):
    from nanoseek.infer.sampling import SamplingParams

    try:
        return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, seed=args.seed,
                              stop=tuple(args.stop or ()), n=getattr(args, "n", 1),
                              repetition_penalty=args.repetition_penalty,
                              presence_penalty=args.presence_penalty,
                              frequency_penalty=args.frequency_penalty)
    except ValueError as e:  # "SamplingParams.top_p must be ..." -> "--top-p must be ..."
        field, _, rest = str(e).removeprefix("SamplingParams.").partition(" ")
        raise BadArgs(f"--{field.replace('_', '-')} {rest}") from None


def task_from(args: argparse.Namespace):
    """The task of --task, --task-config, --size and --task-seed."""
    from nanoseek.tasks.load import load_task

    try:
        config = json.loads(args.task_config) if args.task_config else None
    except json.JSONDecodeError as e:
        raise BadArgs(f"--task-config is not valid JSON: {e}") from None
    return load_task(args.task, size=args.size, seed=args.task_seed, config=config)
