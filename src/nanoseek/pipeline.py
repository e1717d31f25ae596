"""`nanoseek pipeline`: the R1 recipe end to end at toy scale (GUIDE §3), and the report of what each
stage did.

    corpus + tokenizer -> pretrain (base) -> R1-Zero: GRPO from the base
                                          -> R1: cold-start SFT, then GRPO -> rejection sampling
    student base (dense, smaller) -> distillation (SFT on R1's samples)   vs   GRPO directly, equal compute

Every model is evaluated on held-out prompts (another seed of the task): pass@1 over k samples, cons@k,
pass@k, and for the best model accuracy against the thinking budget. report.md gathers the tables, the
plots and the cost of every stage (machine-hours and dollars at a stated price). Each stage writes its
own directory and a `done.json`; a rerun skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.data import gym_documents, prepare_corpus
from nanoseek.files import atomic_write, write_jsonl
from nanoseek.hardware import cpu_model

# assumed prices, not bills: a 2-vCPU cloud machine (AWS c7i.large on demand, us-east-1, as BENCHMARKS.md
# uses), and a GPU-hour at the $2 that DeepSeek-V3's report assumes for an H800
PRICE_PER_HOUR = 0.08925
PRICE_NOTE = "AWS c7i.large, 2 vCPU, on demand"
GPU_PRICE_PER_HOUR = 2.0
GPU_PRICE_NOTE = "a GPU-hour at DeepSeek-V3's assumed H800 rental price"
EVAL_SEED = 10_007  # held-out prompts: another seed of the generator than every training stage's


def machine() -> tuple[str, float, str]:
    """What the stages ran on (the GPU when there is one: every stage then trains and samples there), its
    assumed price per hour, and where that price comes from."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), GPU_PRICE_PER_HOUR, GPU_PRICE_NOTE
    return cpu_model(), PRICE_PER_HOUR, PRICE_NOTE


@dataclass
class Preset:
    task: str = "basic_arithmetic"  # a reasoning-gym dataset with derivable reasoning (data.derive_trace)
    task_config: dict[str, Any] = field(default_factory=lambda: {
        "min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
        "allow_parentheses": False, "allow_negation": False})
    docs: int = 6000  # pretraining documents (worked problems in the chat format)
    vocab: int = 512
    teacher: str = "tiny"
    seq_len: int = 128
    micro_batch: int = 16
    pretrain_steps: int = 2000
    # R1-Zero starts from the base at this step: at toy scale the final base is already good at this task,
    # and what RL can teach quickly (reading the question's numbers) is what a half-trained base still lacks
    zero_from: int = 1000
    pretrain_lr: float = 3e-3
    grpo_lr: float = 5e-5
    prompts_per_step: int = 16
    group_size: int = 8
    max_tokens: int = 64
    zero_steps: int = 160  # R1-Zero: GRPO from the base (80 steps gave +14.6 points on one machine: BENCHMARKS.md)
    cold_start: int = 500  # R1: cold-start chats (another seed), then GRPO
    sft_steps: int = 60
    sft_lr: float = 1e-3
    r1_steps: int = 80
    rs_prompts: int = 1500  # rejection sampling of the R1 model
    rs_k: int = 4
    student: dict[str, Any] = field(default_factory=lambda: {  # dense, smaller: tiny without MoE and MTP
        "first_k_dense_replace": 2, "num_nextn_predict_layers": 0, "intermediate_size": 128})
    student_pretrain_steps: int = 1500
    distill_steps: int = 300
    eval_size: int = 100
    k: int = 8
    budgets: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    gpu: bool = False  # sized for a GPU: days on a CPU, so `nanoseek pipeline` refuses to start without one


