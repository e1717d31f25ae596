"""The `nanoseek` command. Each subcommand is a thin handler; the work lives in the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanoseek import __version__
from nanoseek.errors import UserError
from nanoseek.files import data_dir
from nanoseek.model.config import PRESETS, ConfigError, ModelConfig, resolve_config
from nanoseek.model.counting import (
    KVCacheSize,
    ParamCount,
    count_params,
    flops_per_token,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
)


def _human(n: float, billion: str = "B") -> str:
    """671026404352 -> '671.0B' (decimal units, as model sizes are quoted; billion="G" for FLOPs)."""
    for scale, suffix in ((1e12, "T"), (1e9, billion), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:g} B"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


# ---- info ----

def _info_figures(spec: str, cfg: ModelConfig, seq_len: int, dtype_bytes: int,
                  gqa_groups: int) -> dict[str, Any]:
    p: ParamCount = count_params(cfg)
    kv: KVCacheSize = kv_cache_bytes_per_token(cfg, dtype_bytes=dtype_bytes, gqa_groups=gqa_groups)
    return {
        "spec": spec,
        "config": {
            "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads, "q_lora_rank": cfg.q_lora_rank,
            "kv_lora_rank": cfg.kv_lora_rank, "n_routed_experts": cfg.n_routed_experts,
            "n_shared_experts": cfg.n_shared_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
            "first_k_dense_replace": cfg.first_k_dense_replace,
            "num_nextn_predict_layers": cfg.num_nextn_predict_layers, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "params": {
            "total": p.total, "active": p.active, "active_non_embedding": p.active_non_embedding,
            "mtp": p.mtp, "total_with_mtp": p.total_with_mtp, "embedding": p.embedding,
            "active_matmul": p.active_matmul,
            "breakdown": dict(p.breakdown), "buffers": p.buffers,
        },
        "flops_per_token": {
            "seq_len": seq_len,
            "training": flops_per_token(cfg, seq_len),
            "forward": forward_flops_per_token(cfg, seq_len),
            "training_with_mtp": flops_per_token(cfg, seq_len, include_mtp=True),
        },
        "kv_cache_bytes_per_token": {
            "dtype_bytes": dtype_bytes, "mla_latent": kv.mla_latent, "naive": kv.naive, "mha": kv.mha,
            "gqa": kv.gqa, "gqa_groups": kv.gqa_groups, "naive_over_mla": kv.naive_over_mla,
            "mha_over_mla": kv.mha_over_mla, "gqa_over_mla": kv.gqa_over_mla,
        },
    }


def _info_table(f: dict[str, Any]) -> str:
    c, p, fl, kv = f["config"], f["params"], f["flops_per_token"], f["kv_cache_bytes_per_token"]
    rows: list[tuple[str, ...]] = []  # (label, human, exact, note)

    def section(title: str) -> None:
        rows.append((title,))

    def row(label: str, human: str, exact: int | str, note: str = "") -> None:
        rows.append((label, human, f"{exact:,}" if isinstance(exact, int) else exact, note))

    section("parameters")
    row("total (main model)", _human(p["total"]), p["total"])
    row("active per token", _human(p["active"]), p["active"],
        f"{_human(p['active_non_embedding'])} without the embedding")
    row("MTP modules", _human(p["mtp"]), p["mtp"],
        f"{c['num_nextn_predict_layers']} module(s); embedding and head shared")
    section("total by component")
    for name, n in p["breakdown"].items():
        row(name, _human(n), n, f"{100 * n / p['total']:.1f}%")
    section(f"FLOPs per token (seq_len {fl['seq_len']:,})")
    for label, key, note in (("training (fwd+bwd)", "training", "6*N_active_matmul + causal attention"),
                             ("forward only", "forward", ""),
                             ("training with MTP", "training_with_mtp", "")):
        row(label, _human(fl[key], billion="G") + "FLOP", fl[key], note)
    section(f"KV cache per token ({kv['dtype_bytes']} bytes/value, {c['num_hidden_layers']} layers)")
    row("MLA latent (cached)", _bytes(kv["mla_latent"]), kv["mla_latent"], "1.0x")
    row("naive per-head K/V", _bytes(kv["naive"]), kv["naive"], f"{kv['naive_over_mla']:.1f}x MLA")
    row("MHA, same width", _bytes(kv["mha"]), kv["mha"], f"{kv['mha_over_mla']:.1f}x MLA")
    row(f"GQA, {kv['gqa_groups']} KV groups", _bytes(kv["gqa"]), kv["gqa"], f"{kv['gqa_over_mla']:.1f}x MLA")

    w = [max(len(r[i]) for r in rows if len(r) > 1) for i in range(3)]
    experts = (f", {c['n_routed_experts']} routed experts (top-{c['num_experts_per_tok']}) "
               f"+ {c['n_shared_experts']} shared" if c["n_routed_experts"] else "")
    lines = [f"{f['spec']}: {c['num_hidden_layers']} layers, d={c['hidden_size']}, "
             f"{c['num_attention_heads']} heads{experts}"]
    for r in rows:
        if len(r) == 1:
            lines += ["", r[0]]
        else:
            label, human, exact, note = r
            lines.append(f"  {label:<{w[0]}}  {human:>{w[1]}}  {exact:>{w[2]}}  {note}".rstrip())
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args.spec)
    except ConfigError as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:  # unreadable file: ModelConfig.load lets these through
        print(f"nanoseek: error: {args.spec}: {e}", file=sys.stderr)
        return 2
    figures = _info_figures(args.spec, cfg, args.seq_len, args.dtype_bytes, args.gqa_groups)
    print(json.dumps(figures, indent=2) if args.json else _info_table(figures))
    return 0


# ---- cost ----

def _count(text: str) -> int:
    from nanoseek.eval.cost import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:  # an MFU, not a percentage: 0.39, not 39
        raise argparse.ArgumentTypeError(f"must be in (0, 1], e.g. 0.39 (got {text})")
    return v


def _price(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return v


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def _duration(hours: float) -> str:
    return f"{hours / 24:,.1f} days" if hours >= 48 else f"{hours:.3g} hours"


def _usd(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:.3g}"


def _cost_lines(c: Any, gpus: int, mfu_note: str = "", gpu_note: str = "") -> list[str]:
    """Assumptions (every number the result rests on) and results of a TrainingCost."""
    mtp = "counted" if c.include_mtp else "not counted (the usual 6ND reproduction; --mtp counts it)"
    return [
        "assumptions",
        f"  FLOPs per token  {_human(c.flops_per_token, billion='G')}FLOP = 6 x N + attention (forward + backward)",
        f"                   N = {c.matmul_params:,} active matmul weights (no embedding lookup, norms)",
        f"                   attention = 3 x L x heads x (d_qk + d_v) x S = "
        f"{_human(c.attention_flops_per_token, 'G')}FLOP; L = {c.layers} layers, causal (S/2 keys a query)",
        f"  seq len S        {c.seq_len:,}",
        f"  MTP module       {mtp}",
        f"  GPU peak         {c.peak_flops / 1e12:,.1f} TFLOP/s per {c.gpu}, dense {c.dtype} (NVIDIA datasheet)"
        + gpu_note,
        f"  MFU              {c.mfu:.3g}{mfu_note}",
        f"  price            ${c.usd_per_gpu_hour:.2f} per GPU-hour",
        "",
        "results",
        f"  tokens           {_human(c.tokens)} ({c.tokens:,})",
        f"  total compute    {c.total_flops:.3e} FLOPs",
        f"  GPU-hours        {_hours(c.gpu_hours)} {c.gpu}-hours",
        f"  wall-clock       {_duration(c.gpu_hours / gpus)} on {gpus:,} GPU" + ("s" if gpus > 1 else " (--gpus N)"),
        f"  cost             {_usd(c.usd)}",
    ]


def cmd_cost(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nanoseek.eval import cost

    try:
        if (args.spec is None) == (args.run is None):
            raise ValueError("give a model SPEC (with --tokens) or --run RUN_DIR" + (", not both" if args.run else ""))
        if args.run is not None:
            r = cost.run_cost(args.run, args.usd_per_hour, args.gpu)
            if args.json:
                print(json.dumps(asdict(r), indent=2))
                return 0
            lines = [f"{r.run_dir}: {r.steps:,} steps, {_human(r.tokens)} tokens on {r.device} x {r.world_size}", "",
                     "assumptions",
                     f"  device-hours     elapsed_s of the training steps x world size {r.world_size} "
                     "(evaluation and checkpoint writes not timed)",
                     f"  price            ${r.usd_per_device_hour:.2f} per device-hour", "",
                     "results",
                     f"  elapsed          {r.elapsed_s:,.1f} s",
                     f"  device-hours     {_hours(r.device_hours)}",
                     f"  throughput       {r.tokens_per_s:,.0f} tokens/s (all devices)",
                     f"  MFU              {'not logged (unknown device)' if r.mfu is None else f'{r.mfu:.3g}'}",
                     f"  cost             {_usd(r.usd)}"]
            if r.on_gpu is not None:
                lines += ["", f"the same {_human(r.tokens)} tokens on {r.on_gpu.gpu} at the run's MFU {r.mfu:.3g}:", "",
                          *(f"  {line}".rstrip() for line in _cost_lines(r.on_gpu, 1))]
            print("\n".join(lines))
            return 0
        if args.tokens is None:
            raise ValueError("--tokens is required with a model SPEC (e.g. --tokens 14.8T)")
        cfg = resolve_config(args.spec)
        mfu = cost.DEFAULT_MFU if args.mfu is None else args.mfu
        c = cost.training_cost(cfg, args.tokens, args.gpu or "H100", mfu, args.usd_per_hour, args.seq_len,
                               include_mtp=args.mtp, dtype=args.dtype)
    except ValueError as e:  # ConfigError is one
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:
        print(f"nanoseek: error: {args.spec or args.run}: {e}", file=sys.stderr)
        return 2
    mfu_note = ("  (given)" if args.mfu is not None
                else f"  (assumed: no --mfu given; {cost.DEFAULT_MFU} is the V3 report's implied 0.39, rounded)")
    gpu_note = "" if args.gpu else "  (assumed: no --gpu given)"
    ref = None
    if args.spec == "deepseek-v3":  # the report's pre-training row, and the MFU it implies on this formula
        v3 = cost.V3_REPORT
        ref = {**v3, "implied_mfu": cost.implied_mfu(cfg, v3["tokens"], v3["gpu_hours"], v3["gpu"], args.seq_len,
                                                     include_mtp=args.mtp, dtype=args.dtype)}
    if args.json:
        print(json.dumps({"spec": args.spec, **asdict(c), "mfu_source": "given" if args.mfu is not None else "default",
                          "gpus": args.gpus, "days": c.days(args.gpus), "v3_report": ref}, indent=2))
        return 0
    lines = [f"{args.spec}: training cost of {_human(c.tokens)} tokens on {c.gpu}", "",
             *_cost_lines(c, args.gpus, mfu_note, gpu_note)]
    if ref is not None:
        lines += ["", f"V3 report: {ref['gpu_hours'] // 1000:,}K {ref['gpu']}-hours for {_human(ref['tokens'])} tokens "
                      f"(pre-training), i.e. MFU {ref['implied_mfu']:.3f} on this formula"]
    print("\n".join(lines))
    return 0


# ---- tokenizer, data, train ----

def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from nanoseek.data import read_documents
    from nanoseek.tokenizer import train_tokenizer

    texts = (d.text for d in read_documents(args.data, field=args.field, txt_mode=args.txt_mode))
    try:
        tok = train_tokenizer(texts, args.vocab_size, args.min_frequency, show_progress=not args.quiet)
    except ValueError as e:  # vocab size too small
        print(f"nanoseek: error: --vocab-size: {e}", file=sys.stderr)
        return 2
    tok.save(args.out)
    print(f"tokenizer with {tok.vocab_size:,} tokens written to {args.out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from nanoseek.data import prepare_corpus
    from nanoseek.tokenizer import Tokenizer

    meta = prepare_corpus(args.data, Tokenizer.load(args.tokenizer), args.out, val_fraction=args.val_fraction,
                          seed=args.seed, field=args.field, txt_mode=args.txt_mode, chat=args.chat,
                          progress=not args.quiet)
    print(f"{args.out}: {meta['train_tokens']:,} train tokens ({meta['train_documents']:,} documents), "
          f"{meta['val_tokens']:,} validation tokens ({meta['val_documents']:,} documents), {meta['dtype']}")
    return 0


def cmd_data_gym(args: argparse.Namespace) -> int:
    from itertools import chain

    from nanoseek.data import gym_documents
    from nanoseek.files import DataError, write_jsonl

    try:
        config = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as e:
        raise DataError(f"--config is not valid JSON: {e}") from None
    rows = chain.from_iterable(gym_documents(name, args.size, args.seed + i, config)
                               for i, name in enumerate(args.names))
    n = write_jsonl(rows, args.out)
    print(f"{n:,} documents from {', '.join(args.names)} written to {args.out} "
          "(fields: text for pretraining, messages for SFT, answer, task)")
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from nanoseek.train.pretrain import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    overrides["extra"] = dict(args.extra) if args.extra else None
    return overrides


def _run_training(cfg: Any, resume: bool, then: str) -> int:
    from nanoseek.train.pretrain import train

    _, last = train(cfg, resume=resume)
    if last:
        val = f", validation loss {last['val_loss']:.4f}" if "val_loss" in last else ""
        print(f"step {last['step']}: loss {last['loss']:.4f}{val}; checkpoints in {cfg.out_dir}/checkpoints, "
              f"metrics in {cfg.out_dir}/metrics.jsonl ({then})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nanoseek.train.pretrain import load_train_config

    cfg = load_train_config(args.config, _train_overrides(args))
    return _run_training(cfg, args.resume, f"cost: nanoseek cost --run {cfg.out_dir}")


SFT_DEFAULTS = {"lr": 1e-3, "warmup_steps": 10, "max_steps": 100, "out_dir": "runs/sft"}


def cmd_sft(args: argparse.Namespace) -> int:
    from nanoseek.data import prepare_corpus, read_meta
    from nanoseek.files import DataError
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.pretrain import load_train_config

    if args.model or args.tokenizer:
        print("nanoseek: error: sft takes the model and the tokenizer from CHECKPOINT; drop --model/--tokenizer",
              file=sys.stderr)
        return 2
    overrides = _train_overrides(args)
    for key, value in SFT_DEFAULTS.items():
        if overrides[key] is None and not args.config:
            overrides[key] = value
    overrides["model"] = overrides["tokenizer"] = args.checkpoint
    if args.student:  # distillation: a new model of that shape learns the chats, in the checkpoint's tokens
        overrides["model"] = args.student
    data = Path(overrides["out_dir"] or SFT_DEFAULTS["out_dir"]) / "data"
    overrides["data"] = overrides["data"] or str(data)
    cfg = load_train_config(args.config, overrides)
    try:
        meta = read_meta(cfg.data) if (Path(cfg.data) / "meta.json").exists() else None
        if meta is not None and (meta.get("source") != args.chats or not meta.get("chat")):
            raise DataError(f"{cfg.data} holds data prepared from {meta.get('source')!r}, not chats {args.chats!r}; "
                            "remove it or pass --data")
        if meta is None:
            meta = prepare_corpus(args.chats, Tokenizer.load(args.checkpoint), cfg.data, chat=True,
                                  val_fraction=args.val_fraction, seed=cfg.seed, progress=cfg.progress)
    except (DataError, OSError, ValueError) as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    print(f"SFT data in {cfg.data}: {meta['train_documents']:,} conversations, {meta['train_tokens']:,} tokens "
          "(loss on the assistant's turns only)", flush=True)
    return _run_training(cfg, args.resume, f"chat with the last: nanoseek chat {cfg.out_dir}/checkpoints/step_"
                                           f"{cfg.max_steps:06d}")


def cmd_grpo(args: argparse.Namespace) -> int:
    from nanoseek.tasks.task import TaskError
    from nanoseek.train.grpo import GRPOConfig, train_grpo
    from nanoseek.train.pretrain import load_train_config

    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(GRPOConfig)}
    overrides["model"] = args.checkpoint
    cfg = load_train_config(args.config, overrides, GRPOConfig)
    try:
        _, last = train_grpo(cfg, resume=args.resume)
    except TaskError as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    if last and os.environ.get("RANK", "0") == "0":
        held = f", held-out accuracy {last['eval_accuracy']:.3f}" if "eval_accuracy" in last else ""
        print(f"step {last['step']}: reward {last['reward']:.3f}, accuracy {last['accuracy']:.3f}{held}; checkpoints "
              f"in {cfg.out_dir}/checkpoints, metrics in {cfg.out_dir}/metrics.jsonl (chat with the last: nanoseek "
              f"chat {cfg.out_dir}/checkpoints/step_{last['step']:06d})")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.train.rejection import rejection_sample, write_samples

    args.out_dir = args.out_dir or "runs/distill"
    samples = Path(args.out_dir) / "teacher_samples.jsonl"
    if args.resume and samples.exists():
        print(f"reusing the teacher's samples in {samples}", flush=True)
    else:
        task = _task(args)
        if task is None:
            return 2
        try:
            engine = Engine.from_checkpoint(args.checkpoint, device=None if args.device in (None, "auto") else
                                            args.device, max_batch=64)
            params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                    seed=args.seed if args.seed is not None else 0)  # --seed: sampling too
            counts = write_samples(rejection_sample(engine, task, args.k, params, shortest=args.shortest,
                                                    progress=args.progress is not False), task.name, str(samples))
        except ValueError as e:  # a task error, a bad checkpoint, or a prompt + --max-tokens past the context
            print(f"nanoseek: error: {e}", file=sys.stderr)
            return 2
        print(f"teacher {args.checkpoint}: kept {counts['kept']:,} of {counts['samples']:,} samples "
              f"({counts['prompts_solved']:,} of {counts['prompts']:,} prompts solved) -> {samples}", flush=True)
        if not counts["kept"]:
            print("nanoseek: error: the teacher solved no prompt, so there is nothing to distill", file=sys.stderr)
            return 2
    args.chats = str(samples)
    return cmd_sft(args)


def cmd_pipeline(args: argparse.Namespace) -> int:
    import torch

    from nanoseek.pipeline import PRESETS, Pipeline, export

    name = "quick" if args.quick else args.preset
    preset = PRESETS[name]
    if preset.gpu and not torch.cuda.is_available():
        print(f"nanoseek: error: preset {name} needs a GPU, and this torch sees none (it would take days on a CPU; the "
              "default preset is the CPU-sized one)", file=sys.stderr)
        return 2
    pipe = Pipeline(args.out_dir, preset, progress=not args.quiet)
    summary = pipe.run()
    print((Path(args.out_dir) / "report.md").read_text())
    print(f"report: {args.out_dir}/report.md; best model ({summary['best']}): {summary['best_checkpoint']}")
    if args.export:
        print(f"exported the best model with its model card to {export(summary, Path(args.out_dir), args.export)}")
    return 0


def _add_train_flags(p: argparse.ArgumentParser, cls: type | None = None, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a training config (TrainConfig unless given; not those in skip), defaults None
    so that the config file, then the dataclass, decide."""
    from nanoseek.train.pretrain import TrainConfig

    for f in dataclasses.fields(cls or TrainConfig):
        if f.name in skip:
            continue
        flag, help = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if f.name == "extra":
            p.add_argument("--set", dest="extra", action="append", type=_key_value, metavar="KEY=VALUE",
                           help=f"{help.split(' (CLI')[0]}; repeatable")
        elif str(f.type).startswith("dict"):
            p.add_argument(flag, type=_json_object, default=None, metavar="JSON", help=help.split(" (CLI")[0])
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help} (default {'on' if f.default else 'off'})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=kind, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=f"{help} (default {f.default!r})" if f.default not in ("", None) else help)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"min_terms\": 2}}', got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, null, lists
    except json.JSONDecodeError:
        return key, value


