"""What training costs: GPU-hours and dollars from a config, a token count, a GPU and an MFU, and the
peak FLOP/s that model FLOPs utilisation (MFU) is measured against.

    GPU-hours = flops_per_token(cfg, seq_len) * tokens / (peak FLOP/s * MFU) / 3600

With the deepseek-v3 preset, 14.8T tokens and H800s this reproduces the V3 report's 2,664K pre-training
GPU-hours at MFU 0.391 (main model only, the usual 6*N*D reproduction) or 0.407 (MTP module counted).
Peaks are dense (no 2:4 sparsity) tensor-core figures: the datasheets' headline numbers are often the
sparse ones, twice as large, which would halve every MFU.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanoseek.model.config import ModelConfig, resolve_config
from nanoseek.model.counting import flops_per_token

if TYPE_CHECKING:  # torch is imported where it is used: `nanoseek cost` and `info` start without it
    import torch

# Dense peak FLOP/s per dtype, from NVIDIA's datasheets (H100/H800/H200, A100/A800, L4, L40, L40S, A10,
# B200 / HGX B200 (8-GPU figures / 8), T4, V100) and architecture whitepapers (Ada for the RTX 4090, Ampere
# GA102 for the RTX 3090). bf16/fp16/fp8/tf32 are tensor-core rates with fp32 accumulation, the mode PyTorch
# uses (GeForce cards run at half their fp16-accumulate rate there); fp32 is the plain CUDA-core rate.
# A bare name is the SXM part, what torch.cuda.get_device_name() calls e.g. "NVIDIA H100 80GB HBM3".
_HOPPER_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12, "fp32": 66.9e12}
_HOPPER_PCIE = {"bf16": 756.0e12, "fp16": 756.0e12, "fp8": 1513.0e12, "tf32": 378.0e12, "fp32": 51.2e12}
_HOPPER_NVL = {"bf16": 835.5e12, "fp16": 835.5e12, "fp8": 1670.5e12}
_AMPERE_DC = {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": _HOPPER_SXM, "H800": _HOPPER_SXM,  # H800: H100 with cut NVLink/FP64, same tensor cores
    "H200": _HOPPER_SXM, "GH200": _HOPPER_SXM,  # H100's compute with more, faster memory
    "H100 PCIe": _HOPPER_PCIE, "H800 PCIe": _HOPPER_PCIE,
    "H100 NVL": _HOPPER_NVL, "H200 NVL": _HOPPER_NVL,
    "B200": {"bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15},
    "A100": _AMPERE_DC, "A100 PCIe": _AMPERE_DC, "A800": _AMPERE_DC, "A800 PCIe": _AMPERE_DC,
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp8": 242.5e12, "tf32": 60e12, "fp32": 30.3e12},
    "L40": {"bf16": 181e12, "fp16": 181e12, "fp8": 362e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp8": 733e12, "tf32": 183e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},  # not the A10G: no figure
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp8": 330.3e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},  # SXM2; no bf16 tensor cores
    "T4": {"fp16": 65e12, "fp32": 8.1e12},  # no bf16 tensor cores
}
_VARIANTS = ("PCIE", "NVL", "LAPTOP")  # words that change the part's clocks or SM count, hence its peak
DEFAULT_MFU = 0.4  # what `nanoseek cost` assumes when not told: V3's implied 0.39, rounded
V3_REPORT = {"gpu": "H800", "tokens": 14_800_000_000_000, "gpu_hours": 2_664_000}  # pre-training row


def gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3', 'h800', 'NVIDIA A100-SXM4-80GB', 'NVIDIA GeForce RTX 4090' -> a PEAK_FLOPS key."""
    words = [w for w in re.sub(r"[-_/,()]", " ", name.upper()).split() if w not in ("NVIDIA", "TESLA", "GEFORCE")]
    if words and words[0] == "RTX" and len(words) > 1:
        words[:2] = [f"RTX {words[1]}"]
    variant = next((v for v in _VARIANTS if any(w.startswith(v) for w in words[1:])), "")
    want = f"{words[0]} {variant}".strip() if words else ""
    for key in PEAK_FLOPS:
        if key.upper() == want:
            return key
    raise ValueError(f"unknown GPU {name!r}: no peak FLOP/s on file for it; known: {', '.join(PEAK_FLOPS)}")


def peak_flops(gpu: str, dtype: str = "bf16") -> float:
    """Dense peak FLOP/s of a GPU (any name gpu_name understands) in a dtype."""
    table = PEAK_FLOPS[gpu_name(gpu)]
    if dtype not in table:
        raise ValueError(f"no {dtype} peak on file for {gpu_name(gpu)}; it has: {', '.join(table)}")
    return table[dtype]


# ---- CPU: no datasheet, so measure what a matmul reaches, once per machine ----

