"""The `nanoseek` command. Each subcommand is a thin handler; the work lives in the package."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from nanoseek import __version__
from nanoseek.model.config import PRESETS, ConfigError, ModelConfig, resolve_config
from nanoseek.model.counting import (
    KVCacheSize,
    ParamCount,
    count_params,
    flops_per_token,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
)

# Commands later issues add; listed in --help so a reader sees where the tool is going.
PLANNED = {
    "train": "pretrain or fine-tune (SFT, GRPO) a model, one CPU to a torchrun cluster",
    "tokenizer": "train the byte-level BPE tokenizer and its chat template",
    "chat": "talk to a model in the terminal, reasoning shown",
    "generate": "sample completions from a checkpoint",
    "serve": "DeepSeek/OpenAI-compatible API server with reasoning_content, and the web chat app",
    "eval": "pass@1 / cons@k / pass@k on GSM8K, MATH-500, AIME",
    "cost": "GPU-hours and dollars of a training or serving run",
    "pipeline": "the whole R1 recipe end to end: pretrain, SFT, GRPO, distil, evaluate",
}


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


# ---- parser ----

def build_parser() -> argparse.ArgumentParser:
    planned = "\n".join(f"  {name:<10} {what}" for name, what in PLANNED.items())
    parser = argparse.ArgumentParser(
        prog="nanoseek",
        description="nanoseek: DeepSeek-V3 / R1 end to end in readable PyTorch.",
        epilog=f"planned commands (not yet available):\n{planned}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nanoseek` and `python -m nanoseek`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except BrokenPipeError:  # `nanoseek info ... | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