class _BadArgs(UserError):
    """A flag value the engine or the sampler refuses: reported like any other user error."""


def _engine(args: argparse.Namespace):
    from nanoseek.infer.bundled import default_checkpoint
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.prefix_cache import PrefixCache

    path = args.checkpoint
    if path is None:
        path, trained = default_checkpoint()
        if not trained:
            from nanoseek.infer.bundled import UNTRAINED_NOTE

            print(f"nanoseek: {UNTRAINED_NOTE}", file=sys.stderr, flush=True)
            args.notice = UNTRAINED_NOTE  # the chat app shows it too
    pc = PrefixCache(directory=args.prefix_cache_dir) if args.prefix_cache_dir else PrefixCache()
    try:
        return Engine.from_checkpoint(str(path), device=args.device, dtype=args.dtype, max_batch=args.max_batch,
                                      max_seq_len=args.max_seq_len, cache_tokens=args.cache_tokens,
                                      speculative=args.speculative, prefix_cache=pc, compile=args.compile)
    except ValueError as e:
        raise _BadArgs(str(e)) from None


def _sampling(args: argparse.Namespace):
    from nanoseek.infer.sampling import SamplingParams

    try:
        return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, min_p=args.min_p, seed=args.seed, stop=tuple(args.stop or ()),
                              n=getattr(args, "n", 1), repetition_penalty=args.repetition_penalty,
                              presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)
    except ValueError as e:  # "SamplingParams.top_p must be ..." -> "--top-p must be ..."
        field, _, rest = str(e).removeprefix("SamplingParams.").partition(" ")
        raise _BadArgs(f"--{field.replace('_', '-')} {rest}") from None


