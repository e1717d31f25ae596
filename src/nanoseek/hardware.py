"""What the hardware can do: the dense peak FLOP/s that model FLOPs utilisation (MFU) is measured
against.

GPUs have datasheet peaks; a CPU has none that PyTorch can reach, so its peak is measured once per
machine by a matmul probe and cached. Peaks are dense (no 2:4 sparsity) tensor-core figures: the
datasheets' headline numbers are often the sparse ones, twice as large, which would halve every
MFU.
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nanoseek.errors import UserError
from nanoseek.files import atomic_write, cache_dir

if TYPE_CHECKING:  # torch is imported where it is used: `nanoseek cost` and `info` start without it
    import torch

# Dense peak FLOP/s per dtype, from NVIDIA's datasheets (H100/H800/H200, A100/A800, L4, L40, L40S,
# A10, B200 / HGX B200 (8-GPU figures / 8), T4, V100) and architecture whitepapers (Ada for the RTX
# 4090, Ampere GA102 for the RTX 3090). bf16/fp16/fp8/tf32 are tensor-core rates with fp32
# accumulation, the mode PyTorch uses (GeForce cards run at half their fp16-accumulate rate there);
# fp32 is the plain CUDA-core rate. A bare name is the SXM part, what torch.cuda.get_device_name()
# calls e.g. "NVIDIA H100 80GB HBM3".
_HOPPER_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12,
               "fp32": 66.9e12}
_HOPPER_PCIE = {"bf16": 756.0e12, "fp16": 756.0e12, "fp8": 1513.0e12, "tf32": 378.0e12,
                "fp32": 51.2e12}
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
    # not the A10G: no figure on file for it
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp8": 330.3e12, "tf32": 82.6e12,
                 "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},  # SXM2; no bf16 tensor cores
    "T4": {"fp16": 65e12, "fp32": 8.1e12},  # no bf16 tensor cores
}
# words that change the part's clocks or SM count, hence its peak
_VARIANTS = ("PCIE", "NVL", "LAPTOP")


class HardwareError(UserError):
    """No peak on file for a GPU, a dtype or a device (the training loop reads it as "no MFU")."""


def gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3', 'h800', 'NVIDIA A100-SXM4-80GB', 'NVIDIA GeForce RTX 4090' -> a
    PEAK_FLOPS key."""
    words = [w for w in re.sub(r"[-_/,()]", " ", name.upper()).split()
             if w not in ("NVIDIA", "TESLA", "GEFORCE")]
    if words and words[0] == "RTX" and len(words) > 1:
        words[:2] = [f"RTX {words[1]}"]
    variant = next((v for v in _VARIANTS if any(w.startswith(v) for w in words[1:])), "")
    want = f"{words[0]} {variant}".strip() if words else ""
    for key in PEAK_FLOPS:
        if key.upper() == want:
            return key
    raise HardwareError(f"unknown GPU {name!r}: no peak FLOP/s on file for it; "
                     f"known: {', '.join(PEAK_FLOPS)}")


def peak_flops(gpu: str, dtype: str = "bf16") -> float:
    """Dense peak FLOP/s of a GPU (any name gpu_name understands) in a dtype."""
    table = PEAK_FLOPS[gpu_name(gpu)]
    if dtype not in table:
        raise HardwareError(f"no {dtype} peak on file for {gpu_name(gpu)}; "
                            f"it has: {', '.join(table)}")
    return table[dtype]


# ---- CPU: no datasheet, so measure what a matmul reaches, once per machine ----

_CPU_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _matmul_probe(dtype: torch.dtype, budget_s: float = 1.0) -> float:
    """Best FLOP/s of square matmuls at the current thread count: the CPU's practical peak (vendor
    peaks assume AVX-512 FMA on every core at boost clock, which PyTorch never sees, so MFU would
    read low)."""
    import torch

    n = 2048  # big enough to reach the kernel's peak, small enough for many reps in the budget
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
    """Measured matmul FLOP/s of this CPU, cached in
    $NANOSEEK_CACHE (or ~/.cache/nanoseek)/cpu_peak_flops.json under CPU model, thread count and
    torch version, so every run on a machine shares one denominator. refresh=True measures again and
    keeps the higher figure (a probe taken on a busy machine reads low)."""
    if dtype not in _CPU_DTYPES:
        raise HardwareError(f"no CPU peak for {dtype!r}; "
                            f"the probe measures: {', '.join(_CPU_DTYPES)}")
    path = cache_dir() / "cpu_peak_flops.json"
    import torch

    key = f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype}"
    try:
        cache = json.loads(path.read_text())
        cached = cache.get(key) if isinstance(cache, dict) else None
        if isinstance(cached, int | float) and cached > 0 and not refresh:
            return float(cached)
    except (OSError, ValueError):
        cache = {}  # absent or corrupt: measure again and rewrite
    if not isinstance(cache, dict):
        cache = {}
    flops = _matmul_probe(getattr(torch, _CPU_DTYPES[dtype]))
    old = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(old, int | float):
        flops = max(flops, float(old))
    try:  # atomic: concurrent ranks or a crash never leave half a file
        atomic_write(path, json.dumps({**cache, key: flops}, indent=1))
    except OSError:
        pass  # a read-only home still gets its MFU, just re-measured next time
    return flops


def device_peak_flops(device: torch.device | str, dtype: str = "bf16") -> float:
    """Peak FLOP/s of a torch device: the GPU table for CUDA, the cached matmul probe for the CPU.
    HardwareError for devices without a figure, which the training loop reads as "no MFU"."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    raise HardwareError(f"no peak FLOP/s for {device.type} devices")


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: the model's FLOP/s (from its formula, not the kernels') over the
    peak."""
    return tokens_per_s * flops_per_token / peak


# ---------------------------------------------------------------------------------------------
# Precision: which dtype the matmuls run in on each device


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """The matmuls' dtype on a device: bf16 on a GPU (tensor cores: ~15x fp32's rate on an H100),
    fp32 on a CPU (its bf16 matmuls are no faster, and fp32 keeps CPU runs exact)."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def autocast(device: torch.device | str):
    """The context every training and scoring forward runs in: bf16 autocast on a GPU (fp32 master
    weights, bf16 matmuls, fp32 norms, router, softmax and losses), nothing on a CPU."""
    import contextlib

    import torch

    device = torch.device(device)
    if compute_dtype(device) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype(device))