PRESETS = {
    "default": Preset(),
    # CI: every stage, a few steps each (minutes on 2 cores); the numbers mean nothing
    "quick": Preset(docs=3000, pretrain_steps=400, zero_from=200, zero_steps=4, cold_start=100, sft_steps=10,
                    r1_steps=4, rs_prompts=200, rs_k=4, student_pretrain_steps=100, distill_steps=20, eval_size=16, k=4,
                    budgets=[8, 32], prompts_per_step=8, group_size=4, max_tokens=48),
    # One H100/H200: the gpu-100m model (110M active of 293M parameters) on a task with room to learn: 3 to 5
    # terms of 1-2 digits with +, - and *, and parentheses (51 tokens a worked document on average, at most
    # ~115), into a 30M-parameter dense student. Sized by estimate to finish within about 10 minutes; the
    # measured wall time and accuracy are in BENCHMARKS.md once a GPU run has been made.
    "gpu-100m": Preset(
        task_config={"min_terms": 3, "max_terms": 5, "min_digits": 1, "max_digits": 2, "operators": ["+", "-", "*"],
                     "allow_parentheses": True, "allow_negation": False},
        docs=60_000, vocab=2048, teacher="gpu-100m", seq_len=256, micro_batch=64, pretrain_steps=1200,
        zero_from=600, pretrain_lr=1e-3, grpo_lr=1e-5, prompts_per_step=32, group_size=8, max_tokens=128,
        zero_steps=60, cold_start=1000, sft_steps=100, sft_lr=1e-4, r1_steps=40, rs_prompts=2000, rs_k=4,
        student={"hidden_size": 512, "num_hidden_layers": 8, "first_k_dense_replace": 8, "intermediate_size": 1536,
                 "num_attention_heads": 8, "num_key_value_heads": 8, "num_nextn_predict_layers": 0},
        student_pretrain_steps=800, distill_steps=200, eval_size=200, k=8, budgets=[8, 16, 32, 64, 128], gpu=True),
}