def cmd_chat(args: argparse.Namespace) -> int:
    from nanoseek.infer.chat import ChatSession, run_chat

    params = _sampling(args)
    engine = _engine(args)
    return run_chat(ChatSession(engine, params, thinking=not args.no_think, system=args.system), sys.stdin, sys.stdout)


def cmd_generate(args: argparse.Namespace) -> int:
    from nanoseek.infer.batch import generate_file, read_requests

    requests = read_requests(args.input, _sampling(args))  # bad input is found before the model loads
    engine = _engine(args)
    n = generate_file(engine, requests, args.output, args.input, progress=not args.quiet)
    s = engine.stats
    spec = f", MTP acceptance {s.acceptance_rate:.0%}" if s.drafted else ""
    print(f"{n} prompts -> {args.output}: {s.generated_tokens:,} tokens generated, {s.prefill_tokens:,} prompt "
          f"tokens run, {s.cached_tokens:,} from the prefix cache{spec}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from nanoseek.train.rejection import rejection_sample, write_samples

    task = _task(args)
    if task is None:
        return 2
    engine = _engine(args)
    params = _sampling(args)
    try:
        counts = write_samples(rejection_sample(engine, task, args.k, params, args.min_score, args.shortest,
                                                progress=not args.quiet), task.name, args.out)
    except ValueError as e:  # TaskError, or a prompt + --max-tokens past --max-seq-len
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    print(f"{task.name}: kept {counts['kept']:,} of {counts['samples']:,} samples ({counts['prompts_solved']:,} of "
          f"{counts['prompts']:,} prompts solved at least once) -> {args.out} (train on it: nanoseek sft CHECKPOINT "
          f"--chats {args.out})")
    return 0


def _task(args: argparse.Namespace):
    """The task of --task/--task-config/--size/--task-seed, or None after printing why it cannot load."""
    from nanoseek.tasks.task import TaskError, load_task

    try:
        config = json.loads(args.task_config) if args.task_config else None
        return load_task(args.task, size=args.size, seed=args.task_seed, config=config)
    except (TaskError, json.JSONDecodeError) as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return None


def cmd_eval(args: argparse.Namespace) -> int:
    from nanoseek.eval.evaluate import EvalConfig, evaluate, write_results

    task = _task(args)
    if task is None:
        return 2
    try:
        budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else []
        cfg = EvalConfig(k=args.k, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                         template=args.template, budgets=budgets, budget_samples=args.budget_samples,
                         answer_tokens=args.answer_tokens, seed=args.seed)
    except ValueError as e:
        raise _BadArgs(f"--budgets: {e}" if "invalid literal" in str(e) else str(e)) from None
    engine = _engine(args)
    try:
        res = evaluate(engine, task, cfg, progress=not args.quiet)
    except ValueError as e:  # TaskError, or a prompt + --max-tokens past --max-seq-len
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    files = write_results(res, args.out_dir, args.title or f"{Path(args.checkpoint or 'default model').name} "
                                                         f"on {task.name}")
    print((Path(args.out_dir) / "eval.md").read_text())
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from nanoseek.serve.app import create_app
    from nanoseek.serve.http import ServerConfig
    from nanoseek.serve.store import ConversationStore, StoreError

    keys = tuple(k for k in (args.api_key or os.environ.get("NANOSEEK_API_KEY"),) if k)
    try:
        store = ConversationStore(args.db)
    except (StoreError, OSError) as e:
        print(f"nanoseek: error: --db {args.db}: {e}", file=sys.stderr)
        return 2
    engine = _engine(args)
    app = create_app(engine, ServerConfig(model_name=args.model_name, api_keys=keys,
                                          reasoning_alias=args.reasoning_alias, max_queue=args.max_queue,
                                          timeout_s=args.timeout, cors_origins=tuple(args.cors_origin or ()),
                                          notice=getattr(args, "notice", "")), store)
    print(f"nanoseek: serving {args.checkpoint or 'the default model'} as {args.model_name!r}: chat app at "
          f"http://{args.host}:{args.port}/ , API at http://{args.host}:{args.port}/v1 ({engine.max_batch} slots"
          f"{', API key required' if keys else ''}; conversations in {args.db})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _add_engine_flags(p: argparse.ArgumentParser, max_batch: int) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cuda if available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="weights and cache dtype (default bfloat16 on GPU, float32 on CPU)")
    g.add_argument("--max-batch", type=_positive_int, default=max_batch,
                   help=f"sequences decoded together: cache slots (default {max_batch})")
    g.add_argument("--max-seq-len", type=_positive_int,
                   help="prompt + completion tokens per sequence (default: the model's context, at most 4096)")
    g.add_argument("--cache-tokens", type=_positive_int,
                   help="token budget of the KV cache: caps --max-batch at cache-tokens / max-seq-len")
    g.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=None,
                   help="draft tokens with the MTP module and verify them in one forward (default: on when "
                        "the checkpoint has MTP layers and --max-batch <= 16, where it is faster); the output "
                        "is unchanged either way")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step at small batch (about 2x faster at batch 1 on CPU; each "
                        "batch size compiles once, for 10-30 s, on its first use); speculation then defaults off")
    g.add_argument("--prefix-cache-dir", metavar="DIR",
                   help="also keep the prompt-prefix KV cache on disk here, across runs (default: memory only)")


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="gym:NAME (a reasoning-gym dataset), FILE.jsonl (GSM8K / MATH / "
                   "prompt+answer lines) or FILE.py (prompts() and score(completion, reference))")
    p.add_argument("--task-config", help="reasoning-gym options as JSON, e.g. '{\"min_terms\": 2}'")
    p.add_argument("--size", type=_positive_int, default=200, help="prompts (default 200; a file: its first N)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of reasoning-gym's prompts (default 0)")


