"""What training costs: GPU-hours and dollars from a config, a token count, a GPU and an MFU (the
peaks that MFU is measured against live in nanoseek.hardware), and what a finished run cost.

    GPU-hours = flops_per_token(cfg, seq_len) * tokens / (peak FLOP/s * MFU) / 3600

With the deepseek-v3 preset, 14.8T tokens and H800s this reproduces the V3 report's 2,664K
pre-training GPU-hours at MFU 0.391 (main model only, the usual 6*N*D reproduction) or 0.407 (MTP
module counted).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from nanoseek.errors import UserError
from nanoseek.hardware import gpu_name, peak_flops
from nanoseek.model.config import ModelConfig, resolve_config
from nanoseek.model.counting import flops_per_token

DEFAULT_MFU = 0.4  # what `nanoseek cost` assumes when not told: V3's implied 0.39, rounded
# the report's pre-training row
V3_REPORT = {"gpu": "H800", "tokens": 14_800_000_000_000, "gpu_hours": 2_664_000}
# Assumed prices, not bills. A GPU-hour at the $2 that DeepSeek-V3's report assumes for an H800; a
# CPU run at the on-demand price of a 2-vCPU cloud machine (the machine the CPU benchmarks ran on).
GPU_USD_PER_HOUR = 2.0
GPU_PRICE_NOTE = "DeepSeek-V3's assumed H800 rental price"
CPU_USD_PER_HOUR = 0.08925
CPU_PRICE_NOTE = "AWS c7i.large, 2 vCPU, on demand, us-east-1"


# ---- training cost ----

class CostError(UserError):
    """A figure the cost arithmetic refuses (a count, an MFU, a price) or a run it cannot read."""


def parse_count(text: str) -> int:
    """'14.8T' -> 14_800_000_000_000; also K, M, B (or G), plain integers, '1e12' and '1_000'."""
    number = r"([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
    m = re.fullmatch(rf"\s*{number}\s*([kKmMbBgGtT]?)\s*", text)
    try:
        scale = 1000 ** " KMBT".index(m.group(2).upper().replace("G", "B") or " ")
        value = Decimal(m.group(1).replace("_", "")) * scale
    except (AttributeError, InvalidOperation):
        raise CostError(f"{text!r} is not a count (e.g. 14.8T, 500B, 2M, 1e9)") from None
    if value < 1 or value != value.to_integral_value():
        raise CostError(f"{text!r} is not a whole count >= 1")
    return int(value)


def _check_mfu(x: float) -> float:
    if not 0 < x <= 1:
        raise CostError(f"MFU must be in (0, 1] (got {x})")
    return x


@dataclass(frozen=True)
class TrainingCost:
    """The answer and every assumption behind it, so a printed figure can be re-derived by hand."""

    gpu: str
    dtype: str
    peak_flops: float  # per GPU, dense
    mfu: float
    usd_per_gpu_hour: float
    seq_len: int
    include_mtp: bool
    tokens: int
    flops_per_token: int  # = 6 * matmul_params + attention_flops_per_token
    matmul_params: int  # N: weights a token multiplies by (the MTP module's too when counted)
    attention_flops_per_token: int  # 3 * layers * heads * (qk_head_dim + v_head_dim) * seq_len
    layers: int  # decoder layers in the attention term (+ MTP layers when counted)
    total_flops: float
    gpu_hours: float
    usd: float

    def days(self, gpus: int = 1) -> float:
        return self.gpu_hours / gpus / 24


def training_cost(cfg: ModelConfig, tokens: int, gpu: str, mfu: float,
                  usd_per_gpu_hour: float = GPU_USD_PER_HOUR, seq_len: int = 4096,
                  include_mtp: bool = False, dtype: str = "bf16") -> TrainingCost:
    """GPU-hours and dollars to train cfg on `tokens` tokens. include_mtp defaults to False: the V3
    figure is usually reproduced from the main model's 6*N*D (MTP adds ~4% FLOPs for V3; the
    training loop's own MFU counts them, so pass include_mtp=True to convert an MFU nanoseek
    measured)."""
    if tokens < 1:
        raise CostError(f"tokens must be >= 1 (got {tokens})")
    if usd_per_gpu_hour < 0:
        raise CostError(f"price per GPU-hour must be >= 0 (got {usd_per_gpu_hour})")
    peak = peak_flops(gpu, dtype)
    fpt = flops_per_token(cfg, seq_len, include_mtp=include_mtp)
    # split counting's figure into its two terms, so the printed formula can be checked by hand
    layers = cfg.num_hidden_layers + (cfg.num_nextn_predict_layers if include_mtp else 0)
    attention = 3 * layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len
    total = float(fpt) * tokens
    hours = total / (peak * _check_mfu(mfu)) / 3600
    return TrainingCost(gpu=gpu_name(gpu), dtype=dtype, peak_flops=peak, mfu=mfu,
                        usd_per_gpu_hour=usd_per_gpu_hour, seq_len=seq_len, include_mtp=include_mtp,
                        tokens=tokens, flops_per_token=fpt, matmul_params=(fpt - attention) // 6,
                        attention_flops_per_token=attention, layers=layers, total_flops=total,
                        gpu_hours=hours, usd=hours * usd_per_gpu_hour)


def implied_mfu(cfg: ModelConfig, tokens: int, gpu_hours: float, gpu: str, seq_len: int = 4096,
                include_mtp: bool = False, dtype: str = "bf16") -> float:
    """The MFU at which `tokens` tokens take `gpu_hours`: training_cost inverted (V3: 0.391, 0.407
    with MTP)."""
    if gpu_hours <= 0:
        raise CostError(f"gpu_hours must be > 0 (got {gpu_hours})")
    flops = flops_per_token(cfg, seq_len, include_mtp=include_mtp) * tokens
    return flops / (gpu_hours * 3600 * peak_flops(gpu, dtype))


# ---- a finished run, from its own metrics ----

@dataclass(frozen=True)
class RunCost:
    run_dir: str
    device: str  # as the run logged it: "cpu", "cuda:0"
    world_size: int
    steps: int
    tokens: int
    elapsed_s: float  # wall-clock of the training steps (evaluation, checkpoint writes excluded)
    device_hours: float  # elapsed_s * world_size / 3600
    tokens_per_s: float  # over all devices
    mfu: float | None  # time-weighted mean of the logged per-step MFU = the run's overall MFU
    usd_per_hour: float
    price_unit: str  # "GPU-hour" (every GPU rented) or "machine-hour" (a CPU run: one machine)
    price_note: str  # where the price comes from
    priced_hours: float  # the hours the price applies to: device_hours, or a CPU run's wall-clock
    usd: float
    on_gpu: TrainingCost | None = field(default=None)  # the same tokens on another GPU, run's MFU


def _read_run(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    metrics, config = run / "metrics.jsonl", run / "train_config.json"
    if not run.is_dir():
        raise CostError(f"{run}: no such run directory")
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise CostError(f"{metrics}: missing (not a nanoseek training run?)") from None
    except (OSError, ValueError) as e:
        raise CostError(f"{metrics}: unreadable: {e}") from None
    need = ("step", "tokens", "elapsed_s")
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)
                or any(not isinstance(r.get(k), int | float) for k in need)), None)
    if not rows:
        raise CostError(f"{metrics}: no steps logged")
    if bad is not None:
        raise CostError(f"{metrics}: line {bad} lacks a number for one of {', '.join(need)}")
    try:
        tc = json.loads(config.read_text()) if config.exists() else {}
    except (OSError, ValueError) as e:
        raise CostError(f"{config}: unreadable: {e}") from None
    return rows, tc if isinstance(tc, dict) else {}


def run_cost(run_dir: str | Path, usd_per_hour: float | None = None,
             gpu: str | None = None) -> RunCost:
    """Device-hours, throughput and dollars of a finished run, from metrics.jsonl (and
    train_config.json); with `gpu`, also what its token count would cost there at the MFU the run
    measured. A GPU run is priced per GPU-hour (every device); a CPU run per machine-hour of its
    wall-clock (its processes share one machine). usd_per_hour: the price of both the run's hours
    and the projection's (default GPU_USD_PER_HOUR; CPU_USD_PER_HOUR for a CPU run's own hours)."""
    run = Path(run_dir)
    rows, tc = _read_run(run)
    last = rows[-1]
    world = int(last.get("world_size") or tc.get("world_size") or 1)  # older runs did not say: 1
    elapsed = float(last["elapsed_s"])
    # per-step MFU weighted by the step's duration sums to total model FLOPs / (peak * total time)
    prev, num, den = 0.0, 0.0, 0.0
    for r in rows:
        dt, prev = float(r["elapsed_s"]) - prev, float(r["elapsed_s"])
        if isinstance(r.get("mfu"), int | float) and dt > 0:
            num, den = num + r["mfu"] * dt, den + dt
    run_mfu = num / den if den else None
    device = str(last.get("device", "unknown"))
    hours = elapsed * world / 3600
    if device.split(":")[0] in ("cpu", "mps"):
        unit, note, priced, usd = "machine-hour", CPU_PRICE_NOTE, elapsed / 3600, CPU_USD_PER_HOUR
    else:
        unit, note, priced, usd = "GPU-hour", GPU_PRICE_NOTE, hours, GPU_USD_PER_HOUR
    if usd_per_hour is not None:
        usd, note = usd_per_hour, "given"
    on_gpu = None
    if gpu is not None:
        gpu_usd = GPU_USD_PER_HOUR if usd_per_hour is None else usd_per_hour
        on_gpu = _projection(run, tc, gpu, run_mfu, int(last["tokens"]), gpu_usd)
    return RunCost(run_dir=str(run), device=device, world_size=world, steps=int(last["step"]),
                   tokens=int(last["tokens"]), elapsed_s=elapsed, device_hours=hours,
                   tokens_per_s=int(last["tokens"]) / elapsed if elapsed > 0 else 0.0,
                   mfu=run_mfu, usd_per_hour=usd, price_unit=unit, price_note=note,
                   priced_hours=priced, usd=priced * usd, on_gpu=on_gpu)


def _projection(run: Path, tc: dict[str, Any], gpu: str, run_mfu: float | None, tokens: int,
                usd_per_gpu_hour: float) -> TrainingCost:
    """What the run's tokens would cost on `gpu` at the MFU the run measured."""
    if run_mfu is None:
        raise CostError(f"{run / 'metrics.jsonl'}: no MFU logged (unknown device), so no "
                         f"projection to {gpu}")
    try:
        cfg = resolve_config(str(tc["model"]))
        cfg = cfg.replace(**tc.get("extra", {}))
        seq_len = int(tc["seq_len"])
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise CostError(f"{run / 'train_config.json'}: cannot rebuild the model config "
                         f"({e})") from None
    # the training loop counts the MTP modules in its MFU, so the projection must too
    return training_cost(cfg, tokens, gpu, run_mfu, usd_per_gpu_hour, seq_len,
                         include_mtp=cfg.num_nextn_predict_layers > 0)


__all__ = ["CPU_PRICE_NOTE", "CPU_USD_PER_HOUR", "DEFAULT_MFU", "GPU_PRICE_NOTE",
           "GPU_USD_PER_HOUR", "RunCost", "TrainingCost", "V3_REPORT", "implied_mfu", "parse_count",
           "run_cost", "training_cost"]
