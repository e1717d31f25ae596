"""Inference: nanoseek's Engine against transformers' `generate` on the same trained cpu-small
weights.

One process, fp32, the same checkpoint for both (nanoseek's load_model, and transformers'
AutoModelForCausalLM, which ignores the MTP layer). The checkpoint is a cpu-small model trained
here on R1-style arithmetic chats (reasoning-gym basic_arithmetic, sums and products of 2-4 numbers
of 1-2 digits), so that greedy outputs are not near-ties, answers end with EOS, and the MTP module
drafts meaningfully; it is kept in --cache (reused when trained with the same settings), or given
with --checkpoint.

Measured, each as the median of --repeats runs, the systems' runs interleaved after a warm-up:
  decode     B equal-length prompts, greedy, ignore_eos, N new tokens; decode time = time(N tokens)
             - time(1 token), so prefill is excluded; nanoseek plain and with MTP speculation;
             agreement = sequences whose N greedy tokens are identical to transformers'
  prefill    time to the first token of one batch of P prompts of T tokens
  cache      bytes per token of nanoseek's latent cache, of a naive per-head K/V cache, and of what
             transformers' DynamicCache holds after generate (measured)
  MTP        acceptance rate and decode speed-up of speculation over plain nanoseek decoding, on
             chat prompts (render_chat, questions of another seed), greedy, natural EOS, batch 1
             and batch 8
  prefix     time to first token of a long shared system prompt + a question: cold (first request)
             and warm (same prefix, another question) with a PrefixCache; transformers has no
             prefix cache
  bandwidth  the machine's memory bandwidth (a 512 MB fp32 sum and copy, in this process) and the
             share of it that batch-1 decoding uses: bytes a step must read (non-expert weights,
             the lm_head, one embedding row, the routed experts actually used, the latent cache)
             x tokens/s

    python bench/bench_infer.py                   # trains the checkpoint once (~2 min), then ~1 min
    python bench/bench_infer.py --quick           # smoke run, seconds (a 20-step training run the
                                                  # first time)
    python bench/bench_infer.py --checkpoint DIR  # an existing deepseek_v3 checkpoint directory
    python bench/bench_infer.py --profile         # then where each decode step's time goes, by
                                                  # module
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from nanoseek.checkpoint import load_model
from nanoseek.data import prepare_corpus
from nanoseek.files import write_jsonl
from nanoseek.hardware import cpu_model
from nanoseek.infer.engine import Engine
from nanoseek.infer.prefix_cache import PrefixCache
from nanoseek.infer.sampling import SamplingParams
from nanoseek.model.model import MoE
from nanoseek.tasks.gym import gym_documents
from nanoseek.tokenizer import Tokenizer, render_chat, train_tokenizer
from nanoseek.train.pretrain import TrainConfig, train
from nanoseek.train.runtime import latest_checkpoint

# questions and prompt text of another seed than the training documents (seed 0)
EVAL_SEED = 1_000_003
# short sums of 1-2 digit numbers: 300 steps teach a cpu-small model the R1 format
# (think, answer, EOS)
GYM_CONFIG = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}


# ---------------------------------------------------------------------------------------------
# the checkpoint


def build_checkpoint(root: Path, docs: int, vocab: int, steps: int, seq: int, batch: int) -> Path:
    """Train cpu-small on basic_arithmetic chats into root, or reuse the run there if it was made
    with the same settings (root/spec.json)."""
    spec = {"docs": docs, "vocab": vocab, "steps": steps, "seq": seq, "batch": batch,
            "gym_config": GYM_CONFIG}
    stamp = root / "spec.json"
    ck = latest_checkpoint(root / "run")
    if ck is not None and stamp.exists() and json.loads(stamp.read_text()) == spec:
        print(f"checkpoint: reusing {ck}", flush=True)
        return ck
    for sub in ("run", "data", "tokenizer"):  # only what this function writes
        shutil.rmtree(root / sub, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rows = list(gym_documents("basic_arithmetic", docs, seed=0, config=GYM_CONFIG))
    write_jsonl(iter(rows), root / "chats.jsonl")
    tok = train_tokenizer([r["text"] for r in rows], vocab_size=vocab)
    tok.save(root / "tokenizer")
    meta = prepare_corpus(str(root / "chats.jsonl"), tok, root / "data", val_fraction=0.05, seed=0,
                          field="text", progress=False)
    cfg = TrainConfig(model="cpu-small", data=str(root / "data"), tokenizer=str(root / "tokenizer"),
                      out_dir=str(root / "run"), seq_len=seq, micro_batch_size=batch,
                      max_steps=steps, lr=3e-3, warmup_steps=min(20, steps // 5), eval_every=0,
                      save_every=0, progress=False, seed=0, extra={"bias_update_speed": 0.01})
    torch.manual_seed(0)
    _, last = train(cfg)
    print(f"checkpoint: trained cpu-small (MTP on) for {steps} steps of {batch} x {seq} on {docs} "
          f"basic_arithmetic chats ({meta['train_tokens']:,} tokens, vocab {tok.vocab_size}) in "
          f"{time.perf_counter() - t0:.0f} s; "
          f"last main loss {last.get('main_loss', float('nan')):.3f}", flush=True)
    stamp.write_text(json.dumps(spec, indent=1))
    return latest_checkpoint(root / "run")


# ---------------------------------------------------------------------------------------------
# the two systems


def nano_run(engine: Engine, prompts: list[list[int]], n: int, ignore_eos: bool = True):
    return engine.generate(prompts,
                           SamplingParams(max_tokens=n, temperature=0, ignore_eos=ignore_eos))


def hf_run(hf, prompts: list[list[int]], n: int, pad_id: int, **kw):
    """Greedy generate of exactly n tokens (eos_token_id is None in hf.generation_config, so it
    never stops early; min_new_tokens then has no logits processor to add, and the argmax is
    untouched)."""
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_id,
                           return_dict_in_generate=True, **kw)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def interleaved(runs: dict, repeats: int, warmup: int) -> dict[str, list]:
    """runs: name -> zero-argument callable returning (seconds, payload). The callables take turns,
    warmup rounds first (dropped); returns name -> [(seconds, payload) of each timed round]."""
    out: dict[str, list] = {k: [] for k in runs}
    for i in range(warmup + repeats):
        for name, fn in runs.items():
            r = fn()
            if i >= warmup:
                out[name].append(r)
    return out


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all cores' time spent busy over `seconds` (from /proc/stat; None where there is
    none)."""
    def read() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]

    try:
        a = read()
        time.sleep(seconds)
        b = read()
    except (OSError, ValueError):
        return None
    d = [y - x for x, y in zip(a, b)]
    idle = d[3] + (d[4] if len(d) > 4 else 0)
    return 1 - idle / max(1, sum(d))