class Pipeline:
    def __init__(self, out_dir: str | Path, preset: Preset, progress: bool = True, log=print):
        self.out, self.p, self.progress, self.log = Path(out_dir), preset, progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages: dict[str, dict[str, Any]] = {}

    # --- bookkeeping: a stage runs once; its record (seconds, checkpoint, ...) is kept in done.json

    def stage(self, name: str, fn) -> dict[str, Any]:
        done = self.out / name / "done.json"
        if done.exists():
            self.log(f"[{name}] done before: {done}")
            rec = json.loads(done.read_text())
        else:
            self.log(f"[{name}] ...")
            t0 = time.perf_counter()
            rec = fn(self.out / name)
            rec.setdefault("seconds", time.perf_counter() - t0)
            atomic_write(done, json.dumps(rec, indent=1) + "\n")
            self.log(f"[{name}] {rec['seconds']:.0f} s")
        self.stages[name] = rec
        return rec

    # --- the stages

    def corpus(self, d: Path) -> dict:
        from nanoseek.tokenizer import train_tokenizer

        p = self.p
        d.mkdir(parents=True, exist_ok=True)
        docs = list(gym_documents(p.task, p.docs, seed=0, config=p.task_config))
        write_jsonl(iter(docs), d / "corpus.jsonl")
        cold = list(gym_documents(p.task, p.cold_start, seed=1, config=p.task_config))
        write_jsonl(({"messages": c["messages"]} for c in cold), d / "cold_start.jsonl")
        tok = train_tokenizer([x["text"] for x in docs], vocab_size=p.vocab)
        tok.save(d / "tokenizer")
        prepare_corpus(str(d / "corpus.jsonl"), tok, d / "data", val_fraction=0.05, seed=0, progress=False)
        prepare_corpus(str(d / "cold_start.jsonl"), tok, d / "cold_data", val_fraction=0.1, seed=0, chat=True,
                       progress=False)
        return {"documents": len(docs), "cold_start": len(cold), "vocab": tok.vocab_size}

    def _train(self, d: Path, **kw) -> dict:
        from nanoseek.train.pretrain import TrainConfig, latest_checkpoint, train

        p = self.p
        kw.setdefault("micro_batch_size", p.micro_batch)
        kw.setdefault("save_every", 100)
        cfg = TrainConfig(tokenizer=str(self.out / "corpus" / "tokenizer"), out_dir=str(d), seq_len=p.seq_len,
                          eval_every=0, progress=self.progress, **kw)
        _, last = train(cfg, resume=latest_checkpoint(d) is not None)
        return {"checkpoint": str(latest_checkpoint(d)), "loss": last.get("main_loss"),
                "seconds": last.get("elapsed_s"), "steps": cfg.max_steps}

    def pretrain(self, d: Path) -> dict:
        p = self.p
        # every zero_from steps a checkpoint, all kept (an interrupted run saves one more, which must not push
        # out the one at zero_from: R1-Zero starts there)
        return self._train(d, model=p.teacher, data=str(self.out / "corpus" / "data"), max_steps=p.pretrain_steps,
                           lr=p.pretrain_lr, warmup_steps=20, save_every=p.zero_from, keep_last=p.pretrain_steps)

    def student_base(self, d: Path) -> dict:
        p = self.p
        return self._train(d, model=p.teacher, extra=dict(p.student), data=str(self.out / "corpus" / "data"),
                           max_steps=p.student_pretrain_steps, lr=p.pretrain_lr, warmup_steps=20)

    def sft(self, d: Path, start: str, data: str, steps: int) -> dict:
        from nanoseek.data import read_meta

        rows = read_meta(data)["train_tokens"] // (self.p.seq_len + 1)  # few samples: a smaller batch
        return self._train(d, model=start, data=data, max_steps=steps, lr=self.p.sft_lr, warmup_steps=10,
                           micro_batch_size=max(1, min(self.p.micro_batch, rows)))

    def grpo(self, d: Path, start: str, steps: int = 0, max_seconds: float = 0.0) -> dict:
        from nanoseek.train.grpo import GRPOConfig, train_grpo
        from nanoseek.train.pretrain import latest_checkpoint

        p = self.p
        cfg = GRPOConfig(model=start, task=f"gym:{p.task}", task_config=dict(p.task_config), task_size=3000,
                         held_out=100, out_dir=str(d), steps=steps or 100_000, max_seconds=max_seconds,
                         prompts_per_step=p.prompts_per_step, group_size=p.group_size, max_tokens=p.max_tokens,
                         lr=p.grpo_lr, eval_every=0, save_every=20, progress=self.progress)
        _, last = train_grpo(cfg, resume=latest_checkpoint(d) is not None)
        return {"checkpoint": str(latest_checkpoint(d)), "seconds": last["elapsed_s"], "steps": last["step"],
                "reward": last["reward"], "accuracy": last["accuracy"]}

    def _engine(self, checkpoint: str):
        from nanoseek.infer.engine import Engine

        return Engine.from_checkpoint(checkpoint, max_batch=128, speculative=False,
                                      max_seq_len=max(256, self.p.max_tokens + 128))

    def rejection(self, d: Path) -> dict:
        from nanoseek.infer.sampling import SamplingParams
        from nanoseek.tasks.task import gym_task
        from nanoseek.train.rejection import rejection_sample, write_samples

        p = self.p
        d.mkdir(parents=True, exist_ok=True)
        engine = self._engine(self.stages["r1"]["checkpoint"])
        task = gym_task(p.task, p.rs_prompts, seed=2, config=p.task_config)
        counts = write_samples(rejection_sample(engine, task, p.rs_k, SamplingParams(
            temperature=0.6, top_p=0.95, max_tokens=p.max_tokens, seed=0), shortest=True, progress=self.progress),
            task.name, str(d / "samples.jsonl"))
        tok_path = self.out / "corpus" / "tokenizer"
        from nanoseek.tokenizer import Tokenizer

        if counts["kept"] < 2:
            raise RuntimeError(f"rejection sampling kept {counts['kept']} samples of {counts['samples']}: too few to "
                               "distill (train the teacher longer)")
        # at least one held-out conversation however few were kept
        prepare_corpus(str(d / "samples.jsonl"), Tokenizer.load(tok_path), d / "data", seed=0, chat=True,
                       val_fraction=min(0.5, max(0.05, 1.5 / counts["kept"])), progress=False)
        return counts

    def evaluate(self, d: Path, checkpoint: str, budgets: bool = False) -> dict:
        from nanoseek.eval.evaluate import EvalConfig, evaluate, write_results
        from nanoseek.tasks.task import gym_task

        p = self.p
        engine = self._engine(checkpoint)
        task = gym_task(p.task, p.eval_size, seed=EVAL_SEED, config=p.task_config)
        res = evaluate(engine, task, EvalConfig(k=p.k, max_tokens=p.max_tokens, budgets=p.budgets if budgets else []))
        write_results(res, d, d.name)
        return {"pass@1": res["pass@1"], "cons": res["cons"], "pass": res["pass"], "budgets": res["budgets"],
                "mean_tokens": res["mean_tokens"], "checkpoint": checkpoint}

    # --- the whole recipe

    def run(self) -> dict[str, Any]:
        p = self.p
        name, price, note = machine()
        t0 = time.perf_counter()
        self.stage("corpus", self.corpus)
        base = self.stage("pretrain", self.pretrain)["checkpoint"]
        zero_start = str(Path(base).parent / f"step_{p.zero_from:06d}")
        self.stage("r1_zero", lambda d: self.grpo(d, zero_start, p.zero_steps))
        cold = str(self.out / "corpus" / "cold_data")
        sft = self.stage("cold_start_sft", lambda d: self.sft(d, base, cold, p.sft_steps))["checkpoint"]
        self.stage("r1", lambda d: self.grpo(d, sft, p.r1_steps))
        self.stage("rejection_sampling", self.rejection)
        student = self.stage("student_base", self.student_base)["checkpoint"]
        rs = str(self.out / "rejection_sampling" / "data")
        distilled = self.stage("distill", lambda d: self.sft(d, student, rs, p.distill_steps))
        # equal compute: the student gets by GRPO the seconds distillation spent (its teacher's sampling too)
        budget = distilled["seconds"] + self.stages["rejection_sampling"]["seconds"]
        self.stage("student_grpo", lambda d: self.grpo(d, student, max_seconds=budget))
        self.stages["zero_start"] = {"checkpoint": zero_start}
        models = {"zero_start": "zero_start", "base": "pretrain", "r1_zero": "r1_zero",
                  "cold_start_sft": "cold_start_sft", "r1": "r1", "student_base": "student_base",
                  "distilled": "distill", "student_grpo": "student_grpo"}
        evals = {m: self.stage(f"eval_{m}", lambda d, s=s: self.evaluate(d, self.stages[s]["checkpoint"]))
                 for m, s in models.items()}
        best = max(("r1_zero", "r1", "distilled"), key=lambda m: evals[m]["pass@1"])
        evals["best"] = self.stage(f"eval_best_{best}", lambda d: self.evaluate(
            d, self.stages[models[best]]["checkpoint"], budgets=True))
        summary = {"preset": dataclasses.asdict(p), "stages": self.stages, "evals": evals, "best": best,
                   "best_checkpoint": evals["best"]["checkpoint"], "machine": name,
                   "wall_s": time.perf_counter() - t0, "price_per_hour": price, "price_note": note}
        atomic_write(self.out / "report.json", json.dumps(summary, indent=1, default=str) + "\n")
        atomic_write(self.out / "report.md", report(summary, self.out))
        return summary


