"""What every training loop shares: its config's common fields, config files (TOML/YAML) and checks,
the torchrun set-up, the AdamW optimizer, stop signals, training-state checkpoints, and the run
directory's start-up. pretrain.py and grpo.py (and SFT, which is pretraining on chats) build on it.

Distributed: whatever torchrun says (RANK, WORLD_SIZE, LOCAL_RANK), else one process; no launcher of
our own. Checkpoints: <out_dir>/checkpoints/step_000100/ holds the HF-layout model files plus
train_state.json (step, data position, RNG) and train_state.safetensors (optimizer moments keyed by
parameter name, RNG tensors), written atomically; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from nanoseek.checkpoint import _unshare, write_model_files
from nanoseek.errors import UserError
from nanoseek.files import atomic_directory, atomic_write
from nanoseek.model.model import Transformer


class TrainConfigError(UserError):
    """A training config that cannot run; the message names the key (and the file)."""


# ---------------------------------------------------------------------------------------------
# config: the fields every training command has; the CLI makes one flag of each field


def opt(default: Any, help: str) -> Any:
    """A config field whose help text the CLI shows (`nanoseek train --help`)."""
    return field(default=default, metadata={"help": help})


Rule = tuple[str, bool, str]  # (field, holds, what it must be)


def check(cfg: Any, kind: str, rules: list[Rule]) -> None:
    """Raise on the first rule that does not hold, naming the field, its value and the rule."""
    for name, ok, rule in rules:
        if not ok:
            raise TrainConfigError(f"{kind} '{name}': {getattr(cfg, name)!r} is invalid; "
                                   f"must be {rule}")


@dataclass
class RunOptions:
    """What every training command has: its device, checkpoints kept, what the person watching sees,
    and whether an earlier run in out_dir may be replaced."""
    device: str = opt("auto", "auto (cuda if available) | cpu | cuda")
    keep_last: int = opt(2, "checkpoints kept")
    progress: bool = opt(True, "progress bar")
    wandb_project: str = opt("", "also log to this Weights & Biases project (if wandb is "
                                 "installed)")
    tensorboard: bool = opt(False, "also log to TensorBoard in out_dir/tensorboard (if installed)")
    overwrite: bool = opt(False, "start again in an out_dir that holds a run: its checkpoints, "
                                 "metrics and plots are deleted first")

    def run_rules(self) -> list[Rule]:
        return [("keep_last", self.keep_last >= 1, ">= 1")]


def adamw_options(lr: float, lr_help: str, warmup_steps: int, weight_decay: float,
                  beta2: float) -> type:
    """The AdamW fields, declared once, as a dataclass a loop's config builds on with its own
    defaults (RL steps far more gently than pretraining). build_optimizer reads them."""
    # (a class body cannot read the arguments under the names it assigns)
    default = {"lr": lr, "warmup_steps": warmup_steps, "weight_decay": weight_decay, "beta2": beta2}

    @dataclass
    class AdamWOptions:
        lr: float = opt(default["lr"], lr_help)
        warmup_steps: int = opt(default["warmup_steps"], "linear warmup, in optimizer steps")
        weight_decay: float = opt(default["weight_decay"], "AdamW weight decay, matrices only")
        beta1: float = opt(0.9, "AdamW beta1")
        beta2: float = opt(default["beta2"], "AdamW beta2")
        grad_clip: float = opt(1.0, "gradient-norm clip (0 = off)")

        def adamw_rules(self) -> list[Rule]:
            return [("lr", self.lr > 0, "> 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                    ("grad_clip", self.grad_clip >= 0, ">= 0")]

    return AdamWOptions


def load_train_config(path: str | Path | None, overrides: dict[str, Any], cls: type) -> Any:
    """A TOML (or YAML) file, then command-line overrides, into the config dataclass cls
    (TrainConfig, GRPOConfig); unknown keys are errors, not silently dropped."""
    values: dict[str, Any] = {}
    if path:
        values = _read_settings(Path(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    where = path or "train config"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(fields))}")
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}
    for key, value in values.items():
        allowed = kinds[str(fields[key].type).split("[")[0].split(" ")[0]]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            if value is None and "None" in str(fields[key].type):
                continue
            raise TrainConfigError(f"{where}: '{key}' must be {allowed[-1].__name__}, "
                                   f"got {value!r}")
    cfg = cls(**values)
    cfg.validate()
    return cfg


def _read_settings(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text) or {}
        else:
            values = tomllib.loads(text)
    except FileNotFoundError:
        raise TrainConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError, ValueError) as e:
        raise TrainConfigError(f"{path}: {e}") from None
    if not isinstance(values, dict):
        raise TrainConfigError(f"{path}: expected a table of settings, got {type(values).__name__}")
    return values


# ---------------------------------------------------------------------------------------------
# distributed set-up: whatever torchrun says, else one process


@dataclass
class World:
    """This process's place among the ranks torchrun started (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[World, torch.device]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                      int(os.environ.get("LOCAL_RANK", 0)))
    else:
        world = World()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{world.local_rank}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return world, dev