_CPU_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def cache_dir() -> Path:
    return Path(os.environ.get("NANOSEEK_CACHE") or Path.home() / ".cache" / "nanoseek")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _matmul_probe(dtype: torch.dtype, budget_s: float = 1.0) -> float:
    """Best FLOP/s of square matmuls at the current thread count: the CPU's practical peak (vendor peaks
    assume AVX-512 FMA on every core at boost clock, which PyTorch never sees, so MFU would read low)."""
    import torch

    n = 2048  # big enough to reach the kernel's peak, small enough for ~50 ms a rep on two cores
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = a @ b  # warm-up: thread pool, caches, oneDNN kernels
    best, deadline = math.inf, time.perf_counter() + budget_s
    for _ in range(20):  # the best rep: another process stealing a core slows some reps, not all
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > deadline:
            break
    return 2 * n**3 / best


def cpu_peak_flops(dtype: str = "fp32", refresh: bool = False) -> float:
    """Measured matmul FLOP/s of this CPU, cached in $NANOSEEK_CACHE (or ~/.cache/nanoseek)/cpu_peak_flops.json
    under CPU model, thread count and torch version, so every run on a machine shares one denominator.
    refresh=True measures again and keeps the higher figure (a probe taken on a busy machine reads low)."""
    if dtype not in _CPU_DTYPES:
        raise ValueError(f"no CPU peak for {dtype!r}; the probe measures: {', '.join(_CPU_DTYPES)}")
    path = cache_dir() / "cpu_peak_flops.json"
    import torch

    key = f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype}"
    try:
        cache = json.loads(path.read_text())
        if isinstance(cache, dict) and isinstance(cache.get(key), int | float) and cache[key] > 0 and not refresh:
            return float(cache[key])
    except (OSError, ValueError):
        cache = {}  # absent or corrupt: measure again and rewrite
    if not isinstance(cache, dict):
        cache = {}
    flops = _matmul_probe(getattr(torch, _CPU_DTYPES[dtype]))
    old = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(old, int | float):
        flops = max(flops, float(old))
    try:  # write-then-rename: concurrent ranks or a crash never leave half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".cpu_peak_flops.", delete=False) as f:
            json.dump({**cache, key: flops}, f, indent=1)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home still gets its MFU, just re-measured next time
    return flops


def device_peak_flops(device: torch.device | str, dtype: str = "bf16") -> float:
    """Peak FLOP/s of a torch device: the GPU table for CUDA, the cached matmul probe for the CPU.
    ValueError for devices without a figure, which the training loop reads as "no MFU"."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    raise ValueError(f"no peak FLOP/s for {device.type} devices")


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: the model's FLOP/s (from its formula, not the kernels') over the peak."""
    return tokens_per_s * flops_per_token / peak


# ---- training cost ----

def parse_count(text: str) -> int:
    """'14.8T' -> 14_800_000_000_000; also K, M, B (or G), plain integers, '1e12' and '1_000'."""
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    try:
        scale = 1000 ** " KMBT".index(m.group(2).upper().replace("G", "B") or " ")
        value = Decimal(m.group(1).replace("_", "")) * scale
    except (AttributeError, InvalidOperation):
        raise ValueError(f"{text!r} is not a count (e.g. 14.8T, 500B, 2M, 1e9)") from None
    if value < 1 or value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole count >= 1")
    return int(value)


def _check_mfu(x: float) -> float:
    if not 0 < x <= 1:
        raise ValueError(f"MFU must be in (0, 1] (got {x})")
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