def _add_sampling_flags(p: argparse.ArgumentParser, temperature: float, top_p: float, max_tokens: int | None) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature:g})")
    g.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p:g})")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    g.add_argument("--max-tokens", type=_positive_int, default=max_tokens,
                   help="tokens per completion, reasoning included (default: "
                        f"{max_tokens or 'up to --max-seq-len'})")
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text; repeatable")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="in [-2, 2] (default 0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="in [-2, 2] (default 0)")


# ---- parser ----

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanoseek",
        description="nanoseek: DeepSeek-V3 / R1 end to end in readable PyTorch.",
        epilog="start here:\n  nanoseek chat              talk to the model nanoseek ships (its reasoning shown)\n"
               "  nanoseek serve             the same as an OpenAI/DeepSeek-compatible API and a web chat app\n"
               "  nanoseek pipeline          reproduce how that model was made, with a report\n"
               "`nanoseek COMMAND --help` explains each command.",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=30),
    )
    parser.add_argument("--version", action="version", version=f"nanoseek {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info", help="parameters, FLOPs and KV-cache size of a model config (no model is built)",
        description="Count a model from its config alone: total / active / MTP parameters, training and "
                    "forward FLOPs per token, and KV-cache bytes per token for MLA's latent cache against "
                    "naive per-head K/V, MHA and GQA. Instant even for the 671B deepseek-v3 preset.")
    info.add_argument("spec", metavar="SPEC",
                      help=f"a preset name ({', '.join(PRESETS)}), a config.json path or a checkpoint "
                           "directory")
    info.add_argument("--json", action="store_true", help="print the figures as JSON (exact integers)")
    info.add_argument("--seq-len", type=_positive_int, default=4096,
                      help="context length for the attention FLOPs (default 4096)")
    info.add_argument("--dtype-bytes", type=_positive_int, default=2,
                      help="bytes per cached value (default 2: bf16)")
    info.add_argument("--gqa-groups", type=_positive_int, default=8,
                      help="KV groups of the GQA comparison (default 8)")
    info.set_defaults(handler=cmd_info)

    tok = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer (DeepSeek's special tokens, R1 chat "
                                           "template)").add_subparsers(dest="action", metavar="ACTION", required=True)
    tt = tok.add_parser("train", help="train a tokenizer on a corpus",
                        description="Byte-level BPE with the `tokenizers` library; writes tokenizer.json and "
                                    "tokenizer_config.json (with the chat template) that transformers loads.")
    _add_corpus_flags(tt)
    tt.add_argument("--vocab-size", type=_positive_int, required=True, help="vocabulary size, control tokens included")
    tt.add_argument("--min-frequency", type=_positive_int, default=2, help="merge pairs seen at least this often")
    tt.add_argument("--out", required=True, help="output directory")
    tt.set_defaults(handler=cmd_tokenizer_train)

    data = sub.add_parser("data", help="prepare pretraining data; render reasoning-gym corpora").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    prep = data.add_parser("prepare", help="tokenize a corpus into train.bin / val.bin for `nanoseek train`",
                           description="Stream a corpus, tokenize it, append EOS to every document and write flat "
                                       "token files, split into train and validation by a seeded hash of each "
                                       "document. Written atomically.")
    _add_corpus_flags(prep)
    prep.add_argument("--tokenizer", required=True, help="tokenizer directory (nanoseek tokenizer train)")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    prep.add_argument("--chat", action="store_true",
                      help="SFT data: chat JSONL with `messages`; also writes train.mask / val.mask so that only the "
                           "assistant's turns carry a loss (what `nanoseek sft` does for you)")
    prep.set_defaults(handler=cmd_data_prepare)
    gym = data.add_parser("gym", help="render reasoning-gym tasks as chat documents with worked <think> traces",
                          description="Write JSONL rows with `text` (the rendered conversation: a pretraining "
                                      "document) and `messages` (user + assistant with reasoning_content: SFT data). "
                                      "Traces are derived where the task allows (arithmetic, products, gcd, "
                                      "countdown, sorting); otherwise the think block is empty.")
    gym.add_argument("names", nargs="+", metavar="TASK", help="reasoning-gym dataset names, e.g. basic_arithmetic")
    gym.add_argument("--size", type=_positive_int, default=1000, help="examples per task (default 1000)")
    gym.add_argument("--seed", type=int, default=0, help="generator seed (task i uses seed + i)")
    gym.add_argument("--config", help='dataset options as JSON, e.g. \'{"min_terms": 2, "max_terms": 3}\'')
    gym.add_argument("--out", required=True, help="output .jsonl file")
    gym.set_defaults(handler=cmd_data_gym)

    train = sub.add_parser(
        "train", help="pretrain a model: one CPU process, or DDP / FSDP2 under torchrun",
        description="Pretrain as V3 was: AdamW (0.9, 0.95, wd 0.1 on matrices), warmup then cosine / constant / "
                    "WSD, clip 1.0, the aux-loss-free bias update, the sequence-wise balance loss, MTP. Settings "
                    "come from --config (TOML or YAML, keys = the flags below with underscores), then the flags. "
                    "Run it under `torchrun --nproc_per_node N` for data parallelism (add --fsdp to shard).",
        epilog="example: nanoseek train --model tiny --data data/ --tokenizer tok/ --max-steps 200\n"
               "         torchrun --nproc_per_node 8 -m nanoseek train --config run.toml --fsdp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="a TOML or YAML file of training settings")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    _add_train_flags(train)
    train.set_defaults(handler=cmd_train)

    sample = sub.add_parser(
        "sample", help="rejection sampling: k samples per prompt, keep the correct ones as SFT chats",
        description="R1's rejection sampling. For every prompt of a task, sample k completions through the "
                    "engine, score each with the task, and keep those scoring at least --min-score that ended "
                    "on their own (not cut off) — all of them, or only the shortest with --shortest. Written as "
                    "chat JSONL with the reasoning in reasoning_content, for `nanoseek sft`. Tasks: gym:NAME (a "
                    "reasoning-gym dataset), FILE.jsonl (GSM8K / MATH / prompt+answer lines) or FILE.py (a "
                    "prompts() generator and a score(completion, reference) -> [0, 1] function).",
        epilog="example: nanoseek sample runs/r1/checkpoints/step_000200 --task gym:basic_arithmetic --k 8 "
               "--out samples.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="the model to sample from (default: the model nanoseek ships)")
    _add_task_flags(sample)
    sample.add_argument("--k", type=_positive_int, default=8, help="samples per prompt (default 8)")
    sample.add_argument("--min-score", type=float, default=1.0, help="keep samples scoring at least this (default 1)")
    sample.add_argument("--shortest", action="store_true", help="keep only the shortest kept sample per prompt")
    sample.add_argument("--out", required=True, help="output chat JSONL")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_flags(sample, max_batch=64)
    _add_sampling_flags(sample, temperature=0.6, top_p=0.95, max_tokens=256)
    sample.set_defaults(handler=cmd_sample)

    ev = sub.add_parser(
        "eval", help="pass@1 over k samples, cons@k, pass@k, and accuracy against k and the thinking budget",
        description="R1's evaluation: k samples per prompt (temperature 0.6, top-p 0.95 by default) give "
                    "pass@1 (their mean score), cons@k (the majority answer; answers equal as math vote "
                    "together) and pass@k (the unbiased estimator), also for every power of two below k. "
                    "--budgets adds test-time scaling by budget forcing: the reasoning is cut at B tokens, "
                    "</think> is appended, and the model answers. Writes eval.json, eval.md, samples.jsonl, "
                    "accuracy_vs_k.png and accuracy_vs_budget.png to --out-dir and prints the Markdown.",
        epilog="example: nanoseek eval runs/grpo/checkpoints/step_000050 --task gym:basic_arithmetic --task-seed 7 "
               "--k 8 --budgets 8,16,32,64\n"
               "         nanoseek eval CKPT --task gsm8k_test.jsonl --size 500 --max-tokens 1024",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                    help="the model to evaluate (default: the model nanoseek ships)")
    _add_task_flags(ev)
    ev.add_argument("--k", type=_positive_int, default=8, help="samples per prompt (default 8)")
    ev.add_argument("--template", choices=("chat", "r1-zero"), default="chat",
                    help="the prompt: R1's chat turn, or R1-Zero's plain-text template (default chat)")
    ev.add_argument("--budgets", metavar="B1,B2,...", help="thinking budgets in tokens for the test-time scaling curve")
    ev.add_argument("--budget-samples", type=_positive_int, default=1, help="samples per prompt at each budget "
                    "(default 1)")
    ev.add_argument("--answer-tokens", type=_positive_int, default=32,
                    help="tokens the model may answer in after a forced </think> (default 32)")
    ev.add_argument("--out-dir", default="runs/eval", help="where the results go (default runs/eval)")
    ev.add_argument("--title", help="the results' heading (default: checkpoint and task)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_flags(ev, max_batch=64)
    g = ev.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.6, help="(default 0.6, as R1 evaluates)")
    g.add_argument("--top-p", type=float, default=0.95, help="(default 0.95)")
    g.add_argument("--max-tokens", type=_positive_int, default=256, help="per completion, reasoning included "
                   "(default 256)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.set_defaults(handler=cmd_eval)

    sft = sub.add_parser(
        "sft", help="supervised fine-tuning on chats (with reasoning_content), loss on the assistant's turns",
        description="Fine-tune a checkpoint on chat JSONL ({\"messages\": [...]} per line; assistant turns may "
                    "carry reasoning_content). Each assistant turn is trained after its context rendered exactly "
                    "as the engine renders it, with the loss on the turn's reasoning, </think>, answer and EOS "
                    "only. Conversations are packed into rows. The data is prepared once into OUT_DIR/data; the "
                    "training loop is `nanoseek train`'s (resume, torchrun, telemetry), and so are the flags.",
        epilog="example: nanoseek sft runs/base/checkpoints/step_000300 --chats sft.jsonl --max-steps 200\n"
               "         nanoseek data gym basic_arithmetic --size 2000 --out sft.jsonl  (makes such chats)\n"
               "distill: nanoseek sample TEACHER --task gym:basic_arithmetic --k 4 --out t.jsonl\n"
               "         nanoseek sft TEACHER --chats t.jsonl --student tiny --out-dir runs/student",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sft.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint to fine-tune (model + tokenizer)")
    sft.add_argument("--chats", required=True, metavar="PATTERN", help="chat JSONL file(s), e.g. 'sft/*.jsonl'")
    sft.add_argument("--val-fraction", type=float, default=0.05, help="share of conversations held out (default 0.05)")
    sft.add_argument("--student", metavar="SPEC",
                     help="distillation: train a NEW model of this shape (a preset such as tiny, or a config.json) "
                          "from scratch on the chats, with CHECKPOINT's tokenizer; CHECKPOINT is then the teacher "
                          "whose `nanoseek sample` output the chats are (R1's distillation is SFT on them)")
    sft.add_argument("--config", help="a TOML or YAML file of training settings")
    sft.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    _add_train_flags(sft)
    sft.set_defaults(handler=cmd_sft)

    distill = sub.add_parser(
        "distill", help="distillation: a smaller student trained (SFT) on a teacher's correct samples",
        description="R1's distillation in one command: rejection-sample the teacher on a task (k samples per "
                    "prompt, the ones the task scores correct kept, optionally only the shortest) into "
                    "OUT_DIR/teacher_samples.jsonl, then train a NEW model of the --student shape on them with the "
                    "teacher's tokenizer (`nanoseek sft --student`: loss on the assistant's reasoning and answer). "
                    "The teacher may be any nanoseek checkpoint; the student a preset (dense or MoE) or a "
                    "config.json. --resume reuses the samples and continues the training.",
        epilog="example: nanoseek distill runs/r1/checkpoints/step_000100 --task gym:basic_arithmetic --k 4 "
               "--student tiny --max-steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("checkpoint", metavar="TEACHER", help="the teacher checkpoint (model + tokenizer)")
    _add_task_flags(distill)
    distill.add_argument("--k", type=_positive_int, default=4, help="teacher samples per prompt (default 4)")
    distill.add_argument("--shortest", action="store_true", help="keep only the shortest correct sample per prompt")
    distill.add_argument("--temperature", type=float, default=0.6, help="teacher sampling (default 0.6)")
    distill.add_argument("--top-p", type=float, default=0.95, help="teacher nucleus sampling (default 0.95)")
    distill.add_argument("--max-tokens", type=_positive_int, default=256, help="per teacher sample (default 256)")
    distill.add_argument("--student", required=True, metavar="SPEC",
                         help="the student's shape: a preset (e.g. tiny) or a config.json; trained from scratch")
    distill.add_argument("--val-fraction", type=float, default=0.05, help="share of samples held out (default 0.05)")
    distill.add_argument("--config", help="a TOML or YAML file of training settings")
    distill.add_argument("--resume", action="store_true", help="reuse the samples and continue from the latest "
                                                               "checkpoint in --out-dir")
    _add_train_flags(distill)
    distill.set_defaults(handler=cmd_distill)

    pipe = sub.add_parser(
        "pipeline", help="the R1 recipe end to end at toy scale, and its report",
        description="Corpus and tokenizer -> pretraining -> R1-Zero (GRPO from the base) -> R1 (cold-start SFT, "
                    "then GRPO) -> rejection sampling -> distillation into a smaller dense student, against the "
                    "same student trained by GRPO for equal compute -> every model evaluated on held-out prompts "
                    "(pass@1, cons@k, pass@k; the best also against the thinking budget) -> OUT_DIR/report.md "
                    "with tables, plots and the cost of each stage. Stages are kept in OUT_DIR/<stage>/; rerun "
                    "the same command to resume after an interruption.",
        epilog="example: nanoseek pipeline --out-dir runs/pipeline   (about 10 minutes on 2 CPU cores)\n"
               "         nanoseek pipeline --quick                    (every stage, a few steps each: a smoke test)\n"
               "         nanoseek pipeline --preset gpu-100m          (one GPU: a 293M-parameter MoE teacher, a "
               "harder task)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pipe.add_argument("--preset", choices=("default", "quick", "gpu-100m"), default="default",
                      help="sizes and steps (gpu-100m: for one H100/H200, about 10 minutes by estimate)")
    pipe.add_argument("--quick", action="store_true", help="the quick preset: minutes, numbers that mean nothing")
    pipe.add_argument("--out-dir", default="runs/pipeline", help="where stages and the report go")
    pipe.add_argument("--export", metavar="DIR", help="also copy the best model there with the report as its "
                                                      "model card (how the model nanoseek ships was made)")
    pipe.add_argument("--quiet", action="store_true", help="no progress bars")
    pipe.set_defaults(handler=cmd_pipeline)

    grpo = sub.add_parser(
        "grpo", help="reinforcement learning with rule-checked rewards (GRPO: R1-Zero from a base, R1 after SFT)",
        description="GRPO (DeepSeekMath, R1): each step samples --group-size completions of --prompts-per-step "
                    "prompts through the engine, scores them (the task's accuracy + format, optionally language "
                    "consistency and an overlong penalty), normalises rewards within each group into advantages, "
                    "and takes --mu clipped-ratio policy-gradient steps, with a k3 KL to a frozen reference when "
                    "--beta > 0. Logs each reward part, accuracy, response lengths, KL, clip fractions, entropy "
                    "and throughput to OUT_DIR/metrics.jsonl, and the held-out accuracy every --eval-every steps. "
                    "Checkpoints are HF directories; --resume continues exactly; torchrun runs data-parallel.",
        epilog="example (R1-Zero at toy scale, from a base model, with the R1-Zero text template):\n"
               "  nanoseek grpo runs/base/checkpoints/step_000300 --task gym:basic_arithmetic --template r1-zero\n"
               "a task of your own: --task mytask.py, a file with\n"
               "  def prompts(): yield {\"prompt\": \"What is 2 + 2?\", \"reference\": \"4\"}\n"
               "  def score(completion, reference): return float(completion.strip().endswith(reference))",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    grpo.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint to train (model + tokenizer)")
    grpo.add_argument("--config", help="a TOML or YAML file of GRPO settings (the flags below override it)")
    grpo.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    from nanoseek.train.grpo import GRPOConfig

    _add_train_flags(grpo, GRPOConfig, skip=("model",))
    grpo.set_defaults(handler=cmd_grpo)

    chat = sub.add_parser(
        "chat", help="talk to a model in the terminal: its reasoning streams dimmed, then its answer",
        description="A multi-turn terminal chat. The prompt is rendered with the R1 template, so the model starts "
                    "inside its <think> block; its reasoning is shown dimmed as it streams, then the answer. "
                    "Earlier turns go back without their reasoning. Commands: /think on|off, /temp T, /reset, "
                    "/save FILE, /help, /quit. Ctrl-C stops a reply.",
        epilog="example: nanoseek chat runs/tiny/checkpoints/step_000200 --temperature 0.6")
    chat.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                      help="a checkpoint directory (model + tokenizer); default: the model nanoseek ships")
    chat.add_argument("--no-think", action="store_true", help="start with thinking off (/think on turns it back on)")
    chat.add_argument("--system", help="a system prompt (R1's advice is none)")
    _add_sampling_flags(chat, temperature=0.6, top_p=0.95, max_tokens=None)
    _add_engine_flags(chat, max_batch=1)
    chat.set_defaults(handler=cmd_chat)

    gen = sub.add_parser(
        "generate", help="completions for a JSONL file of prompts, with a progress bar",
        description="Batch generation with continuous batching. Each input line has one of prompt (raw text), "
                    "messages (a chat; \"thinking\": false closes the think block) or prompt_token_ids, and may "
                    "override any sampling setting (max_tokens, temperature, n, seed, stop, ...). Output lines, "
                    "in input order: completions (text, reasoning_content, content, finish_reason, token_ids) "
                    "and usage. A killed run resumes from OUTPUT.partial when run again.",
        epilog="example: nanoseek generate ckpt/ --input prompts.jsonl --output out.jsonl -n 4 --temperature 0.6")
    gen.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory (model + tokenizer)")
    gen.add_argument("--input", required=True, help="prompts, one JSON object per line")
    gen.add_argument("--output", required=True, help="where to write the completions (JSONL)")
    gen.add_argument("-n", type=_positive_int, default=1, help="samples per prompt (default 1)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_sampling_flags(gen, temperature=0.6, top_p=0.95, max_tokens=256)
    _add_engine_flags(gen, max_batch=32)
    gen.set_defaults(handler=cmd_generate)

    serve = sub.add_parser(
        "serve", help="a chat app in the browser and a DeepSeek/OpenAI-compatible API, reasoning included",
        description="A chat app at / (reasoning streamed in a collapsible panel, conversations kept in SQLite), "
                    "and the API: POST /v1/chat/completions (streaming or not, reasoning_content beside content, "
                    "n, stop, seed, logprobs, a thinking switch, usage with prompt-cache hits), POST "
                    "/v1/completions, GET /v1/models, GET /health, GET /metrics. One engine batches all "
                    "requests. Binds 127.0.0.1 unless --host says otherwise.",
        epilog="example: nanoseek serve ckpt/ --port 8000, then open http://127.0.0.1:8000/ or point any OpenAI "
               "client at base_url http://127.0.0.1:8000/v1")
    serve.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                       help="a checkpoint directory (model + tokenizer); default: the model nanoseek ships")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--model-name", default="nanoseek", help="the model id clients ask for (default nanoseek)")
    serve.add_argument("--api-key", help="require this Bearer key on /v1 routes (or set NANOSEEK_API_KEY)")
    serve.add_argument("--max-queue", type=int, default=256,
                       help="requests allowed to wait for a slot; more get 429 with Retry-After (default 256)")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds a request may run (default 600)")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                       help="allow browser calls from this origin, e.g. http://localhost:3000; repeatable "
                            "(default: none)")
    serve.add_argument("--db", default=str(data_dir() / "conversations.db"), metavar="PATH",
                       help="SQLite file of the chat app's conversations (default: %(default)s)")
    serve.add_argument("--reasoning-alias", action="store_true",
                       help="also send reasoning_content as `reasoning`, for clients that read that name")
    _add_engine_flags(serve, max_batch=16)
    serve.set_defaults(handler=cmd_serve)

    cost = sub.add_parser(
        "cost", help="GPU-hours and dollars to train a model, or of a finished run",
        description="GPU-hours = FLOPs per token x tokens / (GPU peak x MFU) / 3600, and dollars at a price per "
                    "GPU-hour; every assumption is printed. `nanoseek cost deepseek-v3 --tokens 14.8T --gpu H800 "
                    "--mfu 0.391` gives the V3 report's 2,664K pre-training H800-hours. With --run, a finished "
                    "training run's device-hours, throughput and dollars from its own metrics.jsonl.")
    cost.add_argument("spec", metavar="SPEC", nargs="?",
                      help=f"a preset name ({', '.join(PRESETS)}), a config.json path or a checkpoint directory")
    cost.add_argument("--run", metavar="RUN_DIR", help="a finished training run (metrics.jsonl, train_config.json)")
    cost.add_argument("--tokens", type=_count, help="training tokens: 14.8T, 500B, 2M, 1e9")
    cost.add_argument("--gpu", default=None,
                      help="GPU type, e.g. H800, H100, H100 PCIe, A100, L4, RTX 4090 (default H100; with --run, "
                           "also project the run's token count onto this GPU at the run's MFU)")
    cost.add_argument("--mfu", type=_fraction,
                      help="model FLOPs utilisation in (0, 1] (default 0.4, the V3 report's implied 0.39 rounded)")
    cost.add_argument("--usd-per-hour", type=_price, default=2.0,
                      help="dollars per GPU-hour (default 2, as in the V3 report)")
    cost.add_argument("--seq-len", type=_positive_int, default=4096, help="training context length (default 4096)")
    cost.add_argument("--gpus", type=_positive_int, default=1, help="GPUs in parallel, for the wall-clock days")
    cost.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp8", "tf32", "fp32"),
                      help="which peak MFU is measured against (default bf16, the usual convention even for "
                           "V3's FP8 training)")
    cost.add_argument("--mtp", action="store_true", help="count the MTP modules' FLOPs too")
    cost.add_argument("--json", action="store_true", help="print the figures as JSON")
    cost.set_defaults(handler=cmd_cost)
    return parser


def _add_corpus_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="GLOB",
                   help="corpus files: .txt, .jsonl, .parquet, optionally .gz; ** recurses (quote the glob)")
    p.add_argument("--field", default="text", help="JSONL field or Parquet column holding the text (default text)")
    p.add_argument("--txt-mode", choices=("file", "blocks"), default="file",
                   help=".txt: one document per file, or per blank-line-separated block (default file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nanoseek` and `python -m nanoseek`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (UserError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `nanoseek info ... | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
