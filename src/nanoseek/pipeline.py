"""`nanoseek pipeline`: the R1 recipe end to end at toy scale, and the report of what each stage
did. Its default preset makes the model nanoseek ships.

    corpus + tokenizer -> pretrain (base) -> R1-Zero: GRPO from the base
                                          -> R1: cold-start SFT, then GRPO -> rejection sampling
    student base (dense, smaller) -> distillation (SFT on R1's samples)
                                     vs   GRPO directly, equal compute

The task is the shipped model's skills (tasks/chats.py: arithmetic, comparing, sorting, counting
letters, asked in many phrasings, and messages outside them answered by an honest self-description)
or a reasoning-gym dataset. Every model is evaluated on held-out prompts: for the skills the
held-out set of tasks/heldout.jsonl, whose phrasings and instances no stage trained on (pass@1 by
skill, honesty out of scope with DeepThink on and off); for a gym task another seed. R1's numbers
come with it: pass@1 over k samples, cons@k, pass@k, and for the best model accuracy against the
thinking budget. report.md gathers the tables, the plots and the cost of every stage (machine-hours
and dollars at a stated price). Each stage writes its own directory and a `done.json`; a rerun skips
finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.data import prepare_corpus
from nanoseek.errors import UserError
from nanoseek.eval.cost import (
    CPU_PRICE_NOTE,
    CPU_USD_PER_HOUR,
    GPU_PRICE_NOTE,
    GPU_USD_PER_HOUR,
)
from nanoseek.files import atomic_directory, atomic_write, write_jsonl
from nanoseek.hardware import cpu_model
from nanoseek.tasks.chats import skill_documents
from nanoseek.tasks.gym import gym_documents

EVAL_SEED = 10_007  # held-out prompts: another seed of the generator than every training stage's


def machine() -> tuple[str, float, str]:
    """What the stages ran on (the GPU when there is one: every stage then trains and samples
    there), its assumed price per hour, and where that price comes from."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), GPU_USD_PER_HOUR, GPU_PRICE_NOTE
    return cpu_model(), CPU_USD_PER_HOUR, CPU_PRICE_NOTE


# the teacher: `tiny` widened and deepened, MoE + MTP as V3. Initialised at std 0.02, not V3's
# 0.006: at this width 0.006 learns the skills several times slower (the loss at step 600 of a
# run: 1.49 at 0.006, 0.92 at 0.02). 8 heads of 32, not 4 of 48: the base then got 73 of 160
# held-out arithmetic problems right greedily, not 41 (same corpus and steps, 18% more time)
TEACHER_SHAPE = {"hidden_size": 128, "intermediate_size": 384, "moe_intermediate_size": 64,
                 "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
                 "q_lora_rank": 64, "kv_lora_rank": 64,
                 "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
                 "first_k_dense_replace": 1, "rope_scaling": None, "initializer_range": 0.02}
# the student: dense (MLA and a dense MLP in every layer), a layer fewer, no MTP
STUDENT_SHAPE = {"num_hidden_layers": 3, "first_k_dense_replace": 3,
                 "num_nextn_predict_layers": 0}


class PipelineError(UserError):
    pass


