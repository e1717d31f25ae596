"""JSON-mode overhead per token: the engine's mask step (fill each held row's bitmask, unpack,
-inf) at batch 1/8/32, and a whole greedy generation with and without the grammar.

    python bench/bench_json.py src/nanoseek/assets/model     # any checkpoint directory
"""
import argparse
import time

import torch

from nanoseek.infer.engine import Engine
from nanoseek.infer.grammar import json_grammar, mask_logits
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tokenizer import render_chat

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("checkpoint", help="a checkpoint directory (e.g. src/nanoseek/assets/model)")
ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
e = Engine.from_checkpoint(args.checkpoint, max_seq_len=256, max_batch=32, speculative=False)
V = e.cfg.vocab_size
schema = {"type": "object",
          "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 999},
                         "note": {"type": "string", "maxLength": 40}},
          "required": ["answer", "note"]}
g = json_grammar(schema)
for b in (1, 8, 32):
    ms = [e.grammars.matcher(g) for _ in range(b)]
    logits = torch.randn(b, V)
    for _ in range(20):
        mask_logits(logits, list(range(b)), ms)
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        mask_logits(logits, list(range(b)), ms)
    dt = (time.perf_counter() - t) / n
    print(f"vocab {V}: mask step at batch {b}: {1e6*dt:.0f} us ({1e6*dt/b:.0f} us per held row)")
p = render_chat([{"role": "user", "content": "Calculate 12 + 7. Answer in JSON."}], thinking=False)
for grammar in (None, g, None, g):
    sp = SamplingParams(max_tokens=60, temperature=0, grammar=grammar, ignore_eos=grammar is None)
    t = time.perf_counter()
    c = e.generate([p] * 8, sp)
    dt = time.perf_counter() - t
    toks = sum(len(x.token_ids) for x in c)
    print(f"batch 8 greedy, grammar={'json' if grammar else 'none'}: {toks} tokens, "
          f"{1e3*dt/max(len(x.token_ids) for x in c):.1f} ms/step")
