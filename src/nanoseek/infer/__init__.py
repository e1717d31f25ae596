"""Inference: batched generation over the latent KV cache.

engine.py        the Engine: admission, scheduling, prefix-cache use, MTP drafting, public loops
runner.py        the forwards over cache rows: prefill, decode / verify, MTP; eager or compiled
sequence.py      results (Completion, Delta, Usage) and per-request / per-sample state
sampling.py      SamplingParams, penalties, filters, the seeded batched sampler, logprobs
stream.py        token ids -> text: UTF-8-safe detokenizing, stop strings, the think-block split
prefix_cache.py  the prompt-prefix cache of latent KV blocks, in memory and on disk
batch.py         `nanoseek generate`: a JSONL file of prompts in, completions out, resumable
chat.py          `nanoseek chat`: the terminal chat session
bundled.py       the model `chat` and `serve` use when given no checkpoint
"""