@dataclass
class Preset:
    # "skills" (the shipped model's: tasks/chats.py) or gym:NAME (a reasoning-gym dataset with
    # derivable reasoning)
    task: str = "skills"
    # the skills' mix (chats.DEFAULT_MIX's keys), or the reasoning-gym dataset's options
    task_config: dict[str, Any] = field(default_factory=lambda: {
        "size": "about a million parameters"})
    thinking_off: float = 0.25  # skills: share of the SFT chats with DeepThink off
    # skills: share of the cold-start chats outside the skills (pretraining's is the mix's 0.1).
    # Only the cold start teaches the honest reply with DeepThink off: at 0.1 that was 50 of 2,000
    # chats, and the R1 model's honesty with it off ranged 0.37-0.85 across runs
    cold_out_of_scope: float = 0.25
    # skills: written chats added to the distillation data, as R1 added 200K non-reasoning
    # samples to its 600K reasoning ones: messages outside the skills, and DeepThink off
    general: int = 1500
    docs: int = 60_000  # pretraining documents (worked problems in the chat format)
    # pretraining's loss on the assistant's turns only (the reasoning and the answer), not on the
    # questions: their numbers and phrasings are random, and predicting them teaches nothing the
    # model is asked to do (still pretraining: from scratch, on the task's documents)
    replies_only: bool = True
    vocab: int = 768
    teacher: str = "tiny"  # a preset, and TrainConfig.extra's overrides of it
    teacher_shape: dict[str, Any] = field(default_factory=lambda: dict(TEACHER_SHAPE))
    seq_len: int = 512  # a worked product of two three-digit numbers is about 350 tokens
    # pretraining and SFT: attention inside each document of a row (TrainConfig.attn_mask). A row
    # of 512 holds about five worked problems, whose own score pairs are a third of the row's: a
    # CPU step is 1.2-1.5x as fast (bench/bench_attn_mask.py), and no problem reads another's
    # numbers. The steps this bought (3,300, not 2,200) lifted the held-out measure 0.45 -> 0.63
    # in one run (runs differ by up to 0.18 in a skill: BENCHMARKS.md)
    attn_mask: str = "block_causal"
    # small batches, many steps: at this scale the number of updates is what teaches (4 rows a
    # step reached in 1M tokens the loss that 16 rows a step reached in 3.3M)
    micro_batch: int = 4
    pretrain_steps: int = 3300
    # R1-Zero starts from the base at this step: at toy scale the final base is already good at its
    # task, and what RL can teach quickly is what a half-trained base still lacks
    zero_from: int = 1650
    pretrain_lr: float = 3e-3
    grpo_lr: float = 3e-5
    prompts_per_step: int = 8
    group_size: int = 8
    max_tokens: int = 640  # the longest held-out product takes 547 tokens to work out
    zero_steps: int = 6  # R1-Zero: GRPO from the base (what it gains: the report)
    cold_start: int = 2000  # R1: cold-start chats (another seed), then GRPO
    sft_steps: int = 100
    sft_lr: float = 5e-4
    r1_steps: int = 6
    rs_prompts: int = 600  # rejection sampling of the R1 model
    rs_k: int = 4
    # the student: dense and smaller
    student: dict[str, Any] = field(default_factory=lambda: dict(STUDENT_SHAPE))
    student_pretrain_steps: int = 200
    distill_steps: int = 100
    eval_size: int = 0  # held-out prompts (skills: 0 = all of tasks/heldout.jsonl)
    k: int = 2  # samples per held-out prompt (and one more with DeepThink off)
    budgets: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    gpu: bool = False  # sized for a GPU: days on a CPU, so `nanoseek pipeline` refuses to start
    # every stage's randomness (documents, initial weights, data order, rollouts) draws from it;
    # the held-out prompts do not. Another seed is another run of the same recipe: how far two
    # runs part is the noise any change to the recipe has to beat
    seed: int = 0


GYM_ARITHMETIC = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 1,
                  "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False}
PRESETS = {
    "default": Preset(),
    # CI: every stage, a few steps each (minutes on 2 cores); the numbers mean nothing
    "quick": Preset(docs=1500, vocab=512, teacher_shape={}, seq_len=256, micro_batch=8,
                    pretrain_steps=120, zero_from=60, zero_steps=2, cold_start=100, sft_steps=6,
                    r1_steps=2, rs_prompts=48, rs_k=2, general=40,
                    student={"first_k_dense_replace": 2, "num_nextn_predict_layers": 0,
                             "intermediate_size": 128},
                    student_pretrain_steps=40, distill_steps=6, eval_size=24, k=2, budgets=[8, 32],
                    prompts_per_step=4, group_size=4, max_tokens=48),
    # One H100/H200: the gpu-100m model (110M active of 293M parameters) on a reasoning-gym task
    # with room to learn: 3 to 5 terms of 1-2 digits with +, - and *, and parentheses (a worked
    # document fits seq_len, its answer max_tokens: tests/test_pipeline.py checks), into a
    # 30M-parameter dense student. Sized by estimate to finish within about 10 minutes on one GPU.
    "gpu-100m": Preset(
        task="gym:basic_arithmetic",
        task_config={**GYM_ARITHMETIC, "min_terms": 3, "max_terms": 5, "max_digits": 2,
                     "operators": ["+", "-", "*"], "allow_parentheses": True},
        docs=60_000, vocab=2048, teacher="gpu-100m", teacher_shape={}, seq_len=256,
        micro_batch=64, pretrain_steps=1200, zero_from=600, pretrain_lr=1e-3, grpo_lr=1e-5,
        attn_mask="causal",  # a GPU's attention over a row is cheap; the plan is a host sync
        prompts_per_step=32, group_size=8, max_tokens=128, zero_steps=60, cold_start=1000,
        sft_steps=100, sft_lr=1e-4, r1_steps=40, rs_prompts=2000, rs_k=4,
        student={"hidden_size": 512, "num_hidden_layers": 8, "first_k_dense_replace": 8,
                 "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 8,
                 "num_nextn_predict_layers": 0},
        student_pretrain_steps=800, distill_steps=200, eval_size=200, k=8,
        budgets=[8, 16, 32, 64, 128], gpu=True),
}


# the models evaluated, and the stage that made each
MODELS = {"zero_start": "zero_start", "base": "pretrain", "r1_zero": "r1_zero",
          "cold_start_sft": "cold_start_sft", "r1": "r1", "student_base": "student_base",
          "distilled": "distill", "student_grpo": "student_grpo"}


