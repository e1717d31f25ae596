"""Load-balancing ablation (DeepSeek-V3 §2.1.2) at toy scale: the same MoE model, seed, data and
token count trained three ways, with the loss reached and the expert-load imbalance (MaxVio) of
each.

    aux-free  aux-loss-free balancing (bias b += gamma * sign(mean load - load) after every step)
              plus the tiny sequence-wise balance loss alpha = 1e-4, as V3 trains
    aux-loss  the sequence-wise balance loss alone (gamma = 0), alpha = --alpha-aux
    none      no balancing at all (gamma = 0, alpha = 0)

V3 reports that the aux-loss-free strategy balances the experts at least as well as an auxiliary
loss while costing less model quality, because the bias steers only which experts are chosen and
never adds a gradient that fights the language-modelling loss. This script checks that claim on a
corpus of reasoning-gym tasks (one file per task, so a packed training row mostly holds one task: a
"domain").

MaxVio = max load / mean load - 1 (0 = perfectly balanced), per MoE layer, measured three ways:
  train batch  the load of each optimizer step's global batch (what the trainer logs in
               metrics.jsonl and the bias update sees), averaged over the last --tail fraction of
               the steps
  val global   the load summed over the whole validation split, with the final weights and biases
  val seq      the load of each validation sequence, averaged over sequences (what the
               sequence-wise loss pushes down; noisy by nature: a 256-token row routes only 512
               tokens to 16 experts)
A "random" row gives the MaxVio that uniformly random routing of the same token counts would show:
the floor that sampling noise alone sets for each column.

    python bench/ablation_balance.py          # cpu-small, 3 x 300 steps, ~10 min on 2 cores
    python bench/ablation_balance.py --steps 40 --docs-per-task 200   # a quick smoke run
    python bench/ablation_balance.py --gamma 0.001,0.01 --json out.json   # V3's gamma as well
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nanoseek.data import PackedLoader, prepare_corpus
from nanoseek.files import write_jsonl
from nanoseek.model.model import MoE, Transformer
from nanoseek.tasks.gym import gym_documents
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.pretrain import TrainConfig, train

TASKS = ("basic_arithmetic", "chain_sum", "products", "gcd", "lcm", "number_sorting",
         "fraction_simplification", "prime_factorization", "base_conversion", "count_bits",
         "letter_counting", "spell_backward")


# ---------------------------------------------------------------------------------------------
# corpus


def build_corpus(work: Path, tasks: list[str], docs_per_task: int, vocab: int, val_fraction: float,
                 seed: int) -> dict[str, Any]:
    """reasoning-gym documents (one .jsonl per task) -> a byte-level BPE -> train.bin / val.bin.
    Reused when `work` already holds a corpus built with the same settings."""
    spec = {"tasks": tasks, "docs_per_task": docs_per_task, "vocab": vocab,
            "val_fraction": val_fraction, "seed": seed}
    stamp = work / "corpus.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == spec:
        return json.loads(stamp.read_text())["meta"]
    t0 = time.perf_counter()
    texts: list[str] = []
    for i, task in enumerate(tasks):
        rows = list(gym_documents(task, docs_per_task, seed=seed + i))
        write_jsonl(rows, work / "corpus" / f"{i:02d}_{task}.jsonl")
        texts += [r["text"] for r in rows]
    tok = train_tokenizer(texts, vocab_size=vocab)
    tok.save(work / "tokenizer")
    meta = prepare_corpus(str(work / "corpus" / "*.jsonl"), tok, work / "data",
                          val_fraction=val_fraction, seed=seed, field="text", progress=False)
    stamp.write_text(json.dumps({"spec": spec, "meta": meta}, indent=1))
    print(f"corpus: {len(texts):,} documents from {len(tasks)} tasks, "
          f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"vocab {tok.vocab_size} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return meta


# ---------------------------------------------------------------------------------------------
# measurements


def max_vio(load: torch.Tensor) -> torch.Tensor:
    """MaxVio along the last dim."""
    load = load.float()
    return load.amax(-1) / load.mean(-1).clamp_min(1e-9) - 1


@torch.no_grad()
def measure_val(model: Transformer, data: Path, seq_len: int, batch: int) -> dict[str, Any]:
    """One pass over the whole validation split with the final weights and correction biases: the
    mean main loss, and MaxVio per main-model MoE layer over the split, per micro-batch and per
    sequence."""
    moe = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoE)]
    E = model.cfg.n_routed_experts
    routed: list[torch.Tensor] = []
    hooks = [m.gate.register_forward_hook(lambda mod, inp, out: routed.append(out[1])) for m in moe]
    loader = PackedLoader(data / "val.bin", seq_len, batch, seed=0)
    model.eval()
    total = torch.zeros(len(moe), E)
    batch_vio, seq_vio, losses = [], [], []
    try:
        for _ in range(loader.steps_per_epoch):
            x, y = loader.next_batch()
            routed.clear()
            losses.append(model(x, y, mtp=False).main_loss.item())
            # (layers, b, s*K) expert ids -> (layers, b, E) tokens per expert in each sequence
            idx = torch.stack(routed).view(len(moe), x.shape[0], -1)
            per_seq = torch.zeros(len(moe), x.shape[0], E).scatter_add_(
                2, idx, torch.ones_like(idx, dtype=torch.float))
            total += per_seq.sum(1)
            batch_vio.append(max_vio(per_seq.sum(1)))
            seq_vio.append(max_vio(per_seq).mean(1))
    finally:
        for h in hooks:
            h.remove()
    n_seq, K = loader.steps_per_epoch * batch, model.cfg.num_experts_per_tok
    return {"val_loss": statistics.fmean(losses), "val_sequences": n_seq,
            "global": max_vio(total).tolist(), "batch": torch.stack(batch_vio).mean(0).tolist(),
            "seq": torch.stack(seq_vio).mean(0).tolist(),
            "random": random_routing_vio(E, K, seq_len, batch, n_seq)}


def random_routing_vio(E: int, K: int, seq_len: int, batch: int, n_seq: int,
                       trials: int = 200) -> dict[str, float]:
    """MaxVio of uniformly random top-K routing at the same token counts: the sampling-noise
    floor."""
    g = torch.Generator().manual_seed(0)

    def vio(tokens: int) -> float:
        idx = torch.rand(trials, tokens, E, generator=g).topk(K, dim=-1)[1].view(trials, -1)
        load = torch.zeros(trials, E).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
        return max_vio(load).mean().item()

    return {"seq": vio(seq_len), "batch": vio(seq_len * batch),
            "global": vio(min(seq_len * n_seq, 200_000))}


def summarize(run: Path, n_main: int, tail: float) -> dict[str, Any]:
    """Tail means of metrics.jsonl: main loss, and the training-batch MaxVio of the main MoE layers
    (`max_vio`; the MTP modules' MoE layers are logged apart as `max_vio_mtp`)."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    last = recs[-max(1, math.ceil(tail * len(recs))):]
    # vio: (steps, main then MTP layers)
    vio = torch.tensor([r["max_vio"] + r.get("max_vio_mtp", []) for r in last])
    per_layer = vio[:, :n_main].mean(0)
    return {"steps": recs[-1]["step"], "tokens": recs[-1]["tokens"], "tail_steps": len(last),
            "train_main_loss": statistics.fmean(r["main_loss"] for r in last),
            "train_val_loss": next((r["val_loss"] for r in reversed(recs) if "val_loss" in r),
                                   None),
            "train_batch_vio": per_layer.tolist(),
            "train_batch_vio_mtp": vio[:, n_main:].mean().item() if vio.shape[1] > n_main else None,
            "elapsed_s": recs[-1]["elapsed_s"],
            "curve": [(r["step"], r["main_loss"], statistics.fmean(r["max_vio"][:n_main]))
                      for r in recs]}


# ---------------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    head = ("| variant | γ | α | tokens | train loss (last {tail}) | val loss "
            "| MaxVio train batch, mean (max layer) "
            "| MaxVio val global, mean (max) | MaxVio val seq, mean |")
    rows = [head.format(tail=f"{results[0]['tail_steps']} steps"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        tb, vg, vs = r["train_batch_vio"], r["val"]["global"], r["val"]["seq"]
        rows.append(f"| {r['variant']} | {r['gamma']:g} | {r['alpha']:g} | {r['tokens']:,} | "
                    f"{r['train_main_loss']:.4f} | {r['val']['val_loss']:.4f} | "
                    f"{statistics.fmean(tb):.3f} ({max(tb):.3f}) | "
                    f"{statistics.fmean(vg):.3f} ({max(vg):.3f}) | "
                    f"{statistics.fmean(vs):.3f} |")
    rnd = results[0]["val"]["random"]
    rows.append(f"| random routing (noise floor) | | | | | | {rnd['batch']:.3f} | "
                f"{rnd['global']:.3f} | {rnd['seq']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--work-dir", default="",
                    help="corpus, tokenizer and runs go here (kept; a corpus built with "
                         "the same settings is reused); default: a temporary directory")
    ap.add_argument("--preset", default="cpu-small",
                    help="model preset (default cpu-small: 16 routed experts, "
                         "top-2, 3 MoE layers + the MTP one)")
    ap.add_argument("--variants", default="aux-free,aux-loss,none",
                    help="comma-separated subset to run")
    ap.add_argument("--gamma", default="0.01",
                    help="bias update speed of aux-free (default 0.01; V3's 0.001 cannot move the "
                         "bias far enough in a few hundred steps); a comma-separated list runs "
                         "aux-free once per value")
    ap.add_argument("--alpha-v3", type=float, default=1e-4,
                    help="sequence-wise loss alpha kept alongside aux-free (V3: 0.0001)")
    ap.add_argument("--alpha-aux", type=float, default=1e-2,
                    help="sequence-wise loss alpha of the aux-loss-only baseline (default 0.01, "
                         "the usual Switch/GShard-style strength)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--seq", type=int, default=256, help="tokens per row")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0,
                    help="weights, data order and corpus seed (same for every run)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="reasoning-gym tasks, comma-separated")
    ap.add_argument("--docs-per-task", type=int, default=1500)
    ap.add_argument("--vocab", type=int, default=2048,
                    help="tokenizer vocabulary (the model's follows it)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--tail", type=float, default=0.1, help="fraction of the last steps averaged")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="",
                    help="also write all results (with loss/MaxVio curves) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    kinds = ("aux-free", "aux-loss", "none")
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(kinds))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(kinds)}")
    gammas = [float(g) for g in args.gamma.split(",") if g.strip()]
    if not gammas or min(gammas) <= 0:
        ap.error("--gamma: one or more values > 0")
    variants: dict[str, tuple[float, float]] = {}  # run name -> (gamma, alpha)
    for kind in chosen:
        if kind == "aux-free":
            variants.update({kind if len(gammas) == 1 else f"{kind}-g{g:g}": (g, args.alpha_v3)
                             for g in gammas})
        else:
            variants[kind] = (0.0, args.alpha_aux) if kind == "aux-loss" else (0.0, 0.0)

    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="nanoseek-ablation-")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        build_corpus(work, [t.strip() for t in args.tasks.split(",") if t.strip()],
                     args.docs_per_task, args.vocab, args.val_fraction, args.seed)
        results = []
        for name, (gamma, alpha) in variants.items():
            run = work / "runs" / name
            cfg = TrainConfig(model=args.preset, data=str(work / "data"), out_dir=str(run),
                              seq_len=args.seq, micro_batch_size=args.batch, max_steps=args.steps,
                              lr=args.lr, warmup_steps=args.warmup, eval_every=args.steps,
                              eval_batches=8, save_every=0, keep_last=1, seed=args.seed,
                              device=args.device, progress=sys.stderr.isatty(),
                              extra={"bias_update_speed": gamma, "aux_loss_alpha": alpha},
                              overwrite=True)  # a fresh run, not an append to an old one
            model, last = train(cfg)
            if last.get("step") != args.steps:
                sys.exit(f"{name}: training stopped at step {last.get('step')} of {args.steps}")
            n_main = sum(isinstance(layer.mlp, MoE) for layer in model.layers)
            res = {"variant": name, "gamma": gamma, "alpha": alpha,
                   **summarize(run, n_main, args.tail),
                   "val": measure_val(model.to("cpu"), work / "data", args.seq, args.batch),
                   "bias_abs_max": max(m.gate.e_score_correction_bias.abs().max().item()
                                       for m in model.moe_layers())}
            results.append(res)
            print(f"{name}: γ={gamma:g} α={alpha:g}  train loss {res['train_main_loss']:.4f}  "
                  f"val loss {res['val']['val_loss']:.4f}  "
                  f"MaxVio batch {statistics.fmean(res['train_batch_vio']):.3f}  "
                  f"max|b| {res['bias_abs_max']:.3f}  ({res['elapsed_s']:.0f} s)", flush=True)
        if len({r["tokens"] for r in results}) > 1:
            sys.exit("the runs did not see the same number of tokens")
        print()
        print(table(results))
        if args.json:
            env = {"torch": torch.__version__, "python": platform.python_version(),
                   "threads": args.threads, "device": args.device, "args": vars(args)}
            Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