def med(xs) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------------
# prompts


def prompt_windows(tok: Tokenizer, n: int, length: int, seed: int) -> list[list[int]]:
    """n prompts of exactly `length` tokens, each starting at a document's BOS in a stream of fresh
    basic_arithmetic chats (documents of another seed than training)."""
    stream, starts = [], []
    k = 0
    while len(starts) < n or len(stream) - starts[n - 1] < length:
        rows = list(gym_documents("basic_arithmetic", 256, seed=seed + k, config=GYM_CONFIG))
        for r in rows:
            starts.append(len(stream))
            stream += tok.encode(r["text"])
        k += 1
    return [stream[s: s + length] for s in starts[:n]]


def chat_prompts(tok: Tokenizer, n: int, seed: int) -> list[list[int]]:
    rows = gym_documents("basic_arithmetic", n, seed=seed, config=GYM_CONFIG)
    return [tok.encode(render_chat([{"role": "user", "content": r["messages"][0]["content"]}]))
            for r in rows]


def system_prompt(tok: Tokenizer, n_tokens: int, seed: int) -> str:
    """Worked examples as a system prompt of about n_tokens tokens (at least that many)."""
    text, k = "You are a careful calculator. Worked examples:\n\n", 0
    while len(tok.encode(text)) < n_tokens:
        for r in gym_documents("basic_arithmetic", 16, seed=seed + k, config=GYM_CONFIG):
            m = r["messages"]
            text += (f"Q: {m[0]['content']}\nSteps:\n{m[1]['reasoning_content']}\n"
                     f"A: {r['answer']}\n\n")
            if len(tok.encode(text)) >= n_tokens:
                break
        k += 1
    return text


# ---------------------------------------------------------------------------------------------
# the measurements that run per batch size


def hf_compiled_kw() -> dict:
    """generate() arguments for transformers' own compiled decoding: a static cache and a compiled
    forward (transformers compiles automatically only on accelerators; _compile_all_devices asks
    for it on the CPU)."""
    cc = transformers.CompileConfig(fullgraph=False, dynamic=False)
    cc._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": cc}