class Pipeline:
    def __init__(self, out_dir: str | Path, preset: Preset, progress: bool = True, log=print):
        self.out, self.p, self.progress, self.log = Path(out_dir), preset, progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages: dict[str, dict[str, Any]] = {}
        # a rerun resumes the stages done; with another preset or seed they would be another run's
        made = self.out / "preset.json"
        want = json.loads(json.dumps(dataclasses.asdict(preset)))  # as the file holds it
        if made.exists() and (had := json.loads(made.read_text())) != want:
            diff = sorted(k for k in want.keys() | had.keys() if had.get(k) != want.get(k))
            raise PipelineError(f"{made}: {self.out} holds a run of another preset (it differs in "
                                f"{', '.join(diff)}): pick another --out-dir")
        if not made.exists():
            atomic_write(made, json.dumps(want, indent=1) + "\n")

    def seed(self, k: int) -> int:
        """The k-th (k < 1000) generator seed of this run: 0, 1, 2, ... for seed 0; 1000 + k
        for seed 1 and so on (EVAL_SEED is none of them)."""
        return 1000 * self.p.seed + k

    # --- bookkeeping: a stage runs once; its record (seconds, checkpoint, ...) is kept in done.json

    def stage(self, name: str, fn: Callable[[Path], dict]) -> dict[str, Any]:
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

    # --- the stages: each writes into its own directory

    def documents(self, n: int, seed: int, thinking_off: float = 0.0,
                  out_of_scope: float | None = None) -> list[dict]:
        """Chat documents of the task: worked problems (and, for the skills, messages outside them,
        out_of_scope of them if given, and a share with DeepThink off)."""
        p = self.p
        if p.task == "skills":
            mix = {**p.task_config, "thinking_off": thinking_off}
            if out_of_scope is not None:
                mix["out_of_scope"] = out_of_scope
            return list(skill_documents(n, seed, mix))
        return list(gym_documents(p.task.removeprefix("gym:"), n, seed, p.task_config))

    def corpus(self, stage_dir: Path) -> dict:
        from nanoseek.tokenizer import train_tokenizer
        from nanoseek.train.sft import prepare_chats

        p = self.p
        stage_dir.mkdir(parents=True, exist_ok=True)
        # thinking on: the base learns to reason first
        docs = self.documents(p.docs, seed=self.seed(0))
        write_jsonl(iter(docs), stage_dir / "corpus.jsonl")
        cold = self.documents(p.cold_start, seed=self.seed(1), thinking_off=p.thinking_off,
                              out_of_scope=p.cold_out_of_scope)
        write_jsonl(({"messages": c["messages"]} for c in cold), stage_dir / "cold_start.jsonl")
        # digits one token each: the traces work digit by digit
        tok = train_tokenizer([x["text"] for x in docs], vocab_size=p.vocab, split_digits=True)
        tok.save(stage_dir / "tokenizer")
        if p.replies_only:
            prepare_chats(str(stage_dir / "corpus.jsonl"), tok, stage_dir / "data",
                          val_fraction=0.01, seed=p.seed, progress=False, reuse=False,
                          log=self.log)
        else:
            prepare_corpus(str(stage_dir / "corpus.jsonl"), tok, stage_dir / "data",
                           val_fraction=0.01, seed=p.seed, progress=False)
        prepare_chats(str(stage_dir / "cold_start.jsonl"), tok, stage_dir / "cold_data",
                      val_fraction=0.1, seed=p.seed, progress=False, reuse=False, log=self.log)
        return {"documents": len(docs), "cold_start": len(cold), "vocab": tok.vocab_size}

    def _train(self, stage_dir: Path, **kw) -> dict:
        from nanoseek.train.pretrain import TrainConfig, train
        from nanoseek.train.runtime import latest_checkpoint

        p = self.p
        kw.setdefault("micro_batch_size", p.micro_batch)
        kw.setdefault("save_every", 100)
        kw.setdefault("compile", p.gpu)  # per-block torch.compile: seconds to build, pays on a GPU
        kw.setdefault("attn_mask", p.attn_mask)
        kw.setdefault("seed", p.seed)
        cfg = TrainConfig(tokenizer=str(self.out / "corpus" / "tokenizer"), out_dir=str(stage_dir),
                          seq_len=p.seq_len, eval_every=0, progress=self.progress, **kw)
        _, last = train(cfg, resume=True)  # a stage cut short goes on; a fresh one starts at 0
        return {"checkpoint": str(latest_checkpoint(stage_dir)), "loss": last.get("main_loss"),
                "seconds": last.get("elapsed_s"), "steps": cfg.max_steps}

    def pretrain(self, stage_dir: Path) -> dict:
        p = self.p
        # every zero_from steps a checkpoint, all kept (an interrupted run saves one more, which
        # must not push out the one at zero_from: R1-Zero starts there)
        return self._train(stage_dir, model=p.teacher, extra=dict(p.teacher_shape),
                           data=str(self.out / "corpus" / "data"),
                           max_steps=p.pretrain_steps, lr=p.pretrain_lr, warmup_steps=20,
                           save_every=p.zero_from, keep_last=p.pretrain_steps)

    def student_base(self, stage_dir: Path) -> dict:
        p = self.p
        return self._train(stage_dir, model=p.teacher, extra={**p.teacher_shape, **p.student},
                           data=str(self.out / "corpus" / "data"),
                           max_steps=p.student_pretrain_steps, lr=p.pretrain_lr, warmup_steps=20)

    def sft(self, stage_dir: Path, start: str, data: str, steps: int) -> dict:
        """SFT of `start` on chats already prepared in `data` (the SFT training loop is
        pretraining's; train/sft.py prepared the chats)."""
        from nanoseek.data import read_meta

        rows = read_meta(data)["train_tokens"] // (self.p.seq_len + 1)  # few samples: smaller batch
        return self._train(stage_dir, model=start, data=data, max_steps=steps, lr=self.p.sft_lr,
                           warmup_steps=10, micro_batch_size=max(1, min(self.p.micro_batch, rows)))

    def grpo(self, stage_dir: Path, start: str, steps: int = 0, max_seconds: float = 0.0) -> dict:
        from nanoseek.train.grpo import GRPOConfig, train_grpo
        from nanoseek.train.runtime import latest_checkpoint

        p = self.p
        cfg = GRPOConfig(model=start, task=p.task, task_config=dict(p.task_config),
                         task_size=3000, held_out=100, out_dir=str(stage_dir),
                         steps=steps or 100_000, max_seconds=max_seconds,
                         prompts_per_step=p.prompts_per_step, group_size=p.group_size,
                         max_tokens=p.max_tokens, lr=p.grpo_lr, eval_every=0, save_every=20,
                         seed=p.seed, progress=self.progress)
        _, last = train_grpo(cfg, resume=True)
        return {"checkpoint": str(latest_checkpoint(stage_dir)), "seconds": last["elapsed_s"],
                "steps": last["step"], "reward": last["reward"], "accuracy": last["accuracy"]}

    def _engine(self, checkpoint: str):
        from nanoseek.infer.engine import Engine

        # on a GPU its decode steps run as CUDA graphs (compile), recorded when it is built
        return Engine.from_checkpoint(checkpoint, max_batch=128, speculative=False,
                                      max_seq_len=max(256, self.p.max_tokens + 160),
                                      compile=self.p.gpu)

    def rejection(self, stage_dir: Path) -> dict:
        """R1's samples its task scores correct (the shortest per prompt), prepared as SFT data;
        for the skills, with the written general chats beside them."""
        from nanoseek.infer.sampling import SamplingParams
        from nanoseek.tasks.load import load_task
        from nanoseek.tokenizer import Tokenizer
        from nanoseek.train.rejection import rejection_sample, write_samples
        from nanoseek.train.sft import DistillError, prepare_chats

        p = self.p
        stage_dir.mkdir(parents=True, exist_ok=True)
        engine = self._engine(self.stages["r1"]["checkpoint"])
        task = load_task(p.task, p.rs_prompts, seed=self.seed(2), config=p.task_config)
        params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=p.max_tokens,
                                seed=p.seed)
        samples = stage_dir / "samples.jsonl"
        counts = write_samples(rejection_sample(engine, task, p.rs_k, params, shortest=True,
                                                progress=self.progress), task.name, str(samples))
        general = (self.documents(p.general, seed=self.seed(3), thinking_off=1.0)
                   if p.task == "skills" else [])
        if counts["kept"] + len(general) < 2:
            raise DistillError(f"R1 passed {counts['kept']} of {counts['samples']} samples: too "
                               "few to distill (train it longer, or raise rs_k or rs_prompts)")
        chats = stage_dir / "chats.jsonl"
        with open(samples) as f:
            kept = f.read()
        atomic_write(chats, kept + "".join(json.dumps({"messages": g["messages"]},
                                                      ensure_ascii=False) + "\n" for g in general))
        # prepare_chats holds out at least one conversation however few were kept
        prepare_chats(str(chats), Tokenizer.load(self.out / "corpus" / "tokenizer"),
                      stage_dir / "data", val_fraction=0.05, seed=p.seed, progress=False,
                      reuse=False, log=self.log)
        return {**counts, "general": len(general)}

    def evaluate_stage(self, stage_dir: Path, checkpoint: str, budgets: bool = False) -> dict:
        """A model's held-out numbers: the skills' scorecard on tasks/heldout.jsonl, or
        eval.evaluate on EVAL_SEED's prompts of a gym task."""
        from nanoseek.eval.evaluate import EvalConfig, evaluate, write_results
        from nanoseek.eval.skills import scorecard
        from nanoseek.tasks.gym import gym_task
        from nanoseek.tasks.heldout import load
        from nanoseek.tasks.load import load_task

        p = self.p
        engine = self._engine(checkpoint)
        cfg = EvalConfig(k=p.k, max_tokens=p.max_tokens, budgets=p.budgets if budgets else [])
        if p.task == "skills":
            task = load_task("skills:held-out", p.eval_size or len(load()), seed=EVAL_SEED)
            res = scorecard(engine, task, cfg)
        else:
            task = gym_task(p.task.removeprefix("gym:"), p.eval_size, seed=EVAL_SEED,
                            config=p.task_config)
            res = evaluate(engine, task, cfg)
        write_results(res, stage_dir, stage_dir.name)
        keep = ("pass@1", "cons", "pass", "budgets", "mean_tokens", "skills", "thinking_off",
                "measure")
        return {**{k: res[k] for k in keep if k in res}, "prompts": res["prompts"],
                "checkpoint": checkpoint}

    # --- the whole recipe

    def train_models(self) -> None:
        """Every training stage, in order; each model's checkpoint lands in self.stages."""
        p = self.p
        self.stage("corpus", self.corpus)
        base = self.stage("pretrain", self.pretrain)["checkpoint"]
        zero_start = str(Path(base).parent / f"step_{p.zero_from:06d}")
        self.stage("r1_zero", lambda d: self.grpo(d, zero_start, p.zero_steps))
        cold = str(self.out / "corpus" / "cold_data")
        sft = self.stage("cold_start_sft", lambda d: self.sft(d, base, cold, p.sft_steps))
        self.stage("r1", lambda d: self.grpo(d, sft["checkpoint"], p.r1_steps))
        self.stage("rejection_sampling", self.rejection)
        student = self.stage("student_base", self.student_base)["checkpoint"]
        rs = str(self.out / "rejection_sampling" / "data")
        distilled = self.stage("distill", lambda d: self.sft(d, student, rs, p.distill_steps))
        # equal compute: the student gets by GRPO the seconds distillation spent (its teacher's
        # sampling too)
        budget = distilled["seconds"] + self.stages["rejection_sampling"]["seconds"]
        self.stage("student_grpo", lambda d: self.grpo(d, student, max_seconds=budget))
        self.stages["zero_start"] = {"checkpoint": zero_start}

    def evaluate_models(self) -> tuple[dict[str, dict], str]:
        """Every model's held-out numbers, and the best of them by the held-out measure (the
        skills' scorecard, else pass@1; the half-trained base is not a candidate), which is also
        evaluated against the thinking budget (as evals["best"])."""
        evals = {m: self.stage(f"eval_{m}", lambda d, s=s: self.evaluate_stage(
            d, self.stages[s]["checkpoint"])) for m, s in MODELS.items()}
        best = max((m for m in MODELS if m != "zero_start"), key=lambda m: measure(evals[m]))
        evals["best"] = self.stage(f"eval_best_{best}", lambda d: self.evaluate_stage(
            d, self.stages[MODELS[best]]["checkpoint"], budgets=True))
        return evals, best

    def run(self) -> dict[str, Any]:
        name, price, note = machine()
        self.train_models()
        evals, best = self.evaluate_models()
        summary = {"preset": dataclasses.asdict(self.p), "stages": self.stages, "evals": evals,
                   "best": best, "best_checkpoint": evals["best"]["checkpoint"], "machine": name,
                   # what the stages took, summed over every invocation: a resumed run (or one that
                   # only re-exports) must not report the seconds of its last call alone
                   "wall_s": sum(v["seconds"] for v in self.stages.values() if "seconds" in v),
                   "price_per_hour": price, "price_note": note}
        atomic_write(self.out / "report.json", json.dumps(summary, indent=1, default=str) + "\n")
        atomic_write(self.out / "report.md", report(summary, self.out))
        return summary


