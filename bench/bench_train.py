"""Full training steps: nanoseek's against a transformers DeepseekV3ForCausalLM step, and nanoseek's
own loop.

A training step here is everything an optimizer step costs: forward, backward, gradient clipping at
1.0, AdamW (0.9, 0.95, weight decay 0.1 on matrices, the fused kernel), and for nanoseek the
aux-loss-free bias update. Both models start from the same weights (nanoseek saves, transformers
loads) and see the same batches from nanoseek's PackedLoader; their steps alternate so they share
the machine's noise, and medians are reported. Then `nanoseek.train.pretrain.train` runs the same
configuration end to end (data loading, metrics, checkpoint at the end), and its logged tokens/s are
reported too: the throughput a user actually gets.

FLOPs come from nanoseek.model.counting.flops_per_token; the peak is the best large fp32 matmul
measured in this process, and also nanoseek's cached probe (what `nanoseek train` divides by for its
MFU).

    python bench/bench_train.py           # cpu-small, 8 x 256, MTP off (transformers has none)
    python bench/bench_train.py --mtp     # nanoseek trains its MTP module too (more FLOPs)
    python bench/bench_train.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import DeepseekV3ForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import matmul_peak, timed  # noqa: E402

from nanoseek.checkpoint import save_model  # noqa: E402
from nanoseek.data import PackedLoader  # noqa: E402
from nanoseek.hardware import cpu_model, cpu_peak_flops  # noqa: E402
from nanoseek.model import get_preset  # noqa: E402
from nanoseek.model.counting import flops_per_token  # noqa: E402
from nanoseek.model.model import Transformer, update_correction_bias  # noqa: E402
from nanoseek.train.pretrain import TrainConfig, build_optimizer, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--mtp", action="store_true", help="nanoseek also trains its MTP module")
    ap.add_argument("--peak-n", type=int, default=4096)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    cfg = get_preset(args.preset)
    if not args.mtp:
        cfg = cfg.replace(num_nextn_predict_layers=0)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    # random tokens: throughput does not depend on what the text says
    data = work / "data"
    data.mkdir()
    n_tokens = (args.batch * (args.warmup + args.steps) * 2 + 64) * args.seq
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, cfg.vocab_size, n_tokens, dtype=np.uint16).tofile(data / f"{split}.bin")
    (data / "meta.json").write_text(json.dumps({"vocab_size": cfg.vocab_size, "dtype": "uint16"}))

    torch.manual_seed(0)
    nano = Transformer(cfg).train()
    save_model(nano, work / "init")
    hf = DeepseekV3ForCausalLM.from_pretrained(work / "init", dtype=torch.float32).train()
    tcfg = TrainConfig(model=str(work / "init"), data=str(data), seq_len=args.seq,
                       micro_batch_size=args.batch, lr=1e-3, warmup_steps=0, schedule="constant")
    opts = {"nanoseek": build_optimizer(nano, tcfg), "transformers": build_optimizer(hf, tcfg)}
    loaders = {k: PackedLoader(data / "train.bin", args.seq, args.batch) for k in opts}

    def nano_step() -> float:
        x, y = loaders["nanoseek"].next_batch()
        (out := nano(x, y)).loss.backward()
        torch.nn.utils.clip_grad_norm_(nano.parameters(), 1.0)
        opts["nanoseek"].step()
        opts["nanoseek"].zero_grad(set_to_none=True)
        update_correction_bias(nano)
        return out.main_loss.item()

    def hf_step() -> float:
        x, y = (t.contiguous() for t in loaders["transformers"].next_batch())
        (loss := hf(input_ids=x, labels=y, shift_labels=y).loss).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opts["transformers"].step()
        opts["transformers"].zero_grad(set_to_none=True)
        return loss.item()

    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq, include_mtp=args.mtp)
    peak = matmul_peak("cpu", torch.float32, args.peak_n) * 1e9
    probe = cpu_peak_flops("fp32")
    times: dict[str, list[float]] = {"nanoseek": [], "transformers": []}
    losses: dict[str, list[float]] = {"nanoseek": [], "transformers": []}
    for i in range(args.warmup + args.steps):
        for name, step in (("nanoseek", nano_step), ("transformers", hf_step)):
            dt, loss = timed("cpu", step)
            losses[name].append(loss)
            if i >= args.warmup:
                times[name].append(dt)

    # the real loop, same configuration and weights: what `nanoseek train` logs
    tcfg.max_steps = args.warmup + args.steps
    tcfg.eval_every, tcfg.save_every, tcfg.progress = 0, 0, False
    tcfg.out_dir = str(work / "run")
    train(tcfg)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    loop_tps = statistics.median(r["tokens_per_s"] for r in rows[args.warmup:])

    rec = dict(preset=args.preset, mtp=args.mtp, batch=args.batch, seq=args.seq,
               threads=args.threads,
               device=cpu_model(), torch=torch.__version__, transformers=transformers.__version__,
               gflop_per_step=round(fpt * tokens / 1e9, 2), matmul_peak_gflops=round(peak / 1e9, 1),
               probe_peak_gflops=round(probe / 1e9, 1), steps=args.steps)
    for name, ts in times.items():
        med = statistics.median(ts)
        # transformers trains no MTP module
        f = fpt if name == "nanoseek" else flops_per_token(cfg, args.seq)
        rec[name] = dict(step_ms=round(1e3 * med, 1), tokens_per_s=round(tokens / med),
                         gflops=round(f * tokens / med / 1e9, 1),
                         pct_peak=round(100 * f * tokens / med / peak, 1),
                         first_loss=round(losses[name][0], 5), last_loss=round(losses[name][-1], 5))
    rec["ratio"] = round(rec["nanoseek"]["tokens_per_s"] / rec["transformers"]["tokens_per_s"], 2)
    rec["train_loop"] = dict(tokens_per_s=round(loop_tps), gflops=round(loop_tps * fpt / 1e9, 1),
                             pct_peak=round(100 * loop_tps * fpt / peak, 1),
                             mfu_logged=rows[-1]["mfu"])
    if args.json:
        print(json.dumps(rec))
        return
    print(f"{args.preset} (MTP {'on' if args.mtp else 'off'}), fp32, {rec['device']}, "
          f"{args.threads} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"batch {args.batch} x {args.seq}: {rec['gflop_per_step']} GFLOP per step; matmul peak "
          f"{rec['matmul_peak_gflops']} GFLOP/s ({args.peak_n}^3), nanoseek's cached probe "
          f"{rec['probe_peak_gflops']}")
    print(f"\nfull training step (fwd, bwd, clip, AdamW; nanoseek also updates its router biases), "
          f"median of {args.steps}:")
    print(f"  {'':14}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'loss 1st':>10}"
          f"{'loss last':>10}")
    for k in ("nanoseek", "transformers"):
        v = rec[k]
        print(f"  {k:14}{v['step_ms']:>9}{v['tokens_per_s']:>10}{v['gflops']:>9}{v['pct_peak']:>8}"
              f"{v['first_loss']:>10}{v['last_loss']:>10}")
    print(f"  nanoseek / transformers: {rec['ratio']}x tokens/s")
    t = rec["train_loop"]
    print(f"\nnanoseek train loop: {t['tokens_per_s']} tokens/s, {t['gflops']} GFLOP/s, "
          f"{t['pct_peak']}% of the matmul peak (logged MFU against the cached probe: "
          f"{t['mfu_logged']})")


if __name__ == "__main__":
    main()