def bench_decode(model, tok: Tokenizer, hf, prompts: list[list[int]], N: int, R: int, W: int,
                 compiled: bool) -> dict:
    """Equal-length prompts, greedy, ignore_eos: nanoseek plain and + MTP, eager and (compiled) with
    Engine(compile=True); transformers eager and (compiled) with its static cache and compiled
    forward."""
    B, L = len(prompts), len(prompts[0])
    kinds = ("plain", "mtp") + (("plain_compiled", "mtp_compiled") if compiled else ())
    engines = {k: Engine(model, tok, max_batch=B, max_seq_len=L + N,
                         speculative=k.startswith("mtp"), max_prefill_tokens=B * L,
                         compile=k.endswith("compiled")) for k in kinds}

    def nano_pair(e: Engine):
        t1, _ = timed(nano_run, e, prompts, 1)
        d0, a0 = e.stats.drafted, e.stats.accepted
        tn, outs = timed(nano_run, e, prompts, N)
        return tn - t1, ([c.token_ids for c in outs], t1, tn, e.stats.drafted - d0,
                         e.stats.accepted - a0)

    def hf_pair(**kw):
        t1, _ = timed(hf_run, hf, prompts, 1, tok.pad_id, **kw)
        tn, out = timed(hf_run, hf, prompts, N, tok.pad_id, **kw)
        return tn - t1, (out.sequences[:, L:].tolist(), t1, tn, out.past_key_values)

    t0 = time.perf_counter()
    runs = {k: (lambda e=e: nano_pair(e)) for k, e in engines.items()}
    runs["hf"] = hf_pair
    if compiled:
        runs["hf_compiled"] = lambda: hf_pair(**hf_compiled_kw())
    res = interleaved(runs, R, W)
    toks = B * (N - 1)  # the first token comes with the prefill
    r: dict = {k: {"decode_s": med(dt for dt, _ in v), "ttft_s": med(p[1] for _, p in v),
                   "total_s": med(p[2] for _, p in v)} for k, v in res.items()}
    for v in r.values():
        v["tokens_per_s"] = toks / v["decode_s"]
    ref = res["hf"][-1][1][0]
    plain, spec = res["plain"][-1][1][0], res["mtp"][-1][1][0]
    r["agree_hf"] = sum(a == b for a, b in zip(plain, ref)) / B
    r["agree_mtp_plain"] = sum(a == b for a, b in zip(spec, plain)) / B
    for k in ("plain_compiled", "mtp_compiled", "hf_compiled"):
        if k in res:
            r[f"agree_{k}"] = sum(a == b for a, b in zip(res[k][-1][1][0], plain)) / B
    r["agree_hf_first_token"] = sum(a[0] == b[0] for a, b in zip(plain, ref)) / B
    for k in ("mtp", "mtp_compiled"):
        if k in res:
            drafted, accepted = sum(p[3] for _, p in res[k]), sum(p[4] for _, p in res[k])
            r[f"{k}_acceptance"] = accepted / drafted if drafted else 0.0
    kv = res["hf"][-1][1][3]  # transformers' DynamicCache after the last generate
    held = [t for layer in kv.layers for t in (layer.keys, layer.values)]
    r["hf_cache_per_token"] = (sum(t.numel() * t.element_size() for t in held)
                               / (held[0].shape[0] * held[0].shape[-2]))
    r["hf_cache_layer0_shapes"] = [list(kv.layers[0].keys.shape), list(kv.layers[0].values.shape)]
    r["wall_s"] = time.perf_counter() - t0
    return r


def bench_chat(model, tok: Tokenizer, chats: list[list[int]], B: int, max_len: int, M: int, R: int,
               W: int) -> dict:
    """Chat prompts in groups of B, greedy, natural EOS (at most M tokens): speculation vs plain
    decoding."""
    es = {k: Engine(model, tok, max_batch=B, max_seq_len=max_len, speculative=k == "mtp")
          for k in ("plain", "mtp")}
    groups = [chats[i: i + B] for i in range(0, len(chats), B)]

    def chat_pair(e: Engine):
        t1 = tn = 0.0
        outs = []
        for g in groups:
            t1 += timed(nano_run, e, g, 1, False)[0]
        d0, a0 = e.stats.drafted, e.stats.accepted
        for g in groups:
            dt, o = timed(nano_run, e, g, M, False)
            tn += dt
            outs += [c.token_ids for c in o]
        return tn - t1, (outs, t1, tn, e.stats.drafted - d0, e.stats.accepted - a0)

    res = interleaved({"plain": lambda: chat_pair(es["plain"]),
                       "mtp": lambda: chat_pair(es["mtp"])}, R, W)
    outs = res["plain"][-1][1][0]
    gen = sum(len(o) for o in outs) - len(outs)  # tokens after the first of each answer
    r: dict = {k: {"decode_s": med(dt for dt, _ in v), "tokens_per_s": gen / med(dt for dt, _ in v)}
               for k, v in res.items()}
    drafted, accepted = sum(p[3] for _, p in res["mtp"]), sum(p[4] for _, p in res["mtp"])
    r["acceptance"] = accepted / drafted if drafted else 0.0
    r["speedup"] = r["plain"]["decode_s"] / r["mtp"]["decode_s"]
    r["same_tokens"] = res["mtp"][-1][1][0] == outs
    r["mean_answer_tokens"] = sum(len(o) for o in outs) / len(outs)
    r["finished_by_eos"] = sum(o[-1] == tok.eos_id for o in outs) / len(outs)
    return r


# ---------------------------------------------------------------------------------------------
# memory bandwidth, and bytes a batch-1 decode step reads