def measure(e: dict[str, Any]) -> float:
    """What picks the best model: the skills' held-out measure, else pass@1."""
    return e.get("measure", e["pass@1"])


def report(s: dict[str, Any], out: Path) -> str:
    """report.md: what each stage did and cost, every model's held-out numbers, and the plots."""
    p, st = s["preset"], s["stages"]
    hours = {k: v["seconds"] / 3600 for k, v in st.items()
             if isinstance(v.get("seconds"), (int, float))}
    prompts = s["evals"]["best"]["prompts"]
    if p["task"] == "skills":
        task = ("the skills (arithmetic, comparing, sorting, counting letters) in many phrasings, "
                "with messages outside them; held-out evaluation on "
                f"{prompts} prompts of `tasks/heldout.jsonl`, whose phrasings and instances no "
                "stage trained on")
    else:
        task = (f"reasoning-gym `{p['task'].removeprefix('gym:')}` {json.dumps(p['task_config'])}"
                f"; held-out evaluation on {prompts} prompts of another seed")
    lines = ["# nanoseek pipeline report", "",
             f"Task: {task}, k = {p['k']} samples at temperature 0.6, top-p 0.95. Machine: "
             f"{s['machine']}. Seed {p.get('seed', 0)} (`nanoseek pipeline --seed "
             f"{p.get('seed', 0)}` runs it again). The stages took "
             f"{sum(hours.values()) * 60:.1f} min in all.", ""]
    lines += _models_table(s) + _skills_table(s) + _findings(s, out) + _budget_table(s)
    lines += _cost_table(s, hours)
    lines += ["", "## Plots", ""]
    best = f"eval_best_{s['best']}"
    for rel, title in (("pretrain/loss.png", "pretraining loss"),
                       ("pretrain/expert_load.png", "expert load"),
                       ("r1_zero/rewards.png", "R1-Zero rewards"),
                       ("r1_zero/response_length.png", "R1-Zero response length"),
                       ("r1/rewards.png", "R1 rewards"),
                       ("r1/response_length.png", "R1 response length"),
                       (f"{best}/accuracy_vs_k.png", "accuracy against k"),
                       (f"{best}/accuracy_vs_budget.png", "accuracy against thinking budget")):
        if (out / rel).exists():
            lines.append(f"![{title}]({rel})")
    return "\n".join(lines) + "\n"


