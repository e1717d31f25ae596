"""Decode tokens/s of the engine alone, for comparing two versions of nanoseek on one machine.

bench_infer.py sets nanoseek against transformers; this script times nanoseek only, so that two
checkouts can alternate on the same weights. A version's own figures drift with the machine, so
interleave them:

    for i in 1 2 3; do
        PYTHONPATH=old/src python bench/bench_decode.py --label before
        PYTHONPATH=src python bench/bench_decode.py --label after
    done

It uses only the engine's public API (Engine, generate, SamplingParams), so it also runs against
older checkouts. The weights are the checkpoint bench_infer.py trains and caches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from nanoseek.checkpoint import load_model
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent


def checkpoint_in(path: Path) -> Path:
    """The directory itself, or the newest checkpoint below it (bench_infer's cache holds a run)."""
    if (path / "config.json").exists():
        return path
    found = sorted(p.parent for p in path.rglob("config.json"))
    if not found:
        raise SystemExit(f"{path}: no checkpoint (run bench/bench_infer.py once to train it)")
    return found[-1]


def decode_rate(model, tok: Tokenizer, batch: int, prompt_len: int, new: int, repeats: int,
                seed: int) -> float:
    """Greedy decode tokens/s at one batch size: time(new tokens) - time(1 token), so the prefill
    is left out; the median of `repeats` after a warm-up."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, tok.vocab_size - 10, (batch, prompt_len), generator=g).tolist()
    engine = Engine(model, tok, max_batch=batch, max_seq_len=prompt_len + new,
                    max_prefill_tokens=batch * prompt_len)

    def run(n: int) -> float:
        t = time.perf_counter()
        engine.generate(prompts, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
        return time.perf_counter() - t

    run(new)  # warm-up
    times = [-run(1) + run(new) for _ in range(repeats)]
    return batch * (new - 1) / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / ".cache" / "cpu-small-chat",
                   help="a checkpoint directory, or a run holding one (default: bench_infer's)")
    p.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default="nanoseek", help="names this version in the output line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = checkpoint_in(args.checkpoint)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    rates = {b: decode_rate(model, tok, b, args.prompt_len, args.new_tokens, args.repeats, seed=0)
             for b in (int(x) for x in args.batches.split(","))}
    print(args.label, "decode tokens/s:",
          ", ".join(f"batch {b} {r:,.0f}" for b, r in rates.items()))


if __name__ == "__main__":
    main()