def training_cost(cfg: ModelConfig, tokens: int, gpu: str, mfu: float, usd_per_gpu_hour: float = 2.0,
                  seq_len: int = 4096, include_mtp: bool = False, dtype: str = "bf16") -> TrainingCost:
    """GPU-hours and dollars to train cfg on `tokens` tokens. include_mtp defaults to False: the V3 figure is
    usually reproduced from the main model's 6*N*D (MTP adds ~4% FLOPs for V3; the training loop's own MFU
    counts them, so pass include_mtp=True to convert an MFU nanoseek measured)."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1 (got {tokens})")
    if usd_per_gpu_hour < 0:
        raise ValueError(f"price per GPU-hour must be >= 0 (got {usd_per_gpu_hour})")
    peak = peak_flops(gpu, dtype)
    fpt = flops_per_token(cfg, seq_len, include_mtp=include_mtp)
    # split counting's figure into its two terms, so the printed formula can be checked by hand
    layers = cfg.num_hidden_layers + (cfg.num_nextn_predict_layers if include_mtp else 0)
    attention = 3 * layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len
    total = float(fpt) * tokens
    hours = total / (peak * _check_mfu(mfu)) / 3600
    return TrainingCost(gpu=gpu_name(gpu), dtype=dtype, peak_flops=peak, mfu=mfu, usd_per_gpu_hour=usd_per_gpu_hour,
                        seq_len=seq_len, include_mtp=include_mtp, tokens=tokens, flops_per_token=fpt,
                        matmul_params=(fpt - attention) // 6, attention_flops_per_token=attention, layers=layers,
                        total_flops=total, gpu_hours=hours, usd=hours * usd_per_gpu_hour)


def implied_mfu(cfg: ModelConfig, tokens: int, gpu_hours: float, gpu: str, seq_len: int = 4096,
                include_mtp: bool = False, dtype: str = "bf16") -> float:
    """The MFU at which `tokens` tokens take `gpu_hours`: training_cost inverted (V3: 0.391, 0.407 with MTP)."""
    if gpu_hours <= 0:
        raise ValueError(f"gpu_hours must be > 0 (got {gpu_hours})")
    return flops_per_token(cfg, seq_len, include_mtp=include_mtp) * tokens / (gpu_hours * 3600 * peak_flops(gpu, dtype))


# ---- a finished run, from its own metrics ----

@dataclass(frozen=True)
class RunCost:
    run_dir: str
    device: str  # as the run logged it: "cpu", "cuda:0"
    world_size: int
    steps: int
    tokens: int
    elapsed_s: float  # wall-clock of the training steps (evaluation and checkpoint writes excluded)
    device_hours: float  # elapsed_s * world_size / 3600
    tokens_per_s: float  # over all devices
    mfu: float | None  # time-weighted mean of the logged per-step MFU = the run's overall MFU
    usd_per_device_hour: float
    usd: float
    on_gpu: TrainingCost | None = field(default=None)  # the same tokens on another GPU at the run's MFU


def _read_run(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    metrics, config = run / "metrics.jsonl", run / "train_config.json"
    if not run.is_dir():
        raise ValueError(f"{run}: no such run directory")
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ValueError(f"{metrics}: missing (not a nanoseek training run?)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{metrics}: unreadable: {e}") from None
    need = ("step", "tokens", "elapsed_s")
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)
                or any(not isinstance(r.get(k), int | float) for k in need)), None)
    if not rows:
        raise ValueError(f"{metrics}: no steps logged")
    if bad is not None:
        raise ValueError(f"{metrics}: line {bad} lacks a number for one of {', '.join(need)}")
    try:
        tc = json.loads(config.read_text()) if config.exists() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{config}: unreadable: {e}") from None
    return rows, tc if isinstance(tc, dict) else {}


def run_cost(run_dir: str | Path, usd_per_gpu_hour: float = 2.0, gpu: str | None = None) -> RunCost:
    """Device-hours, throughput and dollars of a finished run, from metrics.jsonl (and train_config.json);
    with `gpu`, also what its token count would cost there at the MFU the run measured."""
    run = Path(run_dir)
    rows, tc = _read_run(run)
    last = rows[-1]
    world = int(last.get("world_size") or tc.get("world_size") or 1)  # older runs did not record it: 1
    elapsed = float(last["elapsed_s"])
    # per-step MFU weighted by the step's duration sums to total model FLOPs / (peak * total time)
    prev, num, den = 0.0, 0.0, 0.0
    for r in rows:
        dt, prev = float(r["elapsed_s"]) - prev, float(r["elapsed_s"])
        if isinstance(r.get("mfu"), int | float) and dt > 0:
            num, den = num + r["mfu"] * dt, den + dt
    run_mfu = num / den if den else None
    hours = elapsed * world / 3600
    on_gpu = None
    if gpu is not None:
        if run_mfu is None:
            raise ValueError(f"{run / 'metrics.jsonl'}: no MFU logged (unknown device), so no projection to {gpu}")
        try:
            cfg = resolve_config(str(tc["model"]))
            cfg = cfg.replace(**tc.get("extra", {}))
            seq_len = int(tc["seq_len"])
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise ValueError(f"{run / 'train_config.json'}: cannot rebuild the model config ({e})") from None
        # the training loop counts the MTP modules in its MFU, so the projection must too
        on_gpu = training_cost(cfg, int(last["tokens"]), gpu, run_mfu, usd_per_gpu_hour, seq_len,
                               include_mtp=cfg.num_nextn_predict_layers > 0)
    return RunCost(run_dir=str(run), device=str(last.get("device", "unknown")), world_size=world,
                   steps=int(last["step"]), tokens=int(last["tokens"]), elapsed_s=elapsed, device_hours=hours,
                   tokens_per_s=int(last["tokens"]) / elapsed if elapsed > 0 else 0.0, mfu=run_mfu,
                   usd_per_device_hour=usd_per_gpu_hour, usd=hours * usd_per_gpu_hour, on_gpu=on_gpu)


__all__ = ["DEFAULT_MFU", "PEAK_FLOPS", "RunCost", "TrainingCost", "V3_REPORT", "cpu_peak_flops",
           "device_peak_flops", "gpu_name", "implied_mfu", "mfu", "parse_count", "peak_flops", "run_cost",
           "training_cost"]