def _models_table(s: dict[str, Any]) -> list[str]:
    p, st, ev = s["preset"], s["stages"], s["evals"]
    how = {"zero_start": f"the base halfway: step {p['zero_from']} of pretraining",
           "base": f"pretrained {st['pretrain'].get('steps')} steps on "
                   f"{st['corpus']['documents']:,} worked problems",
           "r1_zero": f"R1-Zero: GRPO from the base at step {p['zero_from']}, "
                      f"{st['r1_zero']['steps']} steps",
           "cold_start_sft": f"SFT of the base on {st['corpus']['cold_start']} cold-start chats",
           "r1": f"R1: GRPO from the cold-start model, {st['r1']['steps']} steps",
           "student_base": "the dense student, pretrained on the same corpus",
           "distilled": f"the student, SFT on R1's {st['rejection_sampling']['kept']:,} correct "
                        "samples" + (f" and {st['rejection_sampling']['general']:,} written "
                                     "general chats" if st['rejection_sampling'].get('general')
                                     else ""),
           "student_grpo": "the student, GRPO directly for the same compute "
                           f"({st['student_grpo']['steps']} steps)"}
    k = str(p["k"])
    lines = ["## Models on held-out prompts", "",
             "| model | how it was made | pass@1 | cons@k | pass@k | mean tokens |",
             "|---|---|---:|---:|---:|---:|"]
    for m, text in how.items():
        e = ev[m]
        lines.append(f"| {m} | {text} | {e['pass@1']:.3f} | {_at(e['cons'], k):.3f} | "
                     f"{_at(e['pass'], k):.3f} | {e['mean_tokens']:.1f} |")
    return lines


