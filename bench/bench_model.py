"""Training-step throughput of nanoseek against transformers' DeepseekV3ForCausalLM, and decode
cache size.

Same config, weights (nanoseek saves a checkpoint, transformers loads it) and batch, in one process;
the two models' forward+backward steps alternate so both see the same machine noise, and medians are
reported.
FLOP/s use nanoseek.model.counting.flops_per_token, against a large-matmul probe run in the same
process.
KV cache bytes per token are measured: nanoseek's KVCache, and transformers' DynamicCache after a
generate.

    python bench/bench_model.py                # cpu-small, fp32, 8 x 256 tokens, 2 threads
    python bench/bench_model.py --compile      # also torch.compile'd (nanoseek per block)
    python bench/bench_model.py --json         # one machine-readable record
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

import torch
import transformers
from transformers import DeepseekV3ForCausalLM

from nanoseek.checkpoint import save_model
from nanoseek.hardware import cpu_model
from nanoseek.model import get_preset
from nanoseek.model.counting import flops_per_token
from nanoseek.model.model import KVCache, Transformer


def timed(device: str, fn, *args):
    """(seconds, result) of fn(*args), waiting for the GPU when there is one."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - t, out


def matmul_peak(device: str, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul: the ceiling both models are measured against."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype),
            torch.randn(n, n, device=device, dtype=dtype))
    a @ b
    return 2 * n**3 / min(timed(device, torch.mm, a, b)[0] for _ in range(reps)) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first")
    ap.add_argument("--steps", type=int, default=10,
                    help="timed steps of each model; the median is reported")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--peak-n", type=int, default=4096, help="size of the square matmul peak probe")
    ap.add_argument("--compile", action="store_true",
                    help="also time both models under torch.compile")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON record instead of the report")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    dev, dtype = args.device, getattr(torch, args.dtype)

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    nano = Transformer(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_model(nano, d)
        hf = DeepseekV3ForCausalLM.from_pretrained(d, dtype=dtype)
    nano, hf = nano.to(dev, dtype).train(), hf.to(dev).train()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=dev)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()  # both predict y[:, i] from x[:, :i+1]

    def nano_step(m) -> float:  # the main loss only: transformers has no MTP loss
        m.zero_grad(set_to_none=True)
        (loss := m(x, y, mtp=False).main_loss).backward()
        return loss.item()

    def hf_step(m) -> float:  # shift_labels: y is already shifted, as nanoseek's labels are
        m.zero_grad(set_to_none=True)
        (loss := m(input_ids=x, labels=y, shift_labels=y).loss).backward()
        return loss.item()

    tokens = args.batch * args.seq
    flops = flops_per_token(cfg, args.seq) * tokens
    peak = matmul_peak(dev, dtype, args.peak_n)
    rec = dict(preset=args.preset,
               device=cpu_model() if dev == "cpu" else torch.cuda.get_device_name(),
               dtype=args.dtype, threads=args.threads, batch=args.batch, seq=args.seq,
               torch=torch.__version__, transformers=transformers.__version__,
               hf_attn_implementation=hf.config._attn_implementation,
               hf_experts_implementation=getattr(hf.config, "_experts_implementation", None),
               gflop_per_step=round(flops / 1e9, 2), matmul_peak_gflops=round(peak, 1), runs={})
    for mode in ["eager"] + (["compiled"] if args.compile else []):
        if mode == "compiled":
            # nanoseek as its trainer compiles it (per block: pretrain._parallel), transformers
            # whole
            for layer in [*nano.layers, *nano.mtp]:
                layer.compile(dynamic=False)
            hf = torch.compile(hf)
        models = {"nanoseek": (nano_step, nano), "transformers": (hf_step, hf)}
        t0, times, losses = time.perf_counter(), {k: [] for k in models}, {}
        for i in range(args.warmup + args.steps):
            for name, (step, m) in models.items():  # interleaved: both share the machine's noise
                dt, losses[name] = timed(dev, step, m)
                times[name] += [dt] if i >= args.warmup else []
        r: dict = {"wall_s": round(time.perf_counter() - t0, 1)}
        for k, v in times.items():
            med = statistics.median(v)
            r[k] = dict(step_ms=round(med * 1e3, 1), tokens_per_s=round(tokens / med),
                        loss=round(losses[k], 5), gflops=round(flops / med / 1e9, 1),
                        pct_peak=round(100 * flops / med / 1e9 / peak, 1))
        r["ratio"] = round(r["nanoseek"]["tokens_per_s"] / r["transformers"]["tokens_per_s"], 2)
        rec["runs"][mode] = r

    # decode-path cache: nanoseek's absorbed-MLA buffers (main layers) vs transformers' DynamicCache
    cache = KVCache(cfg, 1, 64, n_layers=cfg.num_hidden_layers, dtype=dtype, device=dev)
    rec["nanoseek_cache_bytes_per_token"] = cache.kv.nbytes // 64
    with torch.no_grad():
        out = getattr(hf, "_orig_mod", hf).eval().generate(
            ids[:1, :16], max_new_tokens=8, do_sample=False, use_cache=True,
            return_dict_in_generate=True, pad_token_id=0)
    kv = out.past_key_values
    held = [t for layer in kv.layers for t in (layer.keys, layer.values)]
    rec["hf_cache_bytes_per_token"] = (sum(t.numel() * t.element_size() for t in held)
                                       // held[0].shape[-2])
    rec["hf_cache_layer0_shapes"] = [list(kv.layers[0].keys.shape), list(kv.layers[0].values.shape)]

    if args.json:
        print(json.dumps(rec))
        return
    print(f"{args.preset}, {args.dtype}, {rec['device']}, {args.threads} threads, "
          f"torch {torch.__version__}, "
          f"transformers {transformers.__version__} (attention: {rec['hf_attn_implementation']}, "
          f"experts: {rec['hf_experts_implementation']})")
    print(f"batch {args.batch} x {args.seq}: {flops / 1e9:.1f} GFLOP per step "
          f"(counting.flops_per_token), "
          f"matmul peak measured {peak:.0f} GFLOP/s ({args.peak_n}^3)")
    for mode, r in rec["runs"].items():
        print(f"\n{mode}: forward+backward, median of {args.steps} interleaved steps "
              f"({r['wall_s']} s in all)")
        print(f"  {'':14}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'loss':>10}")
        for k, v in ((k, r[k]) for k in ("nanoseek", "transformers")):
            print(f"  {k:14}{v['step_ms']:>9}{v['tokens_per_s']:>10}{v['gflops']:>9}"
                  f"{v['pct_peak']:>8}{v['loss']:>10}")
        print(f"  nanoseek / transformers: {r['ratio']}x tokens/s")
    print(f"\ndecode KV cache per token ({args.dtype}, {cfg.num_hidden_layers} layers): nanoseek "
          f"{rec['nanoseek_cache_bytes_per_token']} B, "
          f"transformers {rec['hf_cache_bytes_per_token']} B "
          f"(its DynamicCache layer 0 holds {rec['hf_cache_layer0_shapes'][0]} "
          f"and {rec['hf_cache_layer0_shapes'][1]})")


if __name__ == "__main__":
    main()