def report(s: dict[str, Any], out: Path) -> str:
    """report.md: what each stage did and cost, every model's held-out numbers, and the plots."""
    p, st, ev = s["preset"], s["stages"], s["evals"]
    hours = {k: v["seconds"] / 3600 for k, v in st.items() if isinstance(v.get("seconds"), (int, float))}
    total_h = sum(hours.values())
    lines = ["# nanoseek pipeline report", "",
             f"Task: reasoning-gym `{p['task']}` {json.dumps(p['task_config'])}; held-out evaluation on "
             f"{p['eval_size']} prompts of another seed, k = {p['k']} samples at temperature 0.6, top-p 0.95. "
             f"Machine: {s['machine']}. The stages took {total_h * 60:.1f} min in all.", "",
             "## Models on held-out prompts", "",
             "| model | how it was made | pass@1 | cons@k | pass@k | mean tokens |", "|---|---|---:|---:|---:|---:|"]
    how = {"zero_start": f"the base halfway: step {p['zero_from']} of pretraining",
           "base": f"pretrained {st['pretrain'].get('steps')} steps on {st['corpus']['documents']:,} worked problems",
           "r1_zero": f"R1-Zero: GRPO from the base at step {p['zero_from']}, {st['r1_zero']['steps']} steps",
           "cold_start_sft": f"SFT of the base on {st['corpus']['cold_start']} cold-start chats",
           "r1": f"R1: GRPO from the cold-start model, {st['r1']['steps']} steps",
           "student_base": "the dense student, pretrained on the same corpus",
           "distilled": f"the student, SFT on R1's {st['rejection_sampling']['kept']:,} correct samples",
           "student_grpo": f"the student, GRPO directly for the same compute ({st['student_grpo']['steps']} steps)"}
    k = str(p["k"])
    for m, text in how.items():
        e = ev[m]
        lines.append(f"| {m} | {text} | {e['pass@1']:.3f} | {_at(e['cons'], k):.3f} | {_at(e['pass'], k):.3f} | "
                     f"{e['mean_tokens']:.1f} |")
    gain = ev["r1_zero"]["pass@1"] - ev["zero_start"]["pass@1"]
    zero = [json.loads(line) for line in (out / "r1_zero" / "metrics.jsonl").read_text().splitlines()]
    lens = [r["response_len"] for r in zero if "response_len" in r]
    n = max(1, len(lens) // 8)
    d_vs = ev["distilled"]["pass@1"] - ev["student_grpo"]["pass@1"]
    lines += ["", "## What it shows", "",
              f"- **R1-Zero at toy scale:** GRPO from the half-trained base moved pass@1 from "
              f"{ev['zero_start']['pass@1']:.3f} to "
              f"{ev['r1_zero']['pass@1']:.3f} ({gain * 100:+.1f} points). Its responses went from "
              f"{sum(lens[:n]) / n:.1f} to {sum(lens[-n:]) / n:.1f} tokens (first and last {n} steps; "
              "`r1_zero/response_length.png`): a worked sum has one line per term, so at this scale the "
              "reasoning does not grow as R1-Zero's did.",
              f"- **Majority voting:** cons@{k} {_at(ev['best']['cons'], k):.3f} against pass@1 "
              f"{ev['best']['pass@1']:.3f} for the best model ({s['best']}).",
              f"- **Distillation vs RL on the student, equal compute** ({st['student_grpo']['seconds']:.0f} s each, "
              f"the teacher's sampling counted on the distillation side): distilled {ev['distilled']['pass@1']:.3f}, "
              f"GRPO {ev['student_grpo']['pass@1']:.3f}: "
              f"{'distillation' if d_vs > 0 else 'GRPO'} wins by {abs(d_vs) * 100:.1f} points."]
    if ev["best"]["budgets"]:
        lines += ["", f"## Test-time scaling ({s['best']})", "",
                  "| thinking budget (tokens) | accuracy | tokens used | cut |", "|---:|---:|---:|---:|"]
        lines += [f"| {b['budget']} | {b['accuracy']:.3f} | {b['mean_thinking_tokens']:.1f} | {b['cut']:.0%} |"
                  for b in ev["best"]["budgets"]]
    lines += ["", "## Cost", "",
              f"Machine-hours of this {s['machine']} and dollars at ${s['price_per_hour']}/hour "
              f"({s.get('price_note', PRICE_NOTE)}: an assumed price, not a bill).", "",
              "| stage | seconds | machine-hours | $ |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {h * 3600:.0f} | {h:.4f} | {h * s['price_per_hour']:.5f} |" for k, h in hours.items()]
    lines += [f"| **total** | {total_h * 3600:.0f} | {total_h:.4f} | {total_h * s['price_per_hour']:.5f} |", "",
              "## Plots", ""]
    for rel, title in (("pretrain/loss.png", "pretraining loss"), ("pretrain/expert_load.png", "expert load"),
                       ("r1_zero/rewards.png", "R1-Zero rewards"), ("r1_zero/response_length.png",
                                                                     "R1-Zero response length"),
                       ("r1/rewards.png", "R1 rewards"), ("r1/response_length.png", "R1 response length"),
                       (f"eval_best_{s['best']}/accuracy_vs_k.png", "accuracy against k"),
                       (f"eval_best_{s['best']}/accuracy_vs_budget.png", "accuracy against thinking budget")):
        if (out / rel).exists():
            lines.append(f"![{title}]({rel})")
    return "\n".join(lines) + "\n"


def _at(d: dict, k: str) -> float:
    return d[k] if k in d else d[int(k)]


def export(summary: dict[str, Any], out: Path, dest: str | Path) -> Path:
    """Copy the best model (HF layout, tokenizer) to dest with report.md as its model card (README.md)."""
    dest = Path(dest)
    src = Path(summary["best_checkpoint"])
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("train_state"):
            shutil.copy2(f, tmp / f.name)
    # the model card: the report without its plots (they stay in the run directory)
    card = "\n".join(line for line in (out / "report.md").read_text().splitlines() if not line.startswith("!["))
    use = (f"The {summary['best']} model of this run: a DeepSeek-V3 (`deepseek_v3`) checkpoint. `nanoseek chat DIR` "
           "talks to it with its reasoning shown; `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads it. "
           "Its prompts are R1's chat template (the tokenizer's), and it knows only what the task below taught it.")
    (tmp / "README.md").write_text("---\nlibrary_name: transformers\ntags: [deepseek_v3, nanoseek, reasoning]\n---\n\n"
                                   + use + "\n\n" + card.replace("## Plots\n", "") + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest
