"""Training steps with causal attention over each packed row against block-causal attention inside
each document (TrainConfig.attn_mask), on the shipped model's own shape and corpus.

The pipeline's pretraining rows are 512 tokens of worked problems (113 tokens each on average), so
causal attention over a row spends most of its score pairs between unrelated problems.
Block-causal runs two ways: through SDPA's CPU flash kernel (block_causal_sdpa), and written out
as the CPU now does it (product, mask, softmax: model.WRITTEN_OUT). The
variants start from the same weights and read the same batches from the same PackedLoader order;
their steps alternate so that they share the machine's noise; medians are reported. A step is what
`nanoseek train` runs: forward (main and MTP losses), backward, clipping at 1.0, AdamW, the bias
update. The profile's SDPA share comes from one more profiled step of each SDPA variant.

    python bench/bench_attn_mask.py                 # the default preset's teacher, 4 x 512
    python bench/bench_attn_mask.py --steps 30 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import profile

import nanoseek.model.model as model_module
from nanoseek.data import PackedLoader, prepare_corpus
from nanoseek.files import write_jsonl
from nanoseek.hardware import cpu_model
from nanoseek.model.config import resolve_config
from nanoseek.model.model import Documents, Transformer, update_correction_bias
from nanoseek.pipeline import PRESETS, Pipeline
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.pretrain import TrainConfig, build_optimizer

# block_causal_sdpa: block-causal through SDPA's CPU flash kernel, as before the CPU wrote it out
# (model.WRITTEN_OUT)
VARIANTS = ("causal", "block_causal_sdpa", "block_causal")


def corpus(work: Path, docs: int) -> tuple[Path, int, int]:
    """The default preset's pretraining documents, tokenized as its corpus stage does."""
    preset = PRESETS["default"]
    rows = Pipeline(work / "pipeline", preset, progress=False).documents(docs, seed=0)
    write_jsonl(iter(rows), work / "corpus.jsonl")
    tok = train_tokenizer([r["text"] for r in rows], vocab_size=preset.vocab, split_digits=True)
    prepare_corpus(str(work / "corpus.jsonl"), tok, work / "data", val_fraction=0.01, seed=0,
                   progress=False)
    return work / "data", tok.vocab_size, tok.eos_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=4000, help="corpus documents to tokenize")
    ap.add_argument("--batch", type=int, default=PRESETS["default"].micro_batch)
    ap.add_argument("--seq", type=int, default=PRESETS["default"].seq_len)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data, vocab, eos = corpus(Path(tempfile.mkdtemp(prefix="bench_attn_mask_")), args.docs)
    preset = PRESETS["default"]
    cfg = resolve_config(preset.teacher).replace(vocab_size=vocab, **preset.teacher_shape)
    tcfg = TrainConfig(data=str(data), seq_len=args.seq, micro_batch_size=args.batch, lr=1e-3,
                       warmup_steps=0, schedule="constant")
    models, opts, loaders = {}, {}, {}
    for name in VARIANTS:
        torch.manual_seed(0)
        models[name] = Transformer(cfg).train()
        opts[name] = build_optimizer(models[name], tcfg)
        loaders[name] = PackedLoader(data / "train.bin", args.seq, args.batch, seed=0)

    def step(name: str) -> float:
        model, (x, y) = models[name], loaders[name].next_batch()
        documents = Documents.starts(x, eos) if name.startswith("block_causal") else None
        model_module.WRITTEN_OUT = () if name == "block_causal_sdpa" else ("cpu",)
        out = model(x, y, documents=documents)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        update_correction_bias(model)
        return out.main_loss.item()

    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    losses: dict[str, list[float]] = {n: [] for n in VARIANTS}
    for i in range(args.warmup + args.steps):
        for name in VARIANTS:
            t0 = time.perf_counter()
            losses[name].append(step(name))
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    share = {"block_causal": None}  # written out: its attention is matmuls among the others
    for name in VARIANTS[:2]:
        with profile() as prof:
            step(name)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
        share[name] = round(attn / total, 3)

    x, _ = PackedLoader(data / "train.bin", args.seq, args.batch, seed=0).next_batch()
    lengths = torch.diff(torch.cat([Documents.starts(x, eos).flatten().nonzero().squeeze(1),
                                    torch.tensor([x.numel()])])).float()
    rec = dict(device=cpu_model(), torch=torch.__version__, threads=args.threads,
               batch=args.batch, seq=args.seq, steps=args.steps,
               documents_per_row=round(len(lengths) / args.batch, 2),
               score_pairs_ratio=round(float((lengths * (lengths + 1)).sum()
                                             / (args.batch * args.seq * (args.seq + 1))), 3))
    for name in VARIANTS:
        rec[name] = dict(step_ms=round(1e3 * statistics.median(times[name]), 1),
                         attention_share=share[name], first_loss=round(losses[name][0], 4),
                         last_loss=round(losses[name][-1], 4))
    rec["speedup"] = {n: round(rec["causal"]["step_ms"] / rec[n]["step_ms"], 2)
                      for n in VARIANTS[1:]}
    if args.json:
        print(json.dumps(rec))
        return
    print(f"the default preset's teacher, fp32, {rec['device']}, {args.threads} threads, "
          f"torch {torch.__version__}; batch {args.batch} x {args.seq}, "
          f"{rec['documents_per_row']} documents a row (the first batch): block-causal scores "
          f"{rec['score_pairs_ratio']} of the row's pairs")
    print(f"  {'attn_mask':18}{'ms/step':>9}{'SDPA share':>12}{'loss 1st':>10}{'loss last':>10}")
    for name in VARIANTS:
        v = rec[name]
        print(f"  {name:18}{v['step_ms']:>9}{v['attention_share'] or '—':>12}"
              f"{v['first_loss']:>10}{v['last_loss']:>10}")
    for name, x in rec["speedup"].items():
        print(f"  {name} is {x}x as fast a step as causal (medians of {args.steps})")


if __name__ == "__main__":
    main()
