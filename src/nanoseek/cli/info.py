"""`nanoseek info` (parameters, FLOPs and KV cache of a config) and `nanoseek cost` (GPU-hours and
dollars of a training run, planned or finished): arithmetic on a model config, no model built."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from nanoseek.cli.common import BadArgs, count, fraction, human, positive_int, price
from nanoseek.model.config import PRESETS, ModelConfig, get_preset, resolve_config
from nanoseek.model.counting import (
    count_params,
    flops_per_token,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_info_parser(sub)
    add_cost_parser(sub)


# ---- info ----

def add_info_parser(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser(
        "info", help="parameters, FLOPs and KV-cache size of a model config (no model is built)",
        description="Count a model from its config alone: total / active / MTP parameters, "
                    "training and forward FLOPs per token, and KV-cache bytes per token for MLA's "
                    "latent cache against naive per-head K/V, MHA and GQA. Instant even for the "
                    "671B deepseek-v3 preset.")
    info.add_argument("spec", metavar="SPEC",
                      help=f"a preset name ({', '.join(PRESETS)}), a config.json path or a "
                           "checkpoint directory")
    info.add_argument("--json", action="store_true",
                      help="print the figures as JSON (exact integers)")
    info.add_argument("--seq-len", type=positive_int, default=4096,
                      help="context length for the attention FLOPs (default 4096)")
    info.add_argument("--dtype-bytes", type=positive_int, default=2,
                      help="bytes per cached value (default 2: bf16)")
    info.add_argument("--gqa-groups", type=positive_int, default=8,
                      help="KV groups of the GQA comparison (default 8)")
    info.set_defaults(handler=cmd_info)


def _config(spec: str) -> ModelConfig:
    try:
        return resolve_config(spec)  # a ConfigError is a UserError already
    except (OSError, UnicodeDecodeError) as e:  # unreadable: ModelConfig.load lets these through
        raise BadArgs(f"{spec}: {e}") from None


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _config(args.spec)
    figures = _info_figures(args.spec, cfg, args.seq_len, args.dtype_bytes, args.gqa_groups)
    print(json.dumps(figures, indent=2) if args.json else _info_table(figures))
    return 0


def _bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:g} B"


def _info_figures(spec: str, cfg: ModelConfig, seq_len: int, dtype_bytes: int,
                  gqa_groups: int) -> dict[str, Any]:
    p = count_params(cfg)
    kv = kv_cache_bytes_per_token(cfg, dtype_bytes=dtype_bytes, gqa_groups=gqa_groups)
    config_keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "q_lora_rank",
                   "kv_lora_rank", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
                   "first_k_dense_replace", "num_nextn_predict_layers", "vocab_size",
                   "tie_word_embeddings")
    param_keys = ("total", "active", "active_non_embedding", "mtp", "total_with_mtp", "embedding",
                  "active_matmul")
    kv_keys = ("mla_latent", "naive", "mha", "gqa", "gqa_groups", "naive_over_mla", "mha_over_mla",
               "gqa_over_mla")
    if not cfg.is_mla:  # a dense student: what V3's latent would hold at this dtype, beside it
        v3 = get_preset("deepseek-v3")
        kv_extra = {"v3_mla_latent": kv_cache_bytes_per_token(v3, dtype_bytes).mla_latent,
                    "v3_layers": v3.num_hidden_layers}
    else:
        kv_extra = {}
    return {
        "spec": spec,
        "config": {k: getattr(cfg, k) for k in config_keys},
        "params": {**{k: getattr(p, k) for k in param_keys},
                   "breakdown": dict(p.breakdown), "buffers": p.buffers},
        "flops_per_token": {
            "seq_len": seq_len,
            "training": flops_per_token(cfg, seq_len),
            "forward": forward_flops_per_token(cfg, seq_len),
            "training_with_mtp": flops_per_token(cfg, seq_len, include_mtp=True),
        },
        "kv_cache_bytes_per_token": {"dtype_bytes": dtype_bytes,
                                     **{k: getattr(kv, k) for k in kv_keys}, **kv_extra},
    }


def _info_rows(f: dict[str, Any]) -> list[tuple[str, ...]]:
    """(title,) for a section, (label, human, exact, note) for a figure."""
    c, p, fl, kv = f["config"], f["params"], f["flops_per_token"], f["kv_cache_bytes_per_token"]
    rows: list[tuple[str, ...]] = []

    def row(label: str, short: str, exact: int | str, note: str = "") -> None:
        rows.append((label, short, f"{exact:,}" if isinstance(exact, int) else exact, note))

    rows.append(("parameters",))
    row("total (main model)", human(p["total"]), p["total"])
    row("active per token", human(p["active"]), p["active"],
        f"{human(p['active_non_embedding'])} without the embedding")
    row("MTP modules", human(p["mtp"]), p["mtp"],
        f"{c['num_nextn_predict_layers']} module(s); embedding and head shared")
    rows.append(("total by component",))
    for name, n in p["breakdown"].items():
        row(name, human(n), n, f"{100 * n / p['total']:.1f}%")
    rows.append((f"FLOPs per token (seq_len {fl['seq_len']:,})",))
    for label, key, note in (("training (fwd+bwd)", "training",
                              "6*N_active_matmul + causal attention"),
                             ("forward only", "forward", ""),
                             ("training with MTP", "training_with_mtp", "")):
        row(label, human(fl[key], billion="G") + "FLOP", fl[key], note)
    rows.append((f"KV cache per token ({kv['dtype_bytes']} bytes/value, "
                 f"{c['num_hidden_layers']} layers)",))
    if c["model_type"] != "deepseek_v3":  # a dense student: its own grouped K/V is the cache
        row(f"GQA K/V, {c['num_key_value_heads']} KV heads (cached)", _bytes(kv["mla_latent"]),
            kv["mla_latent"], "1.0x")
        row("MHA, same width", _bytes(kv["mha"]), kv["mha"],
            f"{kv['mha'] / kv['mla_latent']:.1f}x")
        row(f"DeepSeek-V3's MLA latent ({kv['v3_layers']} layers)", _bytes(kv["v3_mla_latent"]),
            kv["v3_mla_latent"], f"{kv['v3_mla_latent'] / kv['mla_latent']:.1f}x")
        return rows
    row("MLA latent (cached)", _bytes(kv["mla_latent"]), kv["mla_latent"], "1.0x")
    for label, key in (("naive per-head K/V", "naive"), ("MHA, same width", "mha"),
                       (f"GQA, {kv['gqa_groups']} KV groups", "gqa")):
        row(label, _bytes(kv[key]), kv[key], f"{kv[f'{key}_over_mla']:.1f}x MLA")
    return rows


def _info_table(f: dict[str, Any]) -> str:
    c = f["config"]
    rows = _info_rows(f)
    w = [max(len(r[i]) for r in rows if len(r) > 1) for i in range(3)]
    experts = (f", {c['n_routed_experts']} routed experts (top-{c['num_experts_per_tok']}) "
               f"+ {c['n_shared_experts']} shared" if c["n_routed_experts"] else "")
    if c["model_type"] != "deepseek_v3":
        experts = f" / {c['num_key_value_heads']} KV heads of {c['head_dim']}, {c['model_type']}"
    lines = [f"{f['spec']}: {c['num_hidden_layers']} layers, d={c['hidden_size']}, "
             f"{c['num_attention_heads']} heads{experts}"]
    for r in rows:
        if len(r) == 1:
            lines += ["", r[0]]
        else:
            label, short, exact, note = r
            lines.append(f"  {label:<{w[0]}}  {short:>{w[1]}}  {exact:>{w[2]}}  {note}".rstrip())
    return "\n".join(lines)


# ---- cost ----

def add_cost_parser(sub: argparse._SubParsersAction) -> None:
    from nanoseek.eval.cost import CPU_PRICE_NOTE, CPU_USD_PER_HOUR, GPU_USD_PER_HOUR

    cost = sub.add_parser(
        "cost", help="GPU-hours and dollars to train a model, or of a finished run",
        description="GPU-hours = FLOPs per token x tokens / (GPU peak x MFU) / 3600, and dollars "
                    "at a price per GPU-hour; every assumption is printed. `nanoseek cost "
                    "deepseek-v3 --tokens 14.8T --gpu H800 --mfu 0.391` gives the V3 report's "
                    "2,664K pre-training H800-hours. With --run, a finished training run's "
                    "device-hours, throughput and dollars from its own metrics.jsonl: a GPU run "
                    "at the price per GPU-hour, a CPU run at a price per machine-hour.")
    cost.add_argument("spec", metavar="SPEC", nargs="?",
                      help=f"a preset name ({', '.join(PRESETS)}), a config.json path or a "
                           "checkpoint directory")
    cost.add_argument("--run", metavar="RUN_DIR",
                      help="a finished training run (metrics.jsonl, train_config.json)")
    cost.add_argument("--tokens", type=count, help="training tokens: 14.8T, 500B, 2M, 1e9")
    cost.add_argument("--gpu", default=None,
                      help="GPU type, e.g. H800, H100, H100 PCIe, A100, L4, RTX 4090 (default "
                           "H100; with --run, also project the run's token count onto this GPU "
                           "at the run's MFU)")
    cost.add_argument("--mfu", type=fraction,
                      help="model FLOPs utilisation in (0, 1] (default 0.4, the V3 report's "
                           "implied 0.39 rounded)")
    cost.add_argument("--usd-per-hour", type=price, default=None,
                      help=f"dollars per GPU-hour (default {GPU_USD_PER_HOUR:g}, as in the V3 "
                           "report); for a --run on the CPU, dollars per machine-hour (default "
                           f"{CPU_USD_PER_HOUR:g}: {CPU_PRICE_NOTE})")
    cost.add_argument("--seq-len", type=positive_int, default=4096,
                      help="training context length (default 4096)")
    cost.add_argument("--gpus", type=positive_int, default=1,
                      help="GPUs in parallel, for the wall-clock days")
    cost.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp8", "tf32", "fp32"),
                      help="which peak MFU is measured against (default bf16, the usual "
                           "convention even for V3's FP8 training)")
    cost.add_argument("--mtp", action="store_true", help="count the MTP modules' FLOPs too")
    cost.add_argument("--json", action="store_true", help="print the figures as JSON")
    cost.set_defaults(handler=cmd_cost)


def cmd_cost(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.run is None):
        raise BadArgs("give a model SPEC (with --tokens) or --run RUN_DIR"
                      + (", not both" if args.run else ""))
    try:
        print(_run_cost(args) if args.run is not None else _planned_cost(args))
    except (OSError, UnicodeDecodeError) as e:
        raise BadArgs(f"{args.spec or args.run}: {e}") from None
    return 0


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def _duration(hours: float) -> str:
    return f"{hours / 24:,.1f} days" if hours >= 48 else f"{hours:.3g} hours"


def _usd(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:.3g}"


def _cost_lines(c: Any, gpus: int, mfu_note: str = "", gpu_note: str = "") -> list[str]:
    """Assumptions (every number the result rests on) and results of a TrainingCost."""
    mtp = ("counted" if c.include_mtp
           else "not counted (the usual 6ND reproduction; --mtp counts it)")
    attention = human(c.attention_flops_per_token, "G")
    wall = _duration(c.gpu_hours / gpus)
    return [
        "assumptions",
        f"  FLOPs per token  {human(c.flops_per_token, billion='G')}FLOP = 6 x N + attention "
        "(forward + backward)",
        f"                   N = {c.matmul_params:,} active matmul weights (no embedding lookup, "
        "norms)",
        f"                   attention = 3 x L x heads x (d_qk + d_v) x S = {attention}FLOP; "
        f"L = {c.layers} layers, causal (S/2 keys a query)",
        f"  seq len S        {c.seq_len:,}",
        f"  MTP module       {mtp}",
        f"  GPU peak         {c.peak_flops / 1e12:,.1f} TFLOP/s per {c.gpu}, dense {c.dtype} "
        f"(NVIDIA datasheet){gpu_note}",
        f"  MFU              {c.mfu:.3g}{mfu_note}",
        f"  price            ${c.usd_per_gpu_hour:.2f} per GPU-hour",
        "",
        "results",
        f"  tokens           {human(c.tokens)} ({c.tokens:,})",
        f"  total compute    {c.total_flops:.3e} FLOPs",
        f"  GPU-hours        {_hours(c.gpu_hours)} {c.gpu}-hours",
        f"  wall-clock       {wall} on {gpus:,} GPU" + ("s" if gpus > 1 else " (--gpus N)"),
        f"  cost             {_usd(c.usd)}",
    ]


def _run_cost(args: argparse.Namespace) -> str:
    from nanoseek.eval.cost import run_cost

    r = run_cost(args.run, args.usd_per_hour, args.gpu)
    if args.json:
        return json.dumps(asdict(r), indent=2)
    mfu = "not logged (unknown device)" if r.mfu is None else f"{r.mfu:.3g}"
    lines = [f"{r.run_dir}: {r.steps:,} steps, {human(r.tokens)} tokens on {r.device} x "
             f"{r.world_size}", "",
             "assumptions",
             f"  device-hours     elapsed_s of the training steps x world size {r.world_size} "
             "(evaluation and checkpoint writes not timed)",
             f"  price            ${r.usd_per_hour:.4g} per {r.price_unit} ({r.price_note})", "",
             "results",
             f"  elapsed          {r.elapsed_s:,.1f} s",
             f"  device-hours     {_hours(r.device_hours)}",
             f"  throughput       {r.tokens_per_s:,.0f} tokens/s (all devices)",
             f"  MFU              {mfu}",
             f"  cost             {_usd(r.usd)} ({_hours(r.priced_hours)} {r.price_unit}s)"]
    if r.on_gpu is not None:
        lines += ["", f"the same {human(r.tokens)} tokens on {r.on_gpu.gpu} at the run's MFU "
                      f"{r.mfu:.3g}:", "",
                  *(f"  {line}".rstrip() for line in _cost_lines(r.on_gpu, 1))]
    return "\n".join(lines)


def _planned_cost(args: argparse.Namespace) -> str:
    from nanoseek.eval import cost

    if args.tokens is None:
        raise BadArgs("--tokens is required with a model SPEC (e.g. --tokens 14.8T)")
    cfg = resolve_config(args.spec)
    mfu = cost.DEFAULT_MFU if args.mfu is None else args.mfu
    usd = cost.GPU_USD_PER_HOUR if args.usd_per_hour is None else args.usd_per_hour
    c = cost.training_cost(cfg, args.tokens, args.gpu or "H100", mfu, usd, args.seq_len,
                           include_mtp=args.mtp, dtype=args.dtype)
    ref = None
    if args.spec == "deepseek-v3":  # the report's pre-training row, and the MFU it implies here
        v3 = cost.V3_REPORT
        ref = {**v3, "implied_mfu": cost.implied_mfu(cfg, v3["tokens"], v3["gpu_hours"], v3["gpu"],
                                                     args.seq_len, include_mtp=args.mtp,
                                                     dtype=args.dtype)}
    if args.json:
        return json.dumps({"spec": args.spec, **asdict(c),
                           "mfu_source": "given" if args.mfu is not None else "default",
                           "gpus": args.gpus, "days": c.days(args.gpus), "v3_report": ref},
                          indent=2)
    mfu_note = ("  (given)" if args.mfu is not None else
                f"  (assumed: no --mfu given; {cost.DEFAULT_MFU} is the V3 report's implied 0.39, "
                "rounded)")
    gpu_note = "" if args.gpu else "  (assumed: no --gpu given)"
    lines = [f"{args.spec}: training cost of {human(c.tokens)} tokens on {c.gpu}", "",
             *_cost_lines(c, args.gpus, mfu_note, gpu_note)]
    if ref is not None:
        lines += ["", f"V3 report: {ref['gpu_hours'] // 1000:,}K {ref['gpu']}-hours for "
                      f"{human(ref['tokens'])} tokens (pre-training), i.e. MFU "
                      f"{ref['implied_mfu']:.3f} on this formula"]
    return "\n".join(lines)
