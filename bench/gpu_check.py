"""nanoseek on one GPU, checked in one run: precision, training speed, decode, GRPO (and optionally
the gpu-100m pipeline), side by side with transformers on the same weights, in one summary table.

    bash bench/gpu_check.sh                       # on the GPU machine (installs the wheels first)
    python bench/gpu_check.py --only decode,grpo  # some sections
    python bench/gpu_check.py --pipeline          # also `nanoseek pipeline --preset gpu-100m`

Sections (each runs on its own: a failure is reported in the table, the others still run):
  precision  a training step (forward, backward, fused AdamW, bias update) under bf16
             autocast and in pure bf16 for every model shape (MoE + MTP + q LoRA, no q LoRA, no
             MTP, dense): finite losses that fall on a repeated batch; the bf16 engine's CUDA-graph
             decode against its eager decode, and the fp32 engine's greedy tokens against
             transformers' generate on the shipped model
  train      bench_model.py at 16 x 1024 and 64 x 256 (gpu-100m, bf16, nanoseek compiled per block
             against transformers compiled whole), and the trainer's own logged MFU over 30 steps
  decode     gpu-100m weights in bf16, prompt 64 + 128 new tokens, greedy, ignore_eos: the engine
             (CUDA graphs) against transformers.generate, batch 1 and 64
  grpo       a GRPO step of 32 prompts x 8 samples of <= 128 tokens on gpu-100m weights
  pipeline   (--pipeline) the whole gpu-100m recipe, its wall time and report
Prints one JSON record per section as it goes, then the table; --out writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "nanoseek" / "assets" / "model"
SECTIONS = ("precision", "train", "decode", "grpo")
# --smoke: every section on the CPU at toy sizes, to check the script itself where there is no GPU
DEV, PRESET, SMOKE = "cuda", "gpu-100m", False


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def shapes():
    """The model shapes item 1 covers, from the tiny preset."""
    from nanoseek.model import get_preset

    base = get_preset("tiny").replace(vocab_size=512)
    return {"moe+mtp+q_lora": base, "no q_lora": base.replace(q_lora_rank=None),
            "no mtp": base.replace(num_nextn_predict_layers=0),
            "dense": base.replace(first_k_dense_replace=base.num_hidden_layers)}


def train_steps(model, pure_bf16: bool, steps: int = 8) -> list[float]:
    """Steps on one repeated batch, as the trainer takes them; the losses."""
    from nanoseek import hardware
    from nanoseek.model.model import update_correction_bias

    dev = torch.device(DEV)
    if pure_bf16:
        model.to(torch.bfloat16)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (4, 65), generator=rng)
    x, y = ids[:, :-1].to(dev), ids[:, 1:].to(dev)
    losses = []
    for _ in range(steps):
        with hardware.autocast(dev):
            out = model(x, y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        update_correction_bias(model)
        losses.append(out.loss.item())
    return losses


def precision(args) -> dict:
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.model.model import Transformer
    from nanoseek.tokenizer import Tokenizer, render_chat

    rec: dict = {"train": {}}
    for name, cfg in shapes().items():
        for mode in ("autocast", "pure_bf16"):
            torch.manual_seed(0)
            losses = train_steps(Transformer(cfg).to(DEV), mode == "pure_bf16")
            ok = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
            rec["train"][f"{name} {mode}"] = {"first": round(losses[0], 4),
                                              "last": round(losses[-1], 4),
                                              "ok": ok and losses[-1] < losses[0]}
    # the shipped model: fp32 greedy against transformers; bf16 CUDA graphs against bf16 eager
    import transformers

    tok = Tokenizer.load(SHIPPED)
    questions = ["What is 2 + 3?", "Calculate 12 + 7.", "Calculate 45 - 3 + 8.", "What is 7 * 6?"]
    prompts = [render_chat([{"role": "user", "content": q}]) for q in questions]
    greedy = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    fp32 = Engine.from_checkpoint(str(SHIPPED), device=DEV, dtype="float32", max_batch=8,
                                  speculative=False)
    ours = [c.token_ids for c in fp32.generate(prompts, greedy)]
    hf = transformers.AutoModelForCausalLM.from_pretrained(SHIPPED, dtype=torch.float32).to(DEV)
    hf.generation_config.eos_token_id = None
    same = 0
    for p, o in zip(prompts, ours):
        ids = torch.tensor([tok.encode(p)], device=DEV)
        out = hf.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=0)
        same += out[0, ids.shape[1]:].tolist() == o
    rec["fp32_greedy_equal_transformers"] = f"{same}/{len(prompts)}"
    eager = Engine.from_checkpoint(str(SHIPPED), device=DEV, dtype="bfloat16", max_batch=8,
                                   speculative=False)
    graphs = Engine.from_checkpoint(str(SHIPPED), device=DEV, dtype="bfloat16", max_batch=8,
                                    speculative=False, compile=True)
    a = [c.token_ids for c in eager.generate(prompts, greedy)]
    b = [c.token_ids for c in graphs.generate(prompts, greedy)]
    rec["bf16_graphs_equal_eager"] = f"{sum(x == y for x, y in zip(a, b))}/{len(prompts)}"
    rec["graphs_recorded"] = len(graphs.runner.graphs or {})
    rec["ok"] = (all(r["ok"] for r in rec["train"].values()) and same == len(prompts))
    return rec


def train(args) -> dict:
    rec: dict = {}
    shapes = ((2, 64), (2, 32)) if SMOKE else ((16, 1024), (64, 256))
    for (batch, seq), name in zip(shapes, ("16x1024", "64x256")):
        cmd = [sys.executable, str(ROOT / "bench" / "bench_model.py"), "--preset", PRESET,
               "--device", DEV, "--dtype", "bfloat16", "--batch", str(batch), "--seq", str(seq),
               "--compile", "--json", "--steps", "10", "--warmup", "3",
               "--peak-n", "512" if SMOKE else "8192"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.section_timeout)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        for mode, run in r["runs"].items():
            rec[f"{name} {mode}"] = {
                "nanoseek_ms": run["nanoseek"]["step_ms"],
                "transformers_ms": run["transformers"]["step_ms"], "ratio": run["ratio"],
                "nanoseek_pct_peak": run["nanoseek"]["pct_peak"],
                "matmul_peak_tflops": round(r["matmul_peak_gflops"] / 1e3, 1)}
    rec["trainer_mfu"] = trainer_mfu()
    return rec


def trainer_mfu(steps: int = 30) -> dict:
    """The trainer's own logged MFU (6 N_active + attention per token against the bf16 datasheet
    peak): gpu-100m, compiled per block, micro-batch 64 x 256 as the pipeline trains."""
    from nanoseek.data import prepare_corpus
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.pretrain import TrainConfig
    from nanoseek.train.pretrain import train as pretrain

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = torch.Generator().manual_seed(0)
        nums = torch.randint(0, 100, (2000 if SMOKE else 200_000, 2), generator=rng).tolist()
        (d / "corpus.txt").write_text("\n\n".join(f"{a} + {b} = {a + b}" for a, b in nums))
        tok = Tokenizer.load(SHIPPED)
        prepare_corpus(str(d / "corpus.txt"), tok, d / "data", val_fraction=0.01,
                       txt_mode="blocks", progress=False)
        cfg = TrainConfig(model=PRESET, data=str(d / "data"), out_dir=str(d / "run"),
                          seq_len=64 if SMOKE else 256, micro_batch_size=4 if SMOKE else 64,
                          max_steps=6 if SMOKE else steps, eval_every=0, save_every=0,
                          compile=True, progress=False, warmup_steps=5, device=DEV)
        pretrain(cfg)
        rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    late = rows[len(rows) // 2:]
    return {"mfu_pct": round(100 * statistics.median(r["mfu"] for r in late), 1),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in late)),
            "first_step_s": round(rows[0]["elapsed_s"], 1)}


def gpu100m_checkpoint(d: Path) -> Path:
    """gpu-100m weights (random, seed 0) with the shipped tokenizer, saved as a checkpoint."""
    from nanoseek.checkpoint import save_model
    from nanoseek.model import get_preset
    from nanoseek.model.model import Transformer
    from nanoseek.tokenizer import Tokenizer

    torch.manual_seed(0)
    save_model(Transformer(get_preset(PRESET)), d, Tokenizer.load(SHIPPED))
    return d


def decode(args) -> dict:
    import transformers

    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams

    rec: dict = {}
    with tempfile.TemporaryDirectory() as d:
        ck = gpu100m_checkpoint(Path(d))
        t0 = time.perf_counter()
        engine = Engine.from_checkpoint(str(ck), device=DEV, dtype="bfloat16", max_batch=64,
                                        max_seq_len=256, speculative=False, compile=True)
        rec["graph_capture_s"] = round(time.perf_counter() - t0, 1)
        hf = transformers.AutoModelForCausalLM.from_pretrained(ck, dtype=torch.bfloat16).to(DEV)
        hf.generation_config.eos_token_id = None
    vocab = engine.cfg.vocab_size
    n_new, plen = (8, 16) if SMOKE else (128, 64)
    for b in (1, 64):
        ids = torch.randint(3, vocab, (b, plen), generator=torch.Generator().manual_seed(b))
        params = SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True)
        ours, theirs = [], []
        for _ in range(4):  # the first round warms up; rounds alternate
            sync()
            t = time.perf_counter()
            engine.generate([row.tolist() for row in ids], params)
            sync()
            ours.append(time.perf_counter() - t)
            sync()
            t = time.perf_counter()
            hf.generate(ids.to(DEV), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                        pad_token_id=0)
            sync()
            theirs.append(time.perf_counter() - t)
        ns, ts = statistics.median(ours[1:]), statistics.median(theirs[1:])
        rec[f"batch {b}"] = {"nanoseek_tokens_per_s": round(b * n_new / ns),
                             "transformers_tokens_per_s": round(b * n_new / ts),
                             "ratio": round(ts / ns, 1)}
    return rec


def grpo(args) -> dict:
    from nanoseek.train.grpo import GRPOConfig, train_grpo

    with tempfile.TemporaryDirectory() as d:
        ck = gpu100m_checkpoint(Path(d) / "model")
        cfg = GRPOConfig(model=str(ck), task="gym:basic_arithmetic", task_size=600, held_out=50,
                         out_dir=str(Path(d) / "run"), steps=3 if SMOKE else 5,
                         prompts_per_step=4 if SMOKE else 32, group_size=8,
                         max_tokens=16 if SMOKE else 128, micro_batch_size=64, eval_every=0,
                         save_every=0, progress=False, train_zero_advantage=True, device=DEV)
        train_grpo(cfg)
        rows = [json.loads(x) for x in (Path(d) / "run" / "metrics.jsonl").read_text()
                .splitlines()]
    late = rows[1:]  # the first step also records the engine's graphs and warms the kernels
    step = statistics.median(r["rollout_s"] + r["train_s"] for r in late)
    return {"step_s": round(step, 2),
            "rollout_s": round(statistics.median(r["rollout_s"] for r in late), 2),
            "train_s": round(statistics.median(r["train_s"] for r in late), 2),
            "mean_response_len": round(statistics.median(r["response_len"] for r in late), 1)}


def pipeline(args) -> dict:
    out = Path(tempfile.mkdtemp(prefix="gpu100m-"))
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "nanoseek", "pipeline", "--preset", "gpu-100m",
                          "--out-dir", str(out)], capture_output=True, text=True)
    rec = {"wall_s": round(time.perf_counter() - t), "returncode": run.returncode, "out": str(out)}
    report = out / "report.md"
    if report.exists():
        rec["report"] = report.read_text()
    else:
        rec["stderr"] = run.stderr[-3000:]
    return rec


TARGETS = [  # (section, label, how to read it, target, passes)
    ("train", "MFU, trainer, 64 x 256", lambda r: r["trainer_mfu"]["mfu_pct"], ">= 40 %",
     lambda v: v >= 40),
    ("train", "train step vs transformers, 16 x 1024 compiled",
     lambda r: r["16x1024 compiled"]["ratio"], ">= 3x", lambda v: v >= 3),
    ("train", "% of measured bf16 peak, 16 x 1024 compiled",
     lambda r: r["16x1024 compiled"]["nanoseek_pct_peak"], ">= 40 %", lambda v: v >= 40),
    ("decode", "decode tokens/s, batch 1", lambda r: r["batch 1"]["nanoseek_tokens_per_s"],
     ">= 1,500", lambda v: v >= 1500),
    ("decode", "decode vs transformers, batch 1", lambda r: r["batch 1"]["ratio"], ">= 10x",
     lambda v: v >= 10),
    ("decode", "decode tokens/s, batch 64", lambda r: r["batch 64"]["nanoseek_tokens_per_s"],
     ">= 50,000", lambda v: v >= 50_000),
    ("decode", "decode vs transformers, batch 64", lambda r: r["batch 64"]["ratio"], ">= 10x",
     lambda v: v >= 10),
    ("grpo", "GRPO step, 32 x 8 x <= 128 tokens (s)", lambda r: r["step_s"], "<= 0.6",
     lambda v: v <= 0.6),
    ("precision", "bf16 training of every shape, fp32 greedy = transformers", lambda r: r["ok"],
     "all", bool),
    ("pipeline", "gpu-100m pipeline, end to end (s)", lambda r: r["wall_s"], "<= 600",
     lambda v: v <= 600),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default: {','.join(SECTIONS)})")
    ap.add_argument("--pipeline", action="store_true", help="also run the gpu-100m pipeline")
    ap.add_argument("--section-timeout", type=int, default=300,
                    help="seconds a bench_model.py run may take")
    ap.add_argument("--out", type=Path, help="also write the records and the table here (JSON)")
    ap.add_argument("--smoke", action="store_true",
                    help="on the CPU at toy sizes: checks this script, measures nothing")
    args = ap.parse_args()
    global DEV, PRESET, SMOKE
    if args.smoke:
        DEV, PRESET, SMOKE = "cpu", "tiny", True
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (this check is for a GPU machine; --smoke runs it on "
                 "the CPU at toy sizes)")
    wanted = [s for s in args.only.split(",") if s] + (["pipeline"] if args.pipeline else [])
    unknown = set(wanted) - {*SECTIONS, "pipeline"}
    if unknown:
        sys.exit(f"gpu_check: unknown section(s) {', '.join(sorted(unknown))}; "
                 f"choose from {', '.join(SECTIONS)}")
    import transformers

    transformers.logging.set_verbosity_error()  # the MTP layer it does not load is not news
    warnings.filterwarnings("ignore")
    device = "CPU smoke run" if SMOKE else torch.cuda.get_device_name()
    print(f"# {device}, torch {torch.__version__}", flush=True)
    results: dict = {}
    for name in wanted:
        t = time.perf_counter()
        try:
            results[name] = globals()[name](args)
        except Exception:  # noqa: BLE001 (report it, go on with the next section)
            results[name] = {"error": traceback.format_exc()[-3000:]}
        results[name]["section_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps({name: results[name]}), flush=True)
    rows = []
    for section, label, read, target, passes in TARGETS:
        if section not in results:
            continue
        try:
            v = read(results[section])
            rows.append((label, v, target, "yes" if passes(v) else "NO"))
        except Exception:  # noqa: BLE001 (the section failed: its error is printed above)
            rows.append((label, "failed", target, "NO"))
    print(f"\n| measure ({device}) | value | target | met |")
    print("|---|---|---|---|")
    for label, v, target, ok in rows:
        print(f"| {label} | {v} | {target} | {ok} |")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "table": rows}, indent=1))


if __name__ == "__main__":
    main()