def memory_bandwidth(mbytes: int, reps: int) -> dict[str, float]:
    """GB/s of a sum (reads n bytes) and of a copy (reads n, writes n) over an mbytes fp32
    tensor."""
    n = mbytes * 2**20 // 4
    src, dst = torch.ones(n), torch.zeros(n)
    src.sum(), dst.copy_(src)  # first touch
    t_sum = med([timed(src.sum)[0] for _ in range(reps)])
    t_copy = med([timed(dst.copy_, src)[0] for _ in range(reps)])
    del src, dst
    nbytes = n * 4
    return {"sum_gbs": nbytes / t_sum / 1e9, "copy_gbs": 2 * nbytes / t_copy / 1e9}


def decode_bytes_per_token(model, kv_len: float) -> dict[str, float]:
    """Bytes one batch-1 decode step of the main model reads: every non-expert weight (attention,
    norms, routers, shared experts, dense MLPs), the whole lm_head, one embedding row,
    num_experts_per_tok of the n_routed_experts of each MoE layer, and kv_len positions of the
    latent cache (main layers)."""
    cfg = model.cfg
    el = model.embed_tokens.weight.element_size()
    dense = 0
    for name, p in model.named_parameters():
        if name.startswith("mtp.") or name == "embed_tokens.weight" or ".experts." in name:
            continue
        dense += p.numel() * p.element_size()
    moe = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoE)]
    per_expert = sum(p[0].numel() * p.element_size()
                     for p in (moe[0].experts.gate_up_proj, moe[0].experts.down_proj))
    experts = len(moe) * cfg.num_experts_per_tok * per_expert
    cache = kv_len * cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * el
    emb = cfg.hidden_size * el
    return {"dense": dense, "experts": experts, "embedding_row": emb, "cache": cache,
            "total": dense + experts + emb + cache,
            "experts_all": len(moe) * cfg.n_routed_experts * per_expert}


# ---------------------------------------------------------------------------------------------


class ModuleClock:
    """Wall time spent inside chosen callables (module forwards, engine methods), by label: the
    instance attribute is wrapped while the clock is installed, and put back by remove()."""

    def __init__(self, targets: list[tuple[object, str, str]]):
        self.acc: dict[str, float] = {}
        self.on, self.targets = False, targets
        for obj, name, label in targets:
            f = getattr(obj, name)

            def timed_call(*a, _f=f, _label=label, **k):
                if not self.on:
                    return _f(*a, **k)
                t = time.perf_counter()
                try:
                    return _f(*a, **k)
                finally:
                    self.acc[_label] = self.acc.get(_label, 0.0) + time.perf_counter() - t

            setattr(obj, name, timed_call)

    def remove(self) -> None:
        for obj, name, _ in self.targets:
            delattr(obj, name)


def decode_breakdown(run, targets: list[tuple[object, str, str]], N: int,
                     R: int) -> tuple[float, dict[str, float]]:
    """Seconds per decode step and per label: (run(N) - run(1)) / (N - 1), the median round of R."""
    clock = ModuleClock(targets)
    rounds = []
    try:
        run(N)
        for _ in range(R):
            clock.on, clock.acc = True, {}
            t = time.perf_counter()
            run(1)
            t1, a1 = time.perf_counter() - t, clock.acc
            clock.acc = {}
            t = time.perf_counter()
            run(N)
            tn, an = time.perf_counter() - t, clock.acc
            clock.on = False
            rounds.append(((tn - t1) / (N - 1),
                           {k: (v - a1.get(k, 0.0)) / (N - 1) for k, v in an.items()}))
    finally:
        clock.remove()
    return sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]