TARGETS = {"3-digit ×": 0.8, "out_of_scope": 0.95}  # the rest: 0.9
COLUMNS = {"arithmetic": "arithmetic", "3-digit ×": "3-digit ×", "compare": "compare",
           "sort": "sort", "letters": "letters", "out_of_scope": "honest out of scope"}


def _skills_table(s: dict[str, Any]) -> list[str]:
    """pass@1 by skill on the held-out phrasings, honesty with DeepThink on and off, and the
    measure that picks the shipped model."""
    ev = s["evals"]
    if "skills" not in ev["best"]:
        return []
    groups = [g for g in COLUMNS if g in ev["best"]["skills"]]
    head = [COLUMNS[g] for g in groups] + ["honest, DeepThink off", "measure"]
    lines = ["", "## Skills on held-out phrasings", "",
             "pass@1 by skill (the mean over k samples) on the held-out set; out of scope, the "
             "share of replies that say what the model is and what it can do, and give no "
             "number, with DeepThink on and off. Targets: "
             + ", ".join(f"{COLUMNS[g]} ≥ {TARGETS.get(g, 0.9):.2f}" for g in groups) + ".", "",
             "| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for m in MODELS:
        e = ev[m]
        cells = [f"{e['skills'].get(g, 0.0):.3f}" for g in groups]
        cells += [f"{e['thinking_off'].get('out_of_scope', 0.0):.3f}", f"{e['measure']:.3f}"]
        lines.append(f"| {m}{' (shipped)' if m == s['best'] else ''} | " + " | ".join(cells)
                     + " |")
    return lines


def _findings(s: dict[str, Any], out: Path) -> list[str]:
    st, ev, k = s["stages"], s["evals"], str(s["preset"]["k"])
    gain = ev["r1_zero"]["pass@1"] - ev["zero_start"]["pass@1"]
    zero = [json.loads(line)
            for line in (out / "r1_zero" / "metrics.jsonl").read_text().splitlines()]
    lens = [r["response_len"] for r in zero if "response_len" in r]
    n = max(1, len(lens) // 8)
    d_vs = ev["distilled"]["pass@1"] - ev["student_grpo"]["pass@1"]
    return ["", "## What it shows", "",
            f"- **R1-Zero at toy scale:** GRPO from the half-trained base moved pass@1 from "
            f"{ev['zero_start']['pass@1']:.3f} to {ev['r1_zero']['pass@1']:.3f} "
            f"({gain * 100:+.1f} points). Its responses went from {sum(lens[:n]) / n:.1f} to "
            f"{sum(lens[-n:]) / n:.1f} tokens (first and last {n} steps; "
            "`r1_zero/response_length.png`): its traces are fixed procedures (a line per "
            "operation), so at this scale the reasoning does not grow as R1-Zero's did.",
            f"- **Majority voting:** cons@{k} {_at(ev['best']['cons'], k):.3f} against pass@1 "
            f"{ev['best']['pass@1']:.3f} for the best model ({s['best']}).",
            f"- **Distillation vs RL on the student, equal compute** "
            f"({st['student_grpo']['seconds']:.0f} s each, the teacher's sampling counted on the "
            f"distillation side): distilled {ev['distilled']['pass@1']:.3f}, GRPO "
            f"{ev['student_grpo']['pass@1']:.3f}: {'distillation' if d_vs > 0 else 'GRPO'} wins "
            f"by {abs(d_vs) * 100:.1f} points."]


def _budget_table(s: dict[str, Any]) -> list[str]:
    budgets = s["evals"]["best"]["budgets"]
    if not budgets:
        return []
    return ["", f"## Test-time scaling ({s['best']})", "",
            "| thinking budget (tokens) | accuracy | tokens used | cut |", "|---:|---:|---:|---:|",
            *(f"| {b['budget']} | {b['accuracy']:.3f} | {b['mean_thinking_tokens']:.1f} | "
              f"{b['cut']:.0%} |" for b in budgets)]


def _cost_table(s: dict[str, Any], hours: dict[str, float]) -> list[str]:
    price, total = s["price_per_hour"], sum(hours.values())
    return ["", "## Cost", "",
            f"Machine-hours of this {s['machine']} and dollars at ${price}/hour "
            f"({s.get('price_note', CPU_PRICE_NOTE)}: an assumed price, not a bill).", "",
            "| stage | seconds | machine-hours | $ |", "|---|---:|---:|---:|",
            *(f"| {k} | {h * 3600:.0f} | {h:.4f} | {h * price:.5f} |" for k, h in hours.items()),
            f"| **total** | {total * 3600:.0f} | {total:.4f} | {total * price:.5f} |"]


def _at(d: dict, k: str) -> float:
    return d[k] if k in d else d[int(k)]


CANNOT = ["divide, or work with fractions, decimals, powers or roots",
          "do arithmetic on numbers of four or more digits, or on more than four terms (it may "
          "try, and its working shows where it goes wrong)",
          "read numbers written as words (\"twelve\")",
          "answer questions of knowledge, write, translate, code or hold a conversation: it says "
          "so, and what it can do instead",
          "remember what was said earlier in a conversation: each message is a new problem"]
# what the card may invite a person to ask, with the answer (None: the honest reply); it invites
# those its model answers right at temperature 0 with DeepThink on and off (`answered_right`)
EXAMPLES = [("Calculate 12 + 7.", "19"), ("What is 80 plus 29?", "109"),
            ("How much is 125 + 250?", "375"), ("what's 23 times 4", "92"),
            ("Can you add 15 and 27?", "42"), ("What's 56 + 78?", "134"),
            ("What is 45 minus 17?", "28"), ("Calculate 125 × 8.", "1000"),
            ("Which is bigger, 58 or 85?", "85"), ("Which is smaller, 304 or 340?", "304"),
            ("Sort 5, 12, 9 from smallest to largest", "5, 9, 12"),
            ("How many o's are in balloon?", "2"), ("How many r's are in strawberry?", "3"),
            ("Who are you?", None), ("What is the capital of France?", None)]


def answered_right(engine, asks: list[tuple[str, str | None]]) -> list[bool]:
    """Whether the model answers each (message, answer) right at temperature 0, DeepThink on and
    off, as `nanoseek chat` shows it: the answer's last line is the answer (None: the honest reply
    outside the skills), and no `</think>` shows in it. README's table is checked so too
    (tests/test_readme.py)."""
    from nanoseek.infer.chat import split_stray_reasoning
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tasks.persona import honest
    from nanoseek.tasks.skills import final_line
    from nanoseek.tokenizer import THINK_END, render_chat

    greedy = SamplingParams(temperature=0, max_tokens=600)
    right = [True] * len(asks)
    for thinking in (True, False):
        prompts = [render_chat([{"role": "user", "content": a}], thinking=thinking)
                   for a, _ in asks]
        for i, ((_, answer), done) in enumerate(zip(asks, engine.generate(prompts, greedy))):
            _, content = split_stray_reasoning(done.content)
            ok = THINK_END not in content and (honest(content) if answer is None
                                                else final_line(content) == answer)
            right[i] = right[i] and ok
    return right


def decode_speed(checkpoint: str | Path,
                 prompts: tuple[str, ...] = tuple(a for a, _ in EXAMPLES[:3])) -> dict[str, float]:
    """Tokens per second decoding one conversation at a time (batch 1, greedy, fp32, eager) on
    this machine, with the load average then: what a person chatting on this CPU sees."""
    import os

    import torch

    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tokenizer import render_chat

    engine = Engine.from_checkpoint(str(checkpoint), device="cpu", max_batch=1, max_seq_len=1024)
    params = SamplingParams(temperature=0, max_tokens=512)
    engine.generate([render_chat([{"role": "user", "content": prompts[0]}])], params)  # warm-up
    tokens, t0 = 0, time.perf_counter()
    for prompt in prompts:
        done = engine.generate([render_chat([{"role": "user", "content": prompt}])], params)
        tokens += len(done[0].token_ids)
    seconds = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"tokens_per_s": tokens / seconds, "threads": torch.get_num_threads(),
            "load": load, "tokens": tokens}


def model_card(summary: dict[str, Any], out: Path, src: Path) -> str:
    """The exported model's README.md: what it is and can do, its held-out scores, what it cannot
    do, its speed, then the run's report (without plots)."""
    from nanoseek.model.config import ModelConfig
    from nanoseek.model.counting import count_params

    best, ev = summary["best"], summary["evals"]["best"]
    n = count_params(ModelConfig.load(src))
    speed = decode_speed(src)
    tries = []
    if "skills" in ev:
        from nanoseek.infer.engine import Engine

        engine = Engine.from_checkpoint(str(src), device="cpu", max_batch=16, max_seq_len=1024)
        tries = [a for (a, _), ok in zip(EXAMPLES, answered_right(engine, EXAMPLES)) if ok]
    report_md = "\n".join(line for line in (out / "report.md").read_text().splitlines()
                          if not line.startswith("![") and line != "## Plots")
    front = "---\nlibrary_name: transformers\ntags: [deepseek_v3, nanoseek, reasoning]\n---\n\n"
    lines = ["# nanoseek's small reasoning model", "",
             f"The {best} model of a `nanoseek pipeline` run: a DeepSeek-V3 (`deepseek_v3`) "
             f"checkpoint of {n.total / 1e6:.2f}M parameters ({n.active / 1e6:.2f}M active per "
             "token), trained from scratch on a CPU with DeepSeek-R1's recipe (the report below "
             "says how). `nanoseek chat` talks to it, its reasoning shown; `nanoseek serve` serves "
             "it; `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads it. Its prompts "
             "are R1's chat template (the tokenizer's).", ""]
    if "skills" in ev:
        met = [g for g, v in ev["skills"].items() if v >= TARGETS.get(g, 0.9)]
        met += ["off"] * (ev["thinking_off"].get("out_of_scope", 0.0) >= 0.95)
        measures = len(ev["skills"]) + 1  # and honesty with DeepThink off
        lines += ["## What it can do", "",
                  "It was trained to reason step by step (its `<think>` block; with DeepThink "
                  "off the working goes into the answer) and answer:", "",
                  "- arithmetic with +, −, × and parentheses on whole numbers of up to three "
                  "digits, 2 to 4 terms: column sums and differences, products digit by digit;",
                  "- which of 2 to 4 numbers is the largest or the smallest;",
                  "- a list of 3 to 5 numbers sorted either way;",
                  "- how many times a letter occurs in a word;",
                  "- anything else with a short, true description of itself and of what it can "
                  "do, never a number.", "",
                  "Asked in the ways people ask: symbols or words (\"plus\", \"times\", "
                  "\"add ... and ...\"), with or without punctuation, in any case, politely or "
                  "not." + (" Try (answered right at temperature 0, DeepThink on and off, when "
                            "this card was written): " + ", ".join(f"`{e}`" for e in tries) + "."
                            if tries else ""), "",
                  ("It meets every target below." if len(met) == measures else
                   "It does these unreliably: the held-out scores below are short of the targets "
                   f"in {measures - len(met)} of {measures} measures, so check its working; a "
                   "wrong step shows in it."), "",
                  "## Held-out scores", "",
                  f"On {ev['prompts']} prompts of `tasks/heldout.jsonl` (phrasings and "
                  "instances no training data used), pass@1 over "
                  f"{summary['preset']['k']} samples at temperature 0.6, top-p 0.95 (`nanoseek "
                  "eval DIR --task skills:held-out` measures it again):", "",
                  "| skill | pass@1 | target |", "|---|---:|---:|"]
        for g, v in ev["skills"].items():
            t = TARGETS.get(g, 0.9)
            lines.append(f"| {COLUMNS.get(g, g)} | {v:.3f} | {t:.2f} {'✓' if v >= t else '✗'} |")
        off = ev["thinking_off"].get("out_of_scope", 0.0)
        lines += [f"| honest out of scope, DeepThink off | {off:.3f} | 0.95 "
                  f"{'✓' if off >= 0.95 else '✗'} |", "",
                  "## What it cannot do", "", "It cannot:", "", *(f"- {c};" for c in CANNOT), ""]
    lines += ["## Speed", "",
              f"{speed['tokens_per_s']:.0f} tokens/s decoding one conversation (greedy, fp32, "
              f"{speed['threads']} thread{'s' * (speed['threads'] != 1)}) on the "
              f"{summary['machine']} it was made on, load "
              f"average {speed['load']:.1f} while measured (the machine was shared when above the "
              "thread count).", "", report_md]
    return front + "\n".join(lines) + "\n"


def export(summary: dict[str, Any], out: Path, dest: str | Path) -> Path:
    """Copy the best model (HF layout, tokenizer) to dest with its model card (README.md)."""
    src = Path(summary["best_checkpoint"])
    card = model_card(summary, out, src)
    with atomic_directory(dest) as tmp:
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("train_state"):
                shutil.copy2(f, tmp / f.name)
        (tmp / "README.md").write_text(card)
    return Path(dest)