def all_mean(x: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world.size
    return x


def finish(tel: Any, world: World) -> None:
    """The end of a run: plots and logs closed, the process group (under torchrun) taken down."""
    tel.close()
    if world.size > 1:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the optimizer, and the signals that stop a run


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [(n, p) for n, p in named if p.ndim >= 2]
    no_decay = [(n, p) for n, p in named if p.ndim < 2]
    groups = [{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    # the fused kernel: one pass over each tensor instead of a dozen (bench/bench_train.py)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


class Stop:
    """SIGINT/SIGTERM ask the loop to save and exit after the current step; restore() puts the
    caller's handlers back. Ranks agree on the step they stop at (a signal may reach them a step
    apart)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle)
                         for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, world: World, dev: torch.device) -> bool:
        if world.size == 1:
            return self.requested
        flag = torch.tensor(float(self.requested), device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# the run directory: <out_dir>/checkpoints/, metrics.jsonl, the config, plots

# what a run writes in its out_dir (an SFT run's prepared data, or distill's samples, stay)
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "train_config.json", "grpo_config.json",
               "tensorboard", "loss.png", "expert_load.png", "rewards.png", "response_length.png")


def start_run(cfg: Any, world: World, resume: bool, config_name: str) -> Path | None:
    """The run directory's start-up, on every rank: refuse to mix a new run into an earlier one (or
    clear it, asked by cfg.overwrite), remove a killed save's temporaries, write the config, and cut
    metrics.jsonl back to the checkpoint the run resumes from. Returns that checkpoint (None: a run
    from step 0, also when resume finds none)."""
    run = Path(cfg.out_dir)
    if resume and cfg.overwrite:
        raise TrainConfigError("resume continues the run in out_dir and overwrite deletes it: "
                               "pass one of them")
    start = latest_checkpoint(run) if resume else None
    if not resume and not cfg.overwrite and _holds_run(run):
        raise TrainConfigError(f"{run} holds an earlier run (checkpoints or metrics.jsonl): "
                               "pass --resume to continue it, --overwrite to start again, or a "
                               "new --out-dir")
    if world.size > 1:
        dist.barrier()  # every rank has looked before rank 0 changes anything
    if world.main:
        if cfg.overwrite:
            for name in RUN_OUTPUTS:
                path = run / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        for stale in (run / "checkpoints").glob(".step_*"):  # temporaries of a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        atomic_write(run / config_name, json.dumps(dataclasses.asdict(cfg), indent=1))
        step = json.loads((start / "train_state.json").read_text())["step"] if start else None
        _truncate_metrics(run / "metrics.jsonl", step)
    return start


def _holds_run(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return (any((run / "checkpoints").glob("step_*"))
            or (metrics.exists() and metrics.stat().st_size > 0))


def _truncate_metrics(path: Path, step: int | None) -> None:
    """On resume, drop records of steps after the checkpoint (a killed run may have logged past it);
    step None: a run from the start keeps none."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if step is not None and _logged_step(line) <= step]
    atomic_write(path, "".join(line + "\n" for line in keep))  # a crash here keeps the old


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a blank line, or the half-written last line of a run
    killed mid-write, counts as past every checkpoint (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


# ---------------------------------------------------------------------------------------------
# training-state checkpoints: HF model files + train_state.{json,safetensors}


def save_checkpoint(run: Path, step: int, model: Transformer, optim: torch.optim.Optimizer,
                    state: dict[str, Any], tokenizer: Any, keep_last: int, world: World, fsdp: bool,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Every rank calls this (FSDP gathers full tensors); rank 0 writes, the others wait for it.
    Optimizer moments are keyed by parameter name in safetensors, so no pickle is needed to resume.
    state goes to train_state.json (the data position included); extra: more safetensors files
    (name -> tensors), e.g. GRPO's reference model."""
    opts = StateDictOptions(full_state_dict=fsdp, cpu_offload=fsdp)
    model_state = get_model_state_dict(model, options=opts)
    optim_state = get_optimizer_state_dict(model, optim, options=opts)
    if world.main:
        if fsdp:  # rank 0 now holds every tensor: a plain model around them writes the HF files
            with torch.device("meta"):
                model = Transformer(model.cfg)
            model.load_state_dict(model_state, assign=True)
        _write_checkpoint(run / "checkpoints" / f"step_{step:06d}", model, optim_state,
                          dict(state, step=step), tokenizer, extra)
        for old in sorted((run / "checkpoints").glob("step_*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if world.size > 1:
        dist.barrier()


def _write_checkpoint(target: Path, model: Transformer, optim_state: dict, state: dict[str, Any],
                      tokenizer: Any, extra: dict[str, dict[str, torch.Tensor]] | None) -> None:
    with atomic_directory(target) as tmp:
        write_model_files(model, tmp, tokenizer)
        tensors = {f"{name}::{k}": torch.as_tensor(v).detach().cpu().clone()
                   for name, st in optim_state["state"].items() for k, v in st.items()}
        tensors["rng::torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng::cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, tmp / "train_state.safetensors")
        for name, more in (extra or {}).items():
            save_file(_unshare({k: v.detach().cpu().contiguous() for k, v in more.items()}),
                      tmp / name)
        meta = dict(state, python_rng=_jsonable(random.getstate()))
        (tmp / "train_state.json").write_text(json.dumps(meta, indent=1))


def load_training_state(start: Path, model: Transformer, optim: torch.optim.Optimizer,
                        fsdp: bool) -> dict[str, Any]:
    """Optimizer moments and RNG states of a checkpoint; returns its train_state.json."""
    tensors = load_file(start / "train_state.safetensors")
    osd = get_optimizer_state_dict(model, optim)  # the current param_groups, keyed by name
    osd["state"] = {}
    for key, v in tensors.items():
        if not key.startswith("rng::"):
            name, k = key.split("::")
            osd["state"].setdefault(name, {})[k] = v
    set_optimizer_state_dict(model, optim, optim_state_dict=osd,
                             options=StateDictOptions(full_state_dict=fsdp))
    torch.set_rng_state(tensors["rng::torch"])
    if "rng::cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng::cuda"])
    state = json.loads((start / "train_state.json").read_text())
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
    return state


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run directory (a killed save has no state file)."""
    done = [p for p in sorted((run / "checkpoints").glob("step_*"))
            if (p / "train_state.json").exists()]
    return done[-1] if done else None