def profile_decode(model, tok: Tokenizer, hf, prompts: list[list[int]], N: int, R: int) -> None:
    """Where a decode step's time goes, by module, in both systems (wall time inside each module's
    forward, prefill subtracted as in the decode rows); then nanoseek's busiest aten ops
    (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    from nanoseek.model.model import MLA, MLP, Experts, Gate

    B, L = len(prompts), len(prompts[0])
    e = Engine(model, tok, max_batch=B, max_seq_len=L + N, speculative=False,
               max_prefill_tokens=B * L)
    labels = {MLA: "attention (absorbed MLA)", MoE: "MoE layers", Gate: "  of which routers",
              Experts: "  of which routed experts", MLP: "dense MLP + shared experts"}
    targets = [(m, "forward", labels[type(m)]) for m in model.modules() if type(m) in labels]
    targets += [(model, "hidden_states", "model forward (all layers + final norm)"),
                (model.lm_head, "forward", "lm_head"),
                (e, "_sample_append", "engine: sampling + per-row bookkeeping (TextStream)"),
                (e, "_decode", "engine decode step (all of the above)")]
    step, parts = decode_breakdown(lambda n: nano_run(e, prompts, n), targets, N, R)
    hf_targets = [(hf.model, "forward", "model forward (all layers + final norm)"),
                  (hf.lm_head, "forward", "lm_head")]
    for layer in hf.model.layers:
        hf_targets += [(layer.self_attn, "forward", "attention (MLA, re-expanded)"),
                       (layer.mlp, "forward",
                        "MoE layers" if hasattr(layer.mlp, "gate") else "dense MLP")]
    hf_step, hf_parts = decode_breakdown(lambda n: hf_run(hf, prompts, n, tok.pad_id), hf_targets,
                                         N, R)
    for name, st, p in (("nanoseek", step, parts), ("transformers", hf_step, hf_parts)):
        print(f"\n### where a decode step goes: {name}, batch {B}: {st * 1e3:.2f} ms per step "
              f"(timing wrappers on)")
        for k, v in sorted(p.items(), key=lambda kv: -kv[1]):
            print(f"  {k:56s}{v * 1e3:8.3f} ms{100 * v / st:7.1f}%")
    nano_run(e, prompts, N)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        nano_run(e, prompts, N)
    print(f"\n### nanoseek, batch {B}, {N} new tokens (prefill included): busiest aten ops, "
          f"torch.profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", help="an existing checkpoint directory (model + tokenizer) "
                    "instead of training one")
    ap.add_argument("--cache", default=str(Path(__file__).parent / ".cache" / "cpu-small-chat"),
                    help="where the trained checkpoint is kept and reused "
                    "(default bench/.cache/cpu-small-chat)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--train-docs", type=int, default=4000)
    ap.add_argument("--vocab", type=int, default=4096,
                    help="tokenizer size asked for (BPE may stop short)")
    ap.add_argument("--batches", default="1,8,64", help="decode batch sizes")
    ap.add_argument("--prompt-len", type=int, default=64, help="decode rows: tokens per prompt")
    ap.add_argument("--new-tokens", type=int, default=64,
                    help="decode rows: new tokens per sequence")
    ap.add_argument("--prefill", default="8x256", help="prefill row: PROMPTSxTOKENS")
    ap.add_argument("--chat-prompts", type=int, default=16,
                    help="MTP rows: chat prompts, run one by one (batch 1) "
                    "and in groups of --chat-batch")
    ap.add_argument("--chat-batch", type=int, default=8)
    ap.add_argument("--chat-max-tokens", type=int, default=256,
                    help="MTP rows: cap on a chat answer")
    ap.add_argument("--system-tokens", type=int, default=512,
                    help="prefix-cache rows: system prompt length")
    ap.add_argument("--bandwidth-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: a tiny training run (own cache dir), tiny sizes")
    ap.add_argument("--profile", action="store_true",
                    help="also profile nanoseek's and transformers' decode")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the compiled decode rows (nanoseek Engine(compile=True), "
                    "transformers' static cache + torch.compile); they spend about 15-30 s "
                    "compiling each shape in the warm-up round")
    ap.add_argument("--json", action="store_true", help="also print one JSON record at the end")
    args = ap.parse_args()
    if args.quick:
        args.cache = args.cache.rstrip("/") + "-quick"
        args.train_steps, args.train_docs, args.vocab = 20, 1000, 1024
        args.batches, args.prompt_len, args.new_tokens, args.prefill = "1,4", 16, 8, "2x32"
        args.chat_prompts, args.chat_batch, args.chat_max_tokens, args.system_tokens = 2, 2, 24, 96
        args.bandwidth_mb, args.repeats, args.warmup = 64, 1, 1
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    busy0 = cpu_busy()
    if busy0 is not None and busy0 > 0.1:
        print(f"warning: the CPU was {busy0:.0%} busy before starting: another job shares it",
              flush=True)
    R, W = args.repeats, args.warmup

    # ---- the checkpoint, loaded by both
    if args.checkpoint:
        ck = Path(args.checkpoint)
    else:
        root = Path(args.cache)
        ck = build_checkpoint(root, args.train_docs, args.vocab, args.train_steps,
                              128 if args.quick else 256, 4 if args.quick else 8)
    torch.set_num_threads(args.threads)
    model = load_model(ck, dtype=torch.float32).eval()
    tok = Tokenizer.load(ck)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # run the full length, as ignore_eos does
    cfg = model.cfg
    if not model.mtp:
        raise SystemExit(f"{ck}: the checkpoint has no MTP layer; the speculation rows need one")
    pad = tok.pad_id
    rec: dict = {"checkpoint": str(ck), "vocab": cfg.vocab_size, "threads": args.threads,
                 "cpu": cpu_model(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "cpu_busy_before": busy0,
                 "hf_attn_implementation": hf.config._attn_implementation,
                 "hf_experts_implementation": getattr(hf.config, "_experts_implementation", None)}
    print(f"loaded {ck}: vocab {cfg.vocab_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"(MTP included); transformers attention {rec['hf_attn_implementation']}, experts "
          f"{rec['hf_experts_implementation']}", flush=True)

    # ---- memory bandwidth, first (nothing else allocated yet)
    bw = memory_bandwidth(args.bandwidth_mb, 5)
    rec["bandwidth"] = bw
    print(f"memory bandwidth: sum {bw['sum_gbs']:.1f} GB/s, copy {bw['copy_gbs']:.1f} GB/s",
          flush=True)

    # ---- decode at each batch size: nanoseek plain, nanoseek + MTP, transformers
    L, N = args.prompt_len, args.new_tokens
    batches = [int(b) for b in args.batches.split(",")]
    pool = prompt_windows(tok, max(batches), L, EVAL_SEED)
    rec["decode"] = {}
    for B in batches:
        r = bench_decode(model, tok, hf, pool[:B], N, R, W, args.compile)
        rec["decode"][B] = r
        print(f"decode batch {B}: " + ", ".join(f"{k} {v['tokens_per_s']:.0f}" for k, v in r.items()
                                                 if isinstance(v, dict)) +
              f" tok/s; identical {r['agree_hf']:.2f} ({r['wall_s']:.0f} s)", flush=True)
    hf_cache_per_token = rec["decode"][batches[0]]["hf_cache_per_token"]
    rec["hf_cache_layer0_shapes"] = rec["decode"][batches[0]]["hf_cache_layer0_shapes"]

    # ---- prefill: time to first token of one batch
    P, T = (int(x) for x in args.prefill.lower().split("x"))
    pre_prompts = prompt_windows(tok, P, T, EVAL_SEED + 7)
    pe = {"plain": Engine(model, tok, max_batch=P, max_seq_len=T + 1, speculative=False,
                          max_prefill_tokens=P * T),
          "mtp": Engine(model, tok, max_batch=P, max_seq_len=T + 1, speculative=True,
                        max_prefill_tokens=P * T)}
    res = interleaved({"plain": lambda: timed(nano_run, pe["plain"], pre_prompts, 1),
                       "mtp": lambda: timed(nano_run, pe["mtp"], pre_prompts, 1),
                       "hf": lambda: timed(hf_run, hf, pre_prompts, 1, pad)}, R, W)
    rec["prefill"] = {k: {"ttft_s": med(dt for dt, _ in v),
                          "tokens_per_s": P * T / med(dt for dt, _ in v)}
                      for k, v in res.items()}
    rec["prefill"]["agree_first_token"] = sum(
        c.token_ids[0] == h
        for c, h in zip(res["plain"][-1][1], res["hf"][-1][1].sequences[:, T].tolist())) / P
    print(f"prefill {P}x{T}: nanoseek {rec['prefill']['plain']['tokens_per_s']:.0f} tok/s, "
          f"transformers {rec['prefill']['hf']['tokens_per_s']:.0f}", flush=True)

    # ---- cache bytes per token
    el = model.embed_tokens.weight.element_size()
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    e1 = Engine(model, tok, max_batch=1, max_seq_len=L + N,
                speculative=True)  # the engine's own count
    rec["cache"] = {"nanoseek_main": cfg.num_hidden_layers * latent * el,
                    "nanoseek_engine": e1.cache_bytes / (e1.max_batch * e1.cache.max_len),
                    "engine_layers": e1.cache.kv.shape[0],
                    "naive_kv": (cfg.num_hidden_layers * cfg.num_attention_heads
                                 * (cfg.qk_head_dim + cfg.v_head_dim) * el),
                    "transformers": hf_cache_per_token}

    # ---- MTP speculation on chat prompts, natural EOS
    chats = chat_prompts(tok, args.chat_prompts, EVAL_SEED + 13)
    S = max(len(p) for p in chats) + args.chat_max_tokens
    rec["mtp"] = {}
    for B in (1, args.chat_batch):
        r = bench_chat(model, tok, chats, B, S, args.chat_max_tokens, R, W)
        rec["mtp"][B] = r
        print(f"MTP chats batch {B}: acceptance {r['acceptance']:.2f}, "
              f"speed-up {r['speedup']:.2f}x ({r['mean_answer_tokens']:.0f} tokens an answer)",
              flush=True)

    # ---- prefix cache: time to first token, cold vs warm
    sys_text = system_prompt(tok, args.system_tokens, EVAL_SEED + 29)
    qs = [r["messages"][0]["content"]
          for r in gym_documents("basic_arithmetic", 2, seed=EVAL_SEED + 31, config=GYM_CONFIG)]
    pa, pb = (tok.encode(render_chat([{"role": "system", "content": sys_text},
                                      {"role": "user", "content": q}]))
              for q in qs)
    state: dict = {}

    def nano_cold():
        state["e"] = Engine(model, tok, max_batch=1, max_seq_len=max(len(pa), len(pb)) + 1,
                            speculative=False,
                            prefix_cache=PrefixCache(block_size=32, max_blocks=4096))
        dt, o = timed(nano_run, state["e"], [pa], 1)
        return dt, o[0].usage.cached_tokens

    def nano_warm():
        dt, o = timed(nano_run, state["e"], [pb], 1)
        return dt, o[0].usage.cached_tokens

    res = interleaved({"cold": nano_cold, "warm": nano_warm,
                       "hf": lambda: timed(hf_run, hf, [pb], 1, pad)}, R, W)
    rec["prefix"] = {"prompt_tokens": [len(pa), len(pb)], "cached_tokens": res["warm"][-1][1],
                     "cold_cached_tokens": res["cold"][-1][1],
                     **{f"{k}_s": med(dt for dt, _ in v) for k, v in res.items()}}
    print(f"prefix cache: cold {rec['prefix']['cold_s'] * 1e3:.1f} ms, "
          f"warm {rec['prefix']['warm_s'] * 1e3:.1f} ms "
          f"({rec['prefix']['cached_tokens']} of {len(pb)} tokens cached)", flush=True)

    # ---- batch-1 decode bandwidth utilisation
    if 1 in rec["decode"]:
        by = decode_bytes_per_token(model, L + N / 2)  # mean cache length over the decode
        rec["bytes_per_token_b1"] = by
        bwb = max(bw["sum_gbs"], bw["copy_gbs"]) * 1e9
        rec["utilisation_b1"] = {k: by["total"] * rec["decode"][1][k]["tokens_per_s"] / bwb
                                 for k in ("plain", "hf")}

    rec["wall_s"] = time.perf_counter() - t_start
    report(rec, args, L, N, P, T)
    if args.profile:
        for B in batches:
            profile_decode(model, tok, hf, pool[:B], N, R)
    if args.json:
        print(json.dumps(rec, default=str))


def ratio(a: float, b: float) -> str:
    return f"**{a / b:.2f}x**"


def report(rec: dict, args, L: int, N: int, P: int, T: int) -> None:
    c, d = rec["cache"], rec["decode"]
    rows = []
    for B, r in d.items():
        rows.append((f"decode tokens/s, batch {B} (plain)", f"{r['plain']['tokens_per_s']:,.0f}",
                     f"{r['hf']['tokens_per_s']:,.0f}",
                     ratio(r['plain']['tokens_per_s'], r['hf']['tokens_per_s']),
                     f"{r['agree_hf'] * B:.0f}/{B} identical"))
    for B, r in d.items():
        rows.append((f"decode tokens/s, batch {B}, MTP speculation",
                     f"{r['mtp']['tokens_per_s']:,.0f}", f"{r['hf']['tokens_per_s']:,.0f}",
                     ratio(r['mtp']['tokens_per_s'], r['hf']['tokens_per_s']),
                     f"acceptance {r['mtp_acceptance']:.2f}; "
                     f"{r['agree_mtp_plain'] * B:.0f}/{B} = plain"))
    for B, r in d.items():
        if "plain_compiled" not in r:
            continue
        hf_t, hfc_t = r["hf"]["tokens_per_s"], r["hf_compiled"]["tokens_per_s"]
        for k, name in (("plain_compiled", "compiled"),
                        ("mtp_compiled", "compiled, MTP speculation")):
            t = r[k]["tokens_per_s"]
            note = f"{r['agree_' + k] * B:.0f}/{B} = plain eager"
            if k == "mtp_compiled":
                note += f"; acceptance {r['mtp_compiled_acceptance']:.2f}"
            rows.append((f"decode tokens/s, batch {B}, {name}", f"{t:,.0f}", f"{hf_t:,.0f}",
                         ratio(t, hf_t),
                         f"{note}; vs transformers compiled ({hfc_t:,.0f}): {t / hfc_t:.2f}x"))
    p = rec["prefill"]
    rows.append((f"prefill tokens/s ({P} x {T}, time to first token)",
                 f"{p['plain']['tokens_per_s']:,.0f}", f"{p['hf']['tokens_per_s']:,.0f}",
                 ratio(p['plain']['tokens_per_s'], p['hf']['tokens_per_s']),
                 f"TTFT {p['plain']['ttft_s'] * 1e3:.0f} vs {p['hf']['ttft_s'] * 1e3:.0f} ms; "
                 f"with MTP on {p['mtp']['ttft_s'] * 1e3:.0f} ms; "
                 f"first tokens {p['agree_first_token'] * P:.0f}/{P} equal"))
    rows.append(("KV cache bytes/token, fp32, main layers", f"{c['nanoseek_main']:,}",
                 f"{c['transformers']:,.0f}", ratio(c['transformers'], c['nanoseek_main']),
                 f"latent c_kv + k_pe; the engine also caches the MTP layer: "
                 f"{c['nanoseek_engine']:,.0f} B over {c['engine_layers']} layers; "
                 f"a naive per-head K/V cache: {c['naive_kv']:,} B "
                 f"({c['naive_kv'] / c['nanoseek_main']:.1f}x)"))
    for B, r in rec["mtp"].items():
        rows.append((f"MTP on chats, batch {B}: decode tokens/s, speculation vs plain",
                     f"{r['mtp']['tokens_per_s']:,.0f} vs {r['plain']['tokens_per_s']:,.0f}", "—",
                     f"**{r['speedup']:.2f}x** over plain",
                     f"acceptance {r['acceptance']:.2f}; outputs "
                     f"{'identical' if r['same_tokens'] else 'DIFFER'}; "
                     f"{r['mean_answer_tokens']:.0f} tokens/answer, "
                     f"{r['finished_by_eos'] * 100:.0f}% ended by EOS"))
    pr = rec["prefix"]
    rows.append((f"TTFT, {pr['prompt_tokens'][1]}-token prompt, prefix cache cold (ms)",
                 f"{pr['cold_s'] * 1e3:.1f}", f"{pr['hf_s'] * 1e3:.1f}",
                 ratio(pr['hf_s'], pr['cold_s']), "first request: nothing cached"))
    rows.append(("TTFT, same prefix, other question, warm (ms)", f"{pr['warm_s'] * 1e3:.1f}",
                 f"{pr['hf_s'] * 1e3:.1f}", ratio(pr['hf_s'], pr['warm_s']),
                 f"cached_tokens {pr['cached_tokens']}; "
                 f"warm vs cold {pr['cold_s'] / pr['warm_s']:.2f}x"))
    if "utilisation_b1" in rec:
        by, u = rec["bytes_per_token_b1"], rec["utilisation_b1"]
        bwb = max(rec["bandwidth"]["sum_gbs"], rec["bandwidth"]["copy_gbs"])
        rows.append(("decode memory-bandwidth utilisation, batch 1", f"{u['plain'] * 100:.1f}%",
                     f"{u['hf'] * 100:.1f}%", ratio(u['plain'], u['hf']),
                     f"{by['total'] / 1e6:.2f} MB/token x tokens/s over {bwb:.1f} GB/s"))

    print(f"\n## Inference: nanoseek Engine vs transformers generate ({rec['checkpoint']})\n")
    print(f"```bash\npython {' '.join(sys.argv)}\n```\n")
    print(f"Machine: `{rec['cpu']}`, {rec['threads']} torch threads, torch {rec['torch']}, "
          f"transformers {rec['transformers']} (attention `{rec['hf_attn_implementation']}`, "
          f"experts `{rec['hf_experts_implementation']}`), fp32, vocab {rec['vocab']}. "
          f"Medians of {args.repeats} interleaved rounds after {args.warmup} warm-up; "
          f"whole run {rec['wall_s']:.0f} s; CPU busy before the start: "
          f"{'?' if rec['cpu_busy_before'] is None else format(rec['cpu_busy_before'], '.0%')}.\n")
    print("| metric | nanoseek | transformers | ratio | check / note |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nratio = nanoseek's advantage: nanoseek / transformers for rates, "
          f"transformers / nanoseek for times and bytes. "
          f"Decode rows: {L}-token prompts (fresh basic_arithmetic chats cut at a document "
          f"start), greedy, ignore_eos, {N} new tokens; "
          f"decode time = t({N} tokens) - t(1 token), so prefill is excluded; "
          f"tokens/s = batch x {N - 1} / decode time. "
          f"transformers: generate(do_sample=False, max_new_tokens={N}, min_new_tokens={N}) "
          f"with eos_token_id None (so it never stops early), DynamicCache, inference_mode. "
          f"'identical' = sequences whose {N} greedy tokens equal transformers'.")
    if "utilisation_b1" in rec:
        by = rec["bytes_per_token_b1"]
        bw = rec["bandwidth"]
        print(f"\nBandwidth: {args.bandwidth_mb} MB fp32 tensor, median of 5: "
              f"sum {bw['sum_gbs']:.1f} GB/s (bytes read), copy {bw['copy_gbs']:.1f} GB/s "
              f"(read + write); the larger is the denominator. "
              f"Bytes per batch-1 token: non-expert weights incl. lm_head and shared experts "
              f"{by['dense'] / 1e6:.2f} MB + the routed experts used "
              f"(num_experts_per_tok of n_routed_experts per MoE layer) "
              f"{by['experts'] / 1e6:.2f} MB (all of them: {by['experts_all'] / 1e6:.2f} MB) "
              f"+ one embedding row + the latent cache at the mean length {L + N / 2:.0f}, "
              f"{by['cache'] / 1e3:.0f} KB = {by['total'] / 1e6:.2f} MB. "
              f"MTP weights not counted. The same bytes for transformers (it stores the same "
              f"latent; its kv_b_proj re-expansion reads weights already counted). Weights this "
              f"small may partly stay in the CPU's caches, so this is a memory-traffic view, "
              f"not a roofline.")
    for B, r in d.items():
        print(f"\nbatch {B}: ms per decode step (plain) "
              f"nanoseek {r['plain']['decode_s'] / (N - 1) * 1e3:.2f}, "
              f"transformers {r['hf']['decode_s'] / (N - 1) * 1e3:.2f}; TTFT nanoseek "
              f"{r['plain']['ttft_s'] * 1e3:.1f} ms, +MTP {r['mtp']['ttft_s'] * 1e3:.1f}, "
              f"transformers {r['hf']['ttft_s'] * 1e3:.1f}; "
              f"first tokens equal {r['agree_hf_first_token'] * B:.0f}/{B}", end="")
    print()


if __name__ == "__main__":
    main()
